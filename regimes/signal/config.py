"""Pydantic models of the signal config (sections simulation, graph_model,
training, claude) and the loader that turns any problem into one line
naming the dotted key."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class ConfigError(ValueError):
    """A broken config; the message is one line naming the dotted key or path."""


class SimulationConfig(BaseModel):
    """The data (SCIENCE.md B1). Its canonical JSON is the cache key."""

    model_config = ConfigDict(extra="forbid")

    connectivity_type: Literal["sparse", "low_rank"]
    n_neurons: int = Field(100, ge=2)
    n_frames: int = Field(10000, ge=10)
    n_runs: int = Field(2, ge=2, description="run 0 trains, run 1 is held out")
    delta_t: float = Field(0.01, gt=0)
    gain: float = Field(7.0, description="g in du/dt = -u + g W tanh(u)")
    filling_factor: float = Field(0.5, gt=0, le=1, description="sparse: fraction of entries kept")
    connectivity_rank: int = Field(20, ge=1, description="low_rank: rank of W = U V")
    init_scale: float = Field(5.0, ge=0, description="u0 ~ init_scale * N(0, 1)")
    burn_in: int = Field(100, ge=0, description="Euler steps discarded before frame 0")
    seed: int = 42

    @model_validator(mode="after")
    def _rank(self) -> "SimulationConfig":
        if self.connectivity_type == "low_rank" and self.connectivity_rank > self.n_neurons:
            raise ValueError("connectivity_rank must not exceed n_neurons")
        return self


class GraphModelConfig(BaseModel):
    """Model choices (SCIENCE.md B2); frozen for the agent."""

    model_config = ConfigDict(extra="forbid")

    model: Literal["signal_propagation"] = "signal_propagation"
    hidden_dim: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=2, description="linear layers of lin_edge and lin_phi")
    embedding_dim: int = Field(2, ge=1)
    #: "mlp": lin_edge is learned; "tanh": lin_edge(u) = tanh(u) fixed (the
    #: correct model form, a diagnostic the seed document mentions)
    lin_edge_mode: Literal["mlp", "tanh"] = "mlp"


class TrainingConfig(BaseModel):
    """The exploration space (SCIENCE.md B3). Every key has an effect in train.py."""

    model_config = ConfigDict(extra="forbid")

    learning_rate_W_start: float = Field(3e-3, ge=0)
    learning_rate_start: float = Field(1e-4, ge=0)
    learning_rate_embedding_start: float = Field(2.5e-4, ge=0)
    coeff_W_L1: float = Field(1e-5, ge=0)
    coeff_edge_diff: float = Field(10000.0, ge=0)
    batch_size: int = Field(8, ge=1)
    n_epochs: int = Field(10, ge=1)
    n_epochs_init: int = Field(2, ge=0)
    first_coeff_L1: float = Field(0.0, ge=0)
    training_single_type: bool = True
    data_augmentation_loop: int = Field(20, ge=1)
    seed: int = 42
    recurrent_training: bool = False
    time_step: int = Field(1, ge=1)
    noise_recurrent_level: float = Field(0.0, ge=0)
    recurrent_training_start_epoch: int = Field(0, ge=0)


class ClaudeConfig(BaseModel):
    """The loop's section; the training entry accepts and ignores it."""

    model_config = ConfigDict(extra="forbid")

    n_epochs: int | None = None
    data_augmentation_loop: int | None = None
    n_iter_block: int | None = None
    ucb_c: float | None = None


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    simulation: SimulationConfig
    graph_model: GraphModelConfig = Field(default_factory=GraphModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    claude: ClaudeConfig = Field(default_factory=ClaudeConfig)

    @model_validator(mode="after")
    def _fits_data(self) -> "Config":
        if self.training.time_step >= self.simulation.n_frames:
            raise ValueError("training.time_step: must be smaller than simulation.n_frames")
        return self


def _one_line(err: ValidationError) -> str:
    """The first validation error as `dotted.key: reason`."""
    e = err.errors()[0]
    key = ".".join(str(p) for p in e["loc"]) or "<config>"
    if e["type"] == "extra_forbidden":
        return f"{key}: unknown key"
    if e["type"] == "missing":
        return f"{key}: missing required key"
    msg = e["msg"].replace("\n", " ").removeprefix("Value error, ")
    if e["type"] == "value_error":
        return msg if not e["loc"] else f"{key}: {msg}"
    return f"{key}: {msg} (got {e.get('input')!r})"


def parse_config(raw: dict) -> Config:
    """Validate a config dict; raise ConfigError with one line on any problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"<config>: expected a mapping with sections simulation, graph_model, training, claude, got {type(raw).__name__}")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file; ConfigError names the path or key."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{p}: invalid YAML ({str(err).splitlines()[0]})") from None
    return parse_config(raw if raw is not None else {})


CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def default_config_path(connectivity_type: str, variant: str, profile: str) -> Path:
    """Path of a shipped default config, e.g. ("sparse", "n100", "quick") ->
    configs/sparse_n100_quick.yaml; ValueError names what does not exist."""
    p = CONFIG_DIR / f"{connectivity_type}_{variant}_{profile}.yaml"
    if not p.is_file():
        choices = sorted(q.stem for q in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"no default signal config {p.name}; available: {choices}")
    return p


def default_config(connectivity_type: str, variant: str, profile: str) -> dict:
    """A shipped default config as a plain dict (all four sections), validated."""
    raw = yaml.safe_load(default_config_path(connectivity_type, variant, profile).read_text())
    parse_config(raw)
    return raw
