"""Pydantic models of the toyregime config and `load_config` (one-line errors)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class ConfigError(ValueError):
    """A broken config; the message is one line naming the dotted key or file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SimulationConfig(_Strict):
    """The data: dx/dt = -damping * x + gain * W x, W sparse, antisymmetric, zero diagonal."""

    n_nodes: int = Field(8, ge=2)
    n_frames: int = Field(400, ge=10)
    delta_t: float = Field(0.05, gt=0)
    gain: float = 1.0
    damping: float = Field(0.05, ge=0)
    filling_factor: float = Field(0.5, gt=0, le=1)
    seed: int = 0


class GraphModelConfig(_Strict):
    """The learned model: dx_i/dt = phi(x_i) + sum_j W_ij x_j."""

    hidden_dim: int = Field(16, ge=1)


class TrainingConfig(_Strict):
    learning_rate: float = Field(1e-2, gt=0)
    coeff_W_L1: float = Field(0.0, ge=0)
    batch_size: int = Field(8, ge=1)
    n_epochs: int = Field(1, ge=1)
    data_augmentation_loop: int = Field(20, ge=1)
    seed: int = 0


class ClaudeConfig(_Strict):
    """The loop's section: accepted and ignored by training."""

    n_epochs: int | None = None
    data_augmentation_loop: int | None = None
    n_iter_block: int | None = None
    ucb_c: float | None = None


class Config(_Strict):
    simulation: SimulationConfig
    graph_model: GraphModelConfig = Field(default_factory=GraphModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    claude: ClaudeConfig = Field(default_factory=ClaudeConfig)


def parse_config(raw: Any) -> Config:
    if not isinstance(raw, dict):
        raise ConfigError("config error: <root>: expected a mapping of sections")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise ConfigError(f"config error: {key}: {msg}") from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config error: {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config error: {p}: invalid YAML ({str(e).splitlines()[0]})") from None
    return parse_config(raw)
