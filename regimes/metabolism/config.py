"""Pydantic models of the metabolism config (sections simulation, graph_model,
training, claude) and `load_config`.

Every model forbids unknown keys. `load_config` turns any validation problem
into a `ConfigError` whose message is ONE line naming the dotted key, e.g.
``config error: training.learning_rate_kk: unknown key``; the training entry
prints it and exits 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

PACKAGE = "metabolism"
#: version of the dataset cache layout, part of the cache key (simulation_hash): bumped whenever the
#: files or their meaning change, so a stale cache is never misread. 2: run 0 (inputs.pt) and run 1
#: (heldout.pt) in separate files, homeostasis types from a seeded permutation.
DATA_FORMAT = 2


class ConfigError(ValueError):
    """A broken config; str(err) is one line naming the dotted key or path."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False, validate_default=True)


class SimulationConfig(_Strict):
    """The data (SCIENCE.md A1-A2). Its canonical JSON hash is the cache key."""

    network: Literal["random", "cycles"]
    generator: Literal["mlp_rates", "mass_action"]
    n_metabolites: int = Field(100, ge=3)
    n_reactions: int = Field(256, ge=1)
    n_frames: int = Field(2880, ge=10)
    delta_t: float = Field(gt=0)
    log_k_min: float
    log_k_max: float
    c_init_min: float = Field(ge=0)
    c_init_max: float = Field(gt=0)
    #: flux limiter of the mlp_rates generator (one step never consumes more than exists). The learned
    #: model has none, so a limited dataset is outside the model family: the stoichiometry configs keep it off
    flux_limiter: bool = False
    #: frames per trajectory segment: every run restarts from a fresh initial state every segment_frames
    #: frames (None: one trajectory of n_frames). The mlp_rates rate never vanishes at c = 0, so one long
    #: trajectory drains metabolites to 0; short segments from many initial states keep c > 0 and explore
    #: many states (activity rank)
    segment_frames: int | None = Field(None, ge=2)
    #: homeostasis term -lambda_t (c_i - b_t); the types split the metabolites in equal parts, assigned by a
    #: random permutation drawn from `seed` (stored only in the truth file, never index blocks)
    homeostasis: bool = False
    homeostasis_lambda: list[float] = Field(default_factory=lambda: [0.001, 0.002])
    homeostasis_baseline: list[float] = Field(default_factory=lambda: [4.0, 6.0])
    #: hidden width of the generator's random msg_mlp / rate_mlp (mlp_rates) and message width
    generator_hidden: int = Field(64, ge=1)
    generator_msg_dim: int = Field(16, ge=1)
    #: scale of the mlp_rates generator's random weights and biases, U(+-gain/sqrt(fan_in)); 1 is PyTorch's
    #: default init, whose rate changes by < 1% over the concentration range (then dc/dt is a constant
    #: vector and S is not identifiable beyond its signs)
    generator_weight_gain: float = Field(1.0, gt=0)
    seed: int = 42

    @model_validator(mode="after")
    def _check(self) -> "SimulationConfig":
        if self.log_k_min > self.log_k_max:
            raise ValueError("log_k_min: must be <= log_k_max")
        if self.c_init_min > self.c_init_max:
            raise ValueError("c_init_min: must be <= c_init_max")
        if len(self.homeostasis_lambda) != len(self.homeostasis_baseline) or not self.homeostasis_lambda:
            raise ValueError("homeostasis_lambda: needs one value per type, as many as homeostasis_baseline")
        if self.homeostasis and self.n_metabolites < len(self.homeostasis_lambda):
            raise ValueError("n_metabolites: fewer metabolites than homeostasis types")
        if self.network == "cycles" and self.n_metabolites < 3:
            raise ValueError("n_metabolites: cycles need at least 3 metabolites")
        if self.network == "random" and self.n_metabolites < 6:
            raise ValueError("n_metabolites: random reactions need at least 6 metabolites")
        if self.segment_frames is not None and self.n_frames % self.segment_frames:
            raise ValueError(f"segment_frames: must divide n_frames ({self.n_frames})")
        if self.generator != "mlp_rates" and self.generator_weight_gain != 1.0:
            raise ValueError("generator_weight_gain: only acts with generator: mlp_rates")
        return self

    @property
    def frames_per_segment(self) -> int:
        """Frames of one trajectory segment (n_frames when the runs are not segmented)."""
        return self.segment_frames or self.n_frames

    @property
    def log_k_center(self) -> float:
        """Centre of the configured log10 k range (prior knowledge, not ground truth)."""
        return 0.5 * (self.log_k_min + self.log_k_max)


class GraphModelConfig(_Strict):
    """Which learned model and its sizes (SCIENCE.md A3); frozen for the agent."""

    #: stoichiometry: msg_mlp/rate_mlp rates; kinetics: k * prod MLP_sub (+ MLP_node)
    model: Literal["stoichiometry", "kinetics"]
    #: tied: substrate magnitude = |sto_all| at that edge; untied: separate sto_sub
    variant: Literal["tied", "untied"] = "tied"
    hidden_dim: int = Field(64, ge=1)
    msg_dim: int = Field(16, ge=1)
    embedding_dim: int = Field(2, ge=1)
    #: kinetics: include MLP_node([c, a]) (homeostasis) in dc/dt
    use_mlp_node: bool = True
    #: learned S at the start, plus N(0, init_S_std^2) noise: random (zero), sign (-1 on substrate edges, +1 on
    #: product edges) or balanced (-1 on substrates, n_sub/n_prod on products: columns sum to zero). The roles
    #: come with the support; |sto_sub| starts at 1 in untied. `balanced` is the better data-free answer, so a
    #: training that starts there starts at skill 0, never below it
    init_S: Literal["random", "sign", "balanced"] = "random"
    init_S_std: float = Field(0.1, ge=0)
    init_log_k_min: float = -2.0
    init_log_k_max: float = 1.0
    #: kinetics: MLP_sub's output form. softplus: f = softplus(MLP(c, |s|)), which keeps a floor at c -> 0
    #: (f = a c there needs MLP = log(a c) -> -inf); c_softplus: f = c softplus(MLP(c, |s|)), exactly 0 at
    #: c = 0 ("no substrate, no rate") and linear near it. On the quick rate_constants data the phase-1 loss
    #: falls from 1e-4 to 7e-7 and f / (alpha c) is within 1.4 % at c = 0.01 (softplus: -77 %)
    mlp_sub_form: Literal["softplus", "c_softplus"] = "softplus"
    init_embedding_std: float = Field(0.1, ge=0)
    #: evaluation: DBSCAN eps on the embeddings, rollout length on run 1, grid size of function fits
    dbscan_eps: float = Field(0.1, gt=0)
    dbscan_min_samples: int = Field(5, ge=1)
    test_rollout_frames: int = Field(2000, ge=2)
    eval_grid: int = Field(100, ge=2)

    @model_validator(mode="after")
    def _check(self) -> "GraphModelConfig":
        if self.init_log_k_min > self.init_log_k_max:
            raise ValueError("init_log_k_min: must be <= init_log_k_max")
        return self


class TrainingConfig(_Strict):
    """Training keys (SCIENCE.md A4). A learning rate left None falls back to
    learning_rate_start. Keys that cannot act on the chosen model must stay at
    their neutral value (checked in `Config`), so no key is silently ignored."""

    learning_rate_start: float = Field(1e-3, gt=0)
    learning_rate_S_start: float = Field(0.0, ge=0)
    learning_rate_k: float | None = Field(None, gt=0)
    learning_rate_sub: float | None = Field(None, gt=0)
    learning_rate_node: float | None = Field(None, gt=0)
    learning_rate_embedding: float | None = Field(None, gt=0)
    coeff_S_L1: float = Field(0.0, ge=0)
    coeff_S_L2: float = Field(0.0, ge=0)
    coeff_S_integer: float = Field(0.0, ge=0)
    coeff_mass_conservation: float = Field(0.0, ge=0)
    #: mean over reactions of 1 - cos(angle between column j of the learned S and the balanced data-free
    #: answer): a prior on each column's shape only (scale-free, so it leaves the column-scale gauge
    #: alone). The data outweigh it on active reactions; it keeps the columns the data barely see (the
    #: slowest reactions) at the data-free answer instead of letting them absorb other reactions' misfit
    coeff_S_prior: float = Field(0.0, ge=0)
    #: after the phase-1 steps, set S to the least-squares solution of the derivative fit with the rates fixed
    #: (per metabolite row, ridge S_least_squares * mean(diag) towards the trained S; 0: off). Adam with
    #: batch 8 leaves S short of it where the data gradient is weak (train.least_squares_S). Untied only
    S_least_squares: float = Field(0.0, ge=0)
    n_epochs_init: int = Field(0, ge=0)
    first_coeff_L1: float = Field(0.0, ge=0)
    coeff_MLP_sub_diff: float = Field(0.0, ge=0)
    coeff_MLP_sub_norm: float = Field(0.0, ge=0)
    coeff_MLP_node_L1: float = Field(0.0, ge=0)
    coeff_k_center: float = Field(0.0, ge=0)
    #: mean over reactions of (log10 k_j + n_sub(j) log10 f(1,1) - centre)^2: a weak prior on each
    #: gauge-corrected log k (the quantity rate_constants_R2 scores), so it cannot fight the k / MLP_sub
    #: gauge the way coeff_k_center on the raw mean does; it decides only what the data leave open
    #: (reactions sharing a substrate set, reactions that are never active)
    coeff_k_prior: float = Field(0.0, ge=0)
    #: sum over |s| of (f(0, s) / f(1, s))^2: no substrate, no rate (mass action has f(0) = 0); without
    #: it the softplus output keeps a floor at c -> 0 that the k of weakly active reactions absorb
    coeff_MLP_sub_zero: float = Field(0.0, ge=0)
    #: phase-1 learning-rate schedule: constant, or cosine (every group's lr times
    #: 0.5 (1 + cos(pi step / steps)) over the phase-1 steps, so the last steps settle instead of jitter)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    #: torch.compile of the model's forward in phase 1 (fast.py): off; default (CPU, measured on the
    #: fast path: ~1.06x steps/s for 1-3 min of compile on a loaded 2-core machine: not worth it);
    #: reduce-overhead (meant for CUDA: CUDA graphs, one replay instead of ~100 kernel launches; not yet
    #: measured on a GPU). Falls back to eager, with one log line, when it cannot compile.
    compile: Literal["off", "default", "reduce-overhead"] = "off"
    #: after the phase-1 steps, set k to the exact least-squares solution of the derivative fit with MLP_sub
    #: and MLP_node fixed (the model is linear in k: normal equations over all training frames, a ridge of
    #: 1e-8 mean(diag) towards the trained k decides what the data leave open). Removes the bias of
    #: coeff_k_prior and the last Adam jitter from the data-determined k (kinetics with S frozen only)
    k_least_squares: bool = False
    freeze_stoichiometry: bool = False
    batch_size: int = Field(8, ge=1)
    n_epochs: int = Field(1, ge=0)
    data_augmentation_loop: int = Field(100, ge=1)
    seed: int = 0
    recurrent_training: bool = False
    time_step: int = Field(1, ge=1)
    noise_recurrent_level: float = Field(0.0, ge=0)
    homeostasis_training: bool = False
    skip_phase1: bool = False
    homeostasis_time_step: int = Field(4, ge=1)
    learning_rate_node_homeostasis: float = Field(1e-2, gt=0)
    learning_rate_embedding_homeostasis: float = Field(1e-3, gt=0)
    #: phase-2 learning-rate schedule: constant, or cosine (both groups' lr times 0.5 (1 + cos(pi step /
    #: steps)) over the phase-2 steps). At a constant 1e-2 the curves keep drifting with the batch noise:
    #: a long phase 2 ends wherever the last steps left it (prompts/regimes/homeostasis.md "Defaults")
    lr_schedule_homeostasis: Literal["constant", "cosine"] = "constant"
    #: phase-2 loss: end_state (the seed's: the squared error of the state after the T-step rollout) or
    #: every_step (the mean over the rollout's T steps of each step's squared error, each over (dt s)^2: the same
    #: T-step free rollout, supervised at every step; equals end_state at T = 1). prompts/regimes/homeostasis.md
    #: "Long rollouts": every_step adds the short horizons' clean gradients to the chaotic long one.
    #: auto: end_state up to train.SHORT_ROLLOUT steps (the seed's loss where the rollout is not yet chaotic),
    #: every_step beyond (train.phase2_recipe)
    homeostasis_loss: Literal["end_state", "every_step", "auto"] = "end_state"
    #: phase-2 weight of each rollout window and step: uniform (the seed's) or median_cap (train.RolloutWeights:
    #: each error over max(d, median d), d the frozen reactions' own rollout error there, so no window counts more
    #: than the median one and no step more than step 1). At T = 32 the chaotic dynamics give 5 % of the windows
    #: ~80 % of the end-state loss. auto: uniform up to train.SHORT_ROLLOUT steps, median_cap beyond
    homeostasis_window_weights: Literal["uniform", "median_cap", "auto"] = "uniform"
    #: the embeddings' phase-2 lr: constant (learning_rate_embedding_homeostasis in every slot) or rollout_length
    #: (times homeostasis_time_step / 4: a T-step slot runs T/4 times fewer updates than the 4-step one, and
    #: lr x updates is how far Adam can move the embeddings; train.embedding_lr_homeostasis)
    homeostasis_embedding_lr_scaling: Literal["constant", "rollout_length"] = "constant"
    #: model.pt of a phase-1 training (kinetics model, S frozen); needed when skip_phase1
    phase1_checkpoint: str | None = None

    @model_validator(mode="after")
    def _check(self) -> "TrainingConfig":
        if self.skip_phase1 and not self.homeostasis_training:
            raise ValueError("skip_phase1: true needs homeostasis_training: true (nothing would train)")
        if self.phase1_checkpoint and not self.skip_phase1:
            raise ValueError("phase1_checkpoint: only used with skip_phase1: true")
        if self.noise_recurrent_level > 0 and not (self.recurrent_training or self.homeostasis_training):
            raise ValueError("noise_recurrent_level: has no effect without recurrent_training or homeostasis_training")
        if self.time_step > 1 and not self.recurrent_training:
            raise ValueError("time_step: has no effect without recurrent_training: true")
        if self.first_coeff_L1 > 0 and self.n_epochs_init == 0:
            raise ValueError("first_coeff_L1: has no effect with n_epochs_init: 0")
        if self.n_epochs_init > 0 and self.first_coeff_L1 == self.coeff_S_L1:
            raise ValueError("n_epochs_init: has no effect while first_coeff_L1 equals coeff_S_L1 "
                             "(the two phases differ only in the L1 weight)")
        return self

    def lr(self, name: str) -> float:
        """The learning rate of a parameter group, with the learning_rate_start fallback."""
        if name == "S":
            return self.learning_rate_S_start or self.learning_rate_start
        v = getattr(self, f"learning_rate_{name}")
        return self.learning_rate_start if v is None else v


class ClaudeConfig(_Strict):
    """The loop's section: accepted and ignored by training (budget caps, block size, UCB c)."""

    n_epochs: int | None = None
    data_augmentation_loop: int | None = None
    n_iter_block: int | None = None
    ucb_c: float | None = None


#: training keys that only act on the kinetics model / the stoichiometry model,
#: with their neutral values; a non-neutral value on the other model is an error
_KINETICS_ONLY = {"learning_rate_sub": None, "learning_rate_node": None, "learning_rate_embedding": None,
                  "coeff_MLP_sub_diff": 0.0, "coeff_MLP_sub_norm": 0.0, "coeff_MLP_node_L1": 0.0,
                  "coeff_k_prior": 0.0, "coeff_MLP_sub_zero": 0.0, "homeostasis_training": False,
                  "k_least_squares": False}
_LEARNED_S_ONLY = {"learning_rate_S_start": 0.0, "coeff_S_L1": 0.0, "coeff_S_L2": 0.0, "coeff_S_integer": 0.0,
                   "coeff_mass_conservation": 0.0, "coeff_S_prior": 0.0, "n_epochs_init": 0, "first_coeff_L1": 0.0,
                   "S_least_squares": 0.0}
_NODE_ONLY = {"learning_rate_node": None, "learning_rate_embedding": None, "coeff_MLP_node_L1": 0.0,
              "homeostasis_training": False}


class Config(_Strict):
    """A whole metabolism config."""

    simulation: SimulationConfig
    graph_model: GraphModelConfig
    training: TrainingConfig
    claude: ClaudeConfig = Field(default_factory=ClaudeConfig)

    @model_validator(mode="after")
    def _applicable(self) -> "Config":
        t, g = self.training, self.graph_model
        inert: dict[str, str] = {}
        if g.model == "stoichiometry":
            for k, v in _KINETICS_ONLY.items():
                if getattr(t, k) != v:
                    inert[k] = "only acts on graph_model.model: kinetics"
        elif not g.use_mlp_node:
            for k, v in _NODE_ONLY.items():
                if getattr(t, k) != v:
                    inert[k] = "only acts with graph_model.use_mlp_node: true"
        if t.freeze_stoichiometry:
            for k, v in _LEARNED_S_ONLY.items():
                if getattr(t, k) != v:
                    inert.setdefault(k, "has no effect with freeze_stoichiometry: true")
        if not t.homeostasis_training:
            for k in ("homeostasis_time_step", "learning_rate_node_homeostasis", "learning_rate_embedding_homeostasis",
                      "lr_schedule_homeostasis", "homeostasis_loss", "homeostasis_window_weights",
                      "homeostasis_embedding_lr_scaling"):
                if k in t.model_fields_set and getattr(t, k) != TrainingConfig.model_fields[k].default:
                    inert.setdefault(k, "only acts with homeostasis_training: true")
        if t.S_least_squares and (g.model != "stoichiometry" or g.variant != "untied"):
            inert.setdefault("S_least_squares", "only acts on graph_model.model: stoichiometry, variant: untied "
                             "(where the rates do not depend on sto_all)")
        if t.homeostasis_training and not t.freeze_stoichiometry:
            inert.setdefault("homeostasis_training", "phase 2 needs freeze_stoichiometry: true")
        if t.skip_phase1:
            # phase-1 keys would silently do nothing when phase 1 is skipped
            for k in ("learning_rate_k", "learning_rate_sub", "learning_rate_node", "learning_rate_embedding"):
                if getattr(t, k) is not None:
                    inert.setdefault(k, "phase 1 is skipped (skip_phase1: true)")
            for k in ("coeff_MLP_sub_diff", "coeff_MLP_sub_norm", "coeff_k_center", "coeff_MLP_node_L1",
                      "coeff_k_prior", "coeff_MLP_sub_zero", "k_least_squares"):
                if getattr(t, k) != 0:
                    inert.setdefault(k, "phase 1 is skipped (skip_phase1: true)")
            if t.lr_schedule != "constant":
                inert.setdefault("lr_schedule", "phase 1 is skipped (skip_phase1: true)")
            if t.recurrent_training:
                inert.setdefault("recurrent_training", "phase 1 is skipped (skip_phase1: true)")
        if t.k_least_squares and not t.freeze_stoichiometry:
            inert.setdefault("k_least_squares", "needs freeze_stoichiometry: true (the solve uses the given S)")
        if g.mlp_sub_form == "c_softplus" and t.coeff_MLP_sub_zero:
            inert.setdefault("coeff_MLP_sub_zero", "has no effect with graph_model.mlp_sub_form: c_softplus "
                                                   "(f(0, s) = 0 exactly)")
        if g.mlp_sub_form != "softplus" and g.model != "kinetics":
            inert.setdefault("__mlp_sub_form", "graph_model.mlp_sub_form: only acts on graph_model.model: kinetics")
        if g.init_S != "random" and t.freeze_stoichiometry:
            inert.setdefault("__init_S", "graph_model.init_S: has no effect with freeze_stoichiometry: true")
        if g.variant == "untied" and t.freeze_stoichiometry:
            inert.setdefault("__variant", "graph_model.variant: untied has no effect with a frozen S")
        if inert:
            k, why = sorted(inert.items())[0]
            if k.startswith("__"):
                raise ValueError(why)
            raise ValueError(f"training.{k}: {why}")
        return self

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _loc(err: dict) -> str:
    return ".".join(str(p) for p in err["loc"])


def format_validation_error(e: ValidationError) -> str:
    """One line naming the first problem's dotted key."""
    err = e.errors()[0]
    key = _loc(err)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "missing key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
        # validators name the key themselves as "key: reason"
        if ": " in msg and " " not in msg.split(": ", 1)[0]:
            inner, msg = msg.split(": ", 1)
            key = f"{key}.{inner}" if key and not inner.startswith(key.split(".")[0] + ".") else inner
    return f"config error: {key or '<root>'}: {msg}"


def parse_config(raw: Any) -> Config:
    """Validate a config dict; raise ConfigError (one line) when broken."""
    if not isinstance(raw, dict):
        raise ConfigError("config error: <root>: expected a mapping with sections simulation, graph_model, training, claude")
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e)) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config error: {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        line = str(e).replace("\n", " ")
        raise ConfigError(f"config error: {p}: invalid YAML ({line})") from None
    return parse_config(raw)


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def simulation_hash(sim: SimulationConfig | dict) -> str:
    """sha256 of the canonical JSON of the (validated, defaults-filled) simulation section, the package
    name and the cache format version (DATA_FORMAT): the dataset's cache key."""
    if isinstance(sim, dict):
        sim = SimulationConfig.model_validate(sim)
    key = f"{PACKAGE}:format{DATA_FORMAT}:" + canonical_json(sim.model_dump(mode="json"))
    return hashlib.sha256(key.encode()).hexdigest()[:24]
