"""The regime plugin contract.

A regime is one inverse problem the agent explores (recover S, recover k,
recover homeostasis, recover W, ...). It declares everything the loop must
know as data: its configs, which keys may change and within what range, which
are frozen or pinned per slot, its metrics and how they are scored and
classified, which code the policy may edit, its code strategies, plots and
instructions. Behaviour that cannot be data (scoring, classification,
default configs, one-time preparation) is a method a subclass overrides.

This module imports nothing from agent/, tools/ or sandbox/ (dependency
direction agent -> tools -> sandbox -> regimes).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Profile = Literal["quick", "full"]
Classification = Literal["converged", "partial", "failed"]
CONFIG_SECTIONS = ("simulation", "graph_model", "training", "claude")
#: The only keys allowed in a config's `claude:` section (seed documents).
CLAUDE_KEYS = ("n_epochs", "data_augmentation_loop", "n_iter_block", "ucb_c")
DEFAULT_IMPORT_ALLOWLIST = ("torch", "numpy", "math", "random", "functools", "itertools",
                            "collections", "dataclasses", "typing", "time", "regimes")


class ParamSpec(BaseModel):
    """One mutable config key: its type and allowed range.

    `key` is dotted, e.g. ``training.learning_rate_k``. For floats and ints,
    `low`/`high` bound the value (inclusive) and `log` says the natural scale
    for search (log or linear). `choices` lists the allowed values of a
    categorical key (ints like batch_size 4/8/16/32, or bools).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    key: str
    type: Literal["float", "int", "bool", "choice"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if "." not in self.key:
            raise ValueError(f"param key {self.key!r} must be dotted, e.g. 'training.{self.key}'")
        if self.type in ("float", "int"):
            if self.low is None or self.high is None:
                raise ValueError(f"param {self.key}: {self.type} needs low and high")
            if self.low > self.high:
                raise ValueError(f"param {self.key}: low {self.low} > high {self.high}")
            if self.log and self.low <= 0:
                raise ValueError(f"param {self.key}: log scale needs low > 0")
        if self.type == "choice" and not self.choices:
            raise ValueError(f"param {self.key}: choice needs a non-empty choices list")
        return self

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    def check(self, value: Any) -> str | None:
        """Return None when `value` is allowed, else the reason it is not."""
        if self.type == "bool":
            return None if isinstance(value, bool) else f"expected a bool, got {type(value).__name__} {value!r}"
        if self.type == "choice":
            return None if value in self.choices else f"{value!r} is not one of {self.choices}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"expected a {self.type}, got {type(value).__name__} {value!r}"
        if self.type == "int" and not float(value).is_integer():
            return f"expected an int, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"value {value!r} is not finite"
        if not (self.low <= value <= self.high):
            return f"{value!r} is out of range [{self.low:g}, {self.high:g}]"
        return None


class MetricSpec(BaseModel):
    """A metric the training writes to metrics.json."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    description: str = ""
    good: str = ""  # human-readable target, e.g. "> 0.9"
    higher_is_better: bool | None = True  # None: target value, not a direction


class EditableFile(BaseModel):
    """A file of the workspace the policy may edit, and where in it.

    `path` is relative to the workspace root (e.g. ``regimes/metabolism/train.py``).
    `functions` names top-level functions (or ``Class.method``) whose bodies may
    change; `regions` names marker regions ``# >>> editable: NAME`` ...
    ``# <<< editable``. Both empty means the whole file is editable.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    functions: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in Path(v).parts:
            raise ValueError(f"editable path {v!r} must be relative to the workspace, without '..'")
        return v


class CodeStrategy(BaseModel):
    """A named, hypothesis-carrying code edit the heuristic policy may apply.

    Applied through the same `edit_code` tool as any other edit: replace the
    exact text `old` by `new` in `file` (which must be editable, and the change
    must stay inside the allowed function or region).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    file: str
    old: str
    new: str
    hypothesis: str
    description: str = ""
    config_overrides: dict[str, Any] = Field(default_factory=dict)  # dotted key -> value


class Degeneracy(BaseModel):
    """How far good dynamics are from correct structure (seed documents)."""

    gap: float | None  # test_pearson - primary metric
    diagnosis: Literal["healthy", "degenerate", "severely degenerate", "failed", "n/a"]


class TrainingLimits(BaseModel):
    """What one training of a profile may use (`agent run --timeout-min/--memory-limit-mb` override)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    timeout_min: float = Field(default=60.0, gt=0)  # wall clock; then SIGTERM, SIGKILL after the grace period
    memory_limit_mb: int | None = Field(default=None, ge=1)  # address space (CPU trainings); None: no limit


class Regime(BaseModel):
    """Base class of every regime plugin. Subclass it and override the methods.

    Fields are the declarative contract; methods are the behaviour. Instances
    are immutable descriptions; the loop never mutates them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)

    name: str
    title: str
    description: str
    variants: list[str] = Field(default_factory=lambda: ["default"])
    default_variant: str = "default"
    #: importable science package copied into each run's workspace, e.g. "regimes.metabolism"
    package: str
    #: filesystem directory of that package (the workspace copies it)
    package_dir: Path
    #: module run (confined, from the workspace checkout) as
    #: `python -m <train_entry> --config C --inputs IN --out DIR --device D` (docs/contracts.md §2b)
    train_entry: str
    #: module run (trusted installed code, never the workspace) as
    #: `python -m <eval_entry> --config C --inputs IN --out DIR`; default "<package>.evaluate"
    eval_entry: str = ""
    #: "module:function" called by the runner before training as fn(config_path, dest_dir):
    #: stages the training inputs (run 0 only, no truth); default "<package>.data:stage"
    stage_entry: str = ""
    mutable: list[ParamSpec]
    #: dotted keys never to change; a section name followed by ".*" freezes the
    #: whole section except keys listed in `mutable`
    frozen: list[str] = Field(default_factory=list)
    #: dotted key -> per-slot values, repeating (slot s gets values[s % len])
    slot_fixed: dict[str, list[Any]] = Field(default_factory=dict)
    claude_keys: list[str] = Field(default_factory=lambda: list(CLAUDE_KEYS))
    metrics: list[MetricSpec]
    primary_metric: str
    #: metrics shown on the analysis.md `Metrics:` line, in order
    log_metrics: list[str] = Field(default_factory=list)
    #: config keys shown on the analysis.md `Config:` line: short name -> dotted key
    log_config: dict[str, str] = Field(default_factory=dict)
    #: short labels of metrics on the `Metrics:` line (seed style, e.g.
    #: kinograph_R2 -> kino_R2); a metric without a label shows its own name
    metric_labels: dict[str, str] = Field(default_factory=dict)
    editable: list[EditableFile] = Field(default_factory=list)
    #: when code edits are allowed: "block_end" (homeostasis), "after_warmup"
    #: (not in the first `code_warmup_iters` iterations of a block), "never"
    code_edit_when: Literal["block_end", "after_warmup", "never"] = "after_warmup"
    code_warmup_iters: int = 4
    code_strategies: list[CodeStrategy] = Field(default_factory=list)
    #: glob patterns relative to a slot's output dir, most important first
    plots: list[str] = Field(default_factory=list)
    instructions: Path
    #: the seed document's strategy table names this regime's heuristic may use
    strategies: list[str] = Field(default_factory=lambda: ["exploit", "explore"])
    #: top-level modules edited code may import (the guard enforces it)
    import_allowlist: list[str] = Field(default_factory=lambda: list(DEFAULT_IMPORT_ALLOWLIST))
    #: identifiers and string fragments that name ground truth; the guard
    #: rejects an edit whose new code mentions one (e.g. "truth", "metabolite_type")
    truth_identifiers: list[str] = Field(default_factory=lambda: ["truth"])
    #: per profile ("quick", "full"): the wall-clock limit and memory of one training
    limits: dict[str, TrainingLimits] = Field(default_factory=lambda: {
        "quick": TrainingLimits(timeout_min=60.0), "full": TrainingLimits(timeout_min=12 * 60.0)})
    #: the dotted config key whose value selects the simulated system (a new value
    #: simulates a new system with the same frozen parameters: another W, another S);
    #: scores of different systems are compared only as robustness, never as config effects
    system_key: str = "simulation.seed"
    #: metrics that describe the system's data, not the training (activity rank,
    #: saturated neurons, inactive reactions): shown next to a system's scores so
    #: "this seed is hard" is told apart from "this config is bad"
    identifiability_metrics: list[str] = Field(default_factory=list)
    #: a metric that is > 0 when the generated system is degenerate (e.g. settled near
    #: a fixed point); "" when the regime writes none
    degenerate_metric: str = ""

    @model_validator(mode="before")
    @classmethod
    def _default_entries(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("package"):
            data = dict(data)
            data["eval_entry"] = data.get("eval_entry") or f"{data['package']}.evaluate"
            data["stage_entry"] = data.get("stage_entry") or f"{data['package']}.data:stage"
        return data

    @model_validator(mode="after")
    def _check_contract(self) -> "Regime":
        names = {m.name for m in self.metrics}
        if self.primary_metric not in names:
            raise ValueError(f"primary_metric {self.primary_metric!r} is not among metrics {sorted(names)}")
        if self.default_variant not in self.variants:
            raise ValueError(f"default_variant {self.default_variant!r} is not among variants {self.variants}")
        keys = [p.key for p in self.mutable]
        if len(keys) != len(set(keys)):
            raise ValueError("mutable lists a key twice")
        for k in self.slot_fixed:
            if k in keys:
                raise ValueError(f"slot-fixed key {k!r} cannot also be mutable")
        for k in self.claude_keys:
            if k not in CLAUDE_KEYS:
                raise ValueError(f"claude_keys: {k!r} is not one of {CLAUDE_KEYS}")
        return self

    # ----- declarative helpers (not meant to be overridden) -----

    def training_limits(self, profile: str) -> TrainingLimits:
        """The limits of one training of `profile` (a profile the regime does not list: the defaults)."""
        return self.limits.get(profile) or TrainingLimits(timeout_min=12 * 60.0 if profile == "full" else 60.0)

    def param(self, key: str) -> ParamSpec | None:
        """The mutable spec of a dotted key, or None."""
        for p in self.mutable:
            if p.key == key:
                return p
        return None

    def is_frozen(self, key: str) -> bool:
        """True when a dotted key may never change."""
        if self.param(key) is not None:
            return False
        for f in self.frozen:
            if f == key or (f.endswith(".*") and key.startswith(f[:-1])):
                return True
        return False

    def system_mutable(self) -> bool:
        """True when the policy may change the system (the system key is mutable)."""
        return self.param(self.system_key) is not None

    def system_of(self, config: dict) -> Any:
        """The system a config simulates (its `system_key` value; None when the config has none)."""
        return get_dotted(config, self.system_key)

    def slot_value(self, key: str, slot: int) -> Any:
        values = self.slot_fixed[key]
        return values[slot % len(values)]

    def slot_config(self, config: dict, slot: int) -> dict:
        """A copy of `config` with this slot's pinned values applied."""
        out = copy.deepcopy(config)
        for key in self.slot_fixed:
            set_dotted(out, key, self.slot_value(key, slot))
        return out

    def resolve_variant(self, variant: str | None) -> str:
        """`variant` or the default one; ValueError naming the valid ones when unknown."""
        if variant is None:
            return self.default_variant
        if variant not in self.variants:
            raise ValueError(f"regime {self.name}: unknown variant {variant!r}; valid: {', '.join(self.variants)}")
        return variant

    def format_config_line(self, config: dict) -> str:
        """The analysis.md `Config:` line body, e.g. ``seed=42, lr_k=5E-3, ...`` (keys absent from `config` are skipped)."""
        parts = []
        for short, key in self.log_config.items():
            v = get_dotted(config, key, _MISSING)
            if v is not _MISSING:
                parts.append(f"{short}={format_value(v)}")
        return ", ".join(parts)

    def format_metrics_line(self, metrics: dict[str, float]) -> str:
        """The analysis.md `Metrics:` line body, e.g. ``rate_constants_R2=0.8123, final_loss=1.2E-3`` (missing metrics skipped)."""
        return ", ".join(f"{self.metric_labels.get(m, m)}={format_metric(metrics[m])}"
                         for m in self.log_metrics if m in metrics)

    def code_edits_allowed(self, iter_in_block: int, at_block_end: bool, code_enabled: bool = True) -> str | None:
        """None when a code edit is allowed now, else the reason it is not."""
        if not code_enabled:
            return "code edits are off for this run (--no-code)"
        if not self.editable or self.code_edit_when == "never":
            return f"regime {self.name} allows no code edits"
        if self.code_edit_when == "block_end" and not at_block_end:
            return f"regime {self.name} allows code edits only at a block end"
        if self.code_edit_when == "after_warmup" and iter_in_block < self.code_warmup_iters and not at_block_end:
            return (f"no code edits in the first {self.code_warmup_iters} iterations of a block "
                    f"(this is iteration {iter_in_block}); establish a baseline first")
        return None

    # ----- behaviour: override in subclasses -----

    def default_config(self, variant: str | None = None, profile: Profile = "quick") -> dict:
        """The full config (sections simulation, graph_model, training, claude)."""
        raise NotImplementedError(f"regime {self.name} must implement default_config")

    def score(self, metrics: dict[str, float]) -> float:
        """The UCB reward: by default the primary metric, NaN/missing -> 0, clipped to [0, 1]."""
        v = metrics.get(self.primary_metric)
        if v is None or not math.isfinite(float(v)):
            return 0.0
        return float(min(1.0, max(0.0, v)))

    def classify(self, metrics: dict[str, float]) -> Classification:
        """converged / partial / failed, by default on the primary metric (> 0.9, 0.1-0.9, < 0.1)."""
        v = metrics.get(self.primary_metric)
        if v is None or not math.isfinite(float(v)):
            return "failed"
        if v > 0.9:
            return "converged"
        if v >= 0.1:
            return "partial"
        return "failed"

    def degeneracy(self, metrics: dict[str, float]) -> Degeneracy:
        """Degeneracy gap = test_pearson - primary metric, with the seeds' diagnosis table."""
        tp = metrics.get("test_pearson")
        pm = metrics.get(self.primary_metric)
        if tp is None or pm is None or not (math.isfinite(tp) and math.isfinite(pm)):
            return Degeneracy(gap=None, diagnosis="n/a")
        gap = float(tp - pm)
        if tp < 0.5 and pm < 0.5:
            diag = "failed"
        elif gap > 0.7:
            diag = "severely degenerate"
        elif gap > 0.1:
            diag = "degenerate"
        else:
            diag = "healthy"
        return Degeneracy(gap=gap, diagnosis=diag)

    def effective_config(self, config: dict) -> dict:
        """The config as it trains: values spelled differently that train the same (an `auto` resolved, a
        factor that is 1 in this slot) written one way, so a search can tell a repeat from a new experiment
        (agent/policies/heuristic.py never trains the same effective config twice). Default: unchanged."""
        return config

    def prepare(self, run_dir: Path, config: dict, device: str = "cpu", log=print) -> dict:
        """One-time step before the first batch; returns dotted-key overrides
        applied to every slot config (homeostasis: the phase-1 checkpoint path)."""
        return {}

    def instructions_text(self) -> str:
        return Path(self.instructions).read_text()


# ----- small dict helpers shared by the loop and the tools -----

_MISSING = object()


def format_metric(v: Any) -> str:
    """Metric values as the seeds log them: 4 decimals (0.8123), scientific when tiny or huge (1.2E-3)."""
    if isinstance(v, bool) or v is None or isinstance(v, int):
        return str(v)
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(f) or f == 0:
        return str(f) if f != 0 else "0"
    if abs(f) < 0.01 or abs(f) >= 1e4:
        mant, exp = f"{f:.1E}".split("E")
        return f"{mant}E{int(exp)}"
    return f"{f:.4f}"


def format_value(v: Any) -> str:
    """Compact seed-style number: ints as is, 0.8123, 5E-3, 1.2E-3; bools True/False."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):
        return str(v)
    if not math.isfinite(v):
        return str(v)
    if v == 0:
        return "0"
    if float(v).is_integer() and abs(v) < 1e5:
        return str(int(v))
    if 1e-2 <= abs(v) < 1e4:
        return f"{v:.4f}".rstrip("0").rstrip(".")
    mant, exp = f"{v:.2E}".split("E")
    mant = mant.rstrip("0").rstrip(".")
    return f"{mant}E{int(exp)}"


def load_yaml_config(path: Path, what: str = "config") -> dict:
    """Load a YAML config file; FileNotFoundError / ValueError with one line naming the file."""
    import yaml  # local: keep `import regimes.base` light

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what}: file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{what}: {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def get_dotted(cfg: dict, key: str, default: Any = None) -> Any:
    cur: Any = cfg
    for part in key.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return default
        cur = cur[part]
    return cur


def set_dotted(cfg: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    cur = cfg
    for part in parts[:-1]:
        cur = cur.setdefault(part, {})
    cur[parts[-1]] = value


def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """{"training": {"lr": 1}} -> {"training.lr": 1} (leaves only)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
