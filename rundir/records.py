"""The typed records of a run directory (docs/contracts.md §5).

Each file the loop writes has one model here, used by its writer and by every
reader: run.yaml (`RunInfo`), status.json (`RunStatus`), plans/slot_SS.json
(`SlotPlan`), review.json (`SlotReview`), launch.json (`Launch`), result.json
(`SlotResult`), one line of nodes.jsonl (`NodeRecord`). `SlotOutcome` is one
slot's finished training of the batch under analysis (launch + result + the
regime's reading), built from those files by `agent.runctx.RunCtx.load_batch`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from regimes.base import Degeneracy, format_value

TrainingStatus = Literal["ok", "failed", "timeout", "killed"]
Classification = Literal["converged", "partial", "failed"]
TERMINAL_PHASES = ("done", "finished", "stopped", "failed", "killed", "interrupted", "budget")


def _no_degeneracy() -> Degeneracy:
    return Degeneracy(gap=None, diagnosis="n/a")


# ----------------------------------------------------------------------------- run.yaml

class RunInfo(BaseModel):
    """run.yaml: what this run is (enough to resume it)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    regime: str
    variant: str
    profile: Literal["quick", "full"]
    profile_reason: str = ""
    slots: int
    policy: str
    model: str
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    device: str = "cpu"
    #: trainings sharing one GPU (--slots-per-gpu); None: chosen by the executor from free GPU memory
    slots_per_gpu: int | None = None
    #: OS confinement of every training (sandbox/confine.py); False: --no-confine (debugging)
    confine: bool = True
    #: the confinement in force on this machine, in confine.describe's words ("landlock ABI 7 + ...")
    confinement: str = ""
    budget: dict[str, Any] = Field(default_factory=dict)  # iterations, max_cost_usd
    seed: int = 0
    code: bool = True
    n_iter_block: int = 1
    ucb_c: float = 1.414
    regime_path: list[str] = Field(default_factory=list)
    continue_from: str | None = None
    phase1_checkpoint: str | None = None
    script: str | None = None
    created_at: str = ""
    # training limits (None in runs made before they were recorded: the regime's for the profile)
    timeout_min: float | None = None
    memory_limit_mb: int | None = None
    limits_reason: str = ""


# ----------------------------------------------------------------------------- status.json

class SlotState(BaseModel):
    """One entry of status.json `slots`."""

    model_config = ConfigDict(extra="ignore")
    slot: int
    node: int | None = None
    parent: int | None = None
    strategy: str | None = None
    mutation: str | None = None
    #: the system (simulation seed) the slot trains on, where the policy may change it
    system: str | None = None
    status: str = "pending"
    out_dir: str | None = None
    score: float | None = None
    started_at: str | None = None


class BestRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    node: int | None = None
    score: float | None = None
    slot: int | None = None


class FallbackRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    step: str = ""
    fault: str = ""
    reason: str = ""
    ts: str = ""


class PolicySteps(BaseModel):
    """status.json `policy_steps`: steps the run's policy was asked to answer, and its fallbacks."""

    model_config = ConfigDict(extra="ignore")
    total: int = 0
    answered: int = 0
    fallbacks: int = 0
    faults: dict[str, int] = Field(default_factory=dict)
    last_fallback: FallbackRef | None = None


class RunStatus(BaseModel):
    """status.json. The loop writes every field; readers are lenient (a field the loop has
    not written yet takes its default, an unknown one is ignored)."""

    model_config = ConfigDict(extra="ignore")
    run_id: str = ""
    regime: str = "?"
    variant: str | None = None
    profile: str | None = None
    policy: str | None = None
    model: str | None = None
    phase: str = "?"
    block: int = 1
    iter_in_block: int = 0
    n_iter_block: int | None = None
    iterations_done: int = 0
    iterations_total: int | None = None
    started_at: str | None = None
    updated_at: str | None = None
    cost_usd: float = 0.0
    best: BestRef | None = None
    slots: list[SlotState] = Field(default_factory=list)
    message: str | None = ""
    fallback: bool = False  # the latest policy step fell back (cleared when the policy answers again)
    policy_steps: PolicySteps | None = None
    stopped_by: str | None = None  # cost_limit | llm_refused

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL_PHASES

    @classmethod
    def initial(cls, info: RunInfo, now: str) -> "RunStatus":
        """status.json before the first step."""
        return cls(run_id=info.run_id, regime=info.regime, variant=info.variant, profile=info.profile,
                   policy=info.policy, model=info.model, phase="prepare", n_iter_block=info.n_iter_block,
                   iterations_total=info.budget.get("iterations", 0), started_at=info.created_at or now,
                   updated_at=now, slots=[SlotState(slot=s) for s in range(info.slots)],
                   policy_steps=PolicySteps())

    def updated(self, slots: dict[int, dict] | None = None, **fields: Any) -> "RunStatus":
        """A copy with `fields` replaced and each `slots[s]` merged into slot s (validated)."""
        data = self.model_dump()
        data.update(fields)
        for s, upd in (slots or {}).items():
            data["slots"][s].update(upd)
        return RunStatus.model_validate(data)

    def to_json(self) -> dict:
        """What status.json holds (a slot's `system` only where the run may change it)."""
        data = self.model_dump(mode="json")
        for s in data["slots"]:
            if s.get("system") is None:
                s.pop("system", None)
        return data


# ----------------------------------------------------------------------------- per slot

class CodeChange(BaseModel):
    """One committed code edit of a slot's next training (edit_code)."""

    model_config = ConfigDict(extra="forbid")
    file: str
    function: str = ""
    change: str = ""
    hypothesis: str = ""
    strategy: str = ""
    commit: str = ""


class ConfigChange(BaseModel):
    """One config key a mutation changes: `name: old -> new` in the seeds' Mutation line."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: the key as the line names it: without its section (`learning_rate`) when the regime knows the key
    name: str
    #: the dotted config key (`training.learning_rate`); "" where the name alone does not say it
    key: str = ""
    old: Any = None
    new: Any = None

    @classmethod
    def of(cls, key: str, old: Any, new: Any) -> "ConfigChange":
        """The change of dotted config `key` from `old` to `new` (named without its section)."""
        return cls(name=key.split(".", 1)[1] if "." in key else key, key=key, old=old, new=new)

    @property
    def direction(self) -> int:
        """+1 / -1 when a number went up / down; 0 otherwise (no change, bools, choices, text)."""
        a, b = self.old, self.new
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b)):
            return 0
        return 1 if b > a else -1 if b < a else 0


_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_CHANGE = re.compile(r"(?P<name>[^:\[\s][^:]*?)\s*:\s*(?P<old>.*?)\s+->\s+(?P<new>.*)")
CODE_TAG = "[code]"


def _value(text: str) -> Any:
    """A value as a Mutation line writes it: a number, a bool, else the text itself."""
    if text in ("True", "true", "False", "false"):
        return text in ("True", "true")
    if _NUMBER.fullmatch(text):
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    return text


def _text(v: Any) -> str:
    return v if isinstance(v, str) else format_value(v)


class Mutation(BaseModel):
    """What a training changes from its parent, as its plan declares it (finish_mutation): config
    changes `name: old -> new` (one or more, `; `-separated), or a code change `[code] function:
    change`, or neither (`baseline`, `recombine: node 3 + node 5 (...)`: the whole line is the note).
    After config changes the note is the remark that follows them in parentheses.

    `line()` is the one place the seeds' line format is written; `parse` the one place it is read
    (the text finish_mutation receives, and the string mutations of runs made before this record:
    a string validates as its parse, so their nodes.jsonl, plans and launch.json still load)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    changes: list[ConfigChange] = Field(default_factory=list)
    #: the code change the line names (function, change); the edits themselves are the plan's code_changes
    code: CodeChange | None = None
    note: str = ""

    @model_validator(mode="before")
    @classmethod
    def _from_line(cls, data: Any) -> Any:
        return cls._fields(data) if isinstance(data, str) else data

    @classmethod
    def parse(cls, text: str, keys: dict[str, str] | None = None) -> "Mutation":
        """The record of a Mutation line. `keys` (name or dotted key -> dotted key, the regime's mutable
        keys) resolves the names: 'training.lr: a -> b' is recorded as name 'lr', key 'training.lr'."""
        return cls.model_validate(cls._fields(text, keys))

    @classmethod
    def of(cls, value: Any) -> "Mutation":
        """Lenient, for the views' raw JSON: a record, its JSON, a string, None; anything else its text."""
        if isinstance(value, Mutation):
            return value
        if value is None or value == "":
            return cls()
        try:
            return cls.model_validate(value)
        except ValueError:
            return cls(note=" ".join(str(value).split()))

    @staticmethod
    def _fields(text: str, keys: dict[str, str] | None = None) -> dict:
        t = " ".join(str(text).split())
        if not t:
            return {}
        if t.startswith(CODE_TAG):
            rest = t[len(CODE_TAG):].strip()
            fn, sep, change = rest.partition(":")
            if sep and fn.strip() and " " not in fn.strip():
                return {"code": {"file": "", "function": fn.strip(), "change": change.strip()}}
            return {"code": {"file": "", "change": rest}}
        segments = t.split("; ")
        matches = [_CHANGE.fullmatch(seg) for seg in segments]
        if not all(matches):  # a remark with '; ' in it: the line is one change (or none)
            matches = [_CHANGE.fullmatch(t)]
        if matches[0] is None:
            return {"note": t}
        changes, note = [], ""
        for k, m in enumerate(matches):
            new = m.group("new")
            if k == len(matches) - 1 and " (" in new:
                new, rest = new.split(" (", 1)
                note = "(" + rest
            name, key = m.group("name"), ""
            if keys and name in keys:
                key = keys[name]
                if name == key:  # written with its section: recorded (and shown) by its name
                    name = key.split(".", 1)[1]
            changes.append({"name": name, "key": key, "old": _value(m.group("old")), "new": _value(new)})
        return {"changes": changes, "note": note}

    def line(self) -> str:
        """The seeds' Mutation line: `lr_W: 2E-3 -> 5E-3`, `[code] data_train_signal: short description`."""
        if self.code is not None:
            c = self.code
            return f"{CODE_TAG} " + (f"{c.function}: {c.change}".rstrip() if c.function else c.change)
        if not self.changes:
            return self.note
        body = "; ".join(f"{c.name}: {_text(c.old)} -> {_text(c.new)}" for c in self.changes)
        return f"{body} {self.note}" if self.note else body

    @property
    def param(self) -> str | None:
        """The (first) config key the mutation changes, by name; None for code and other mutations."""
        return self.changes[0].name if self.changes else None

    @property
    def direction(self) -> int:
        """The direction of a one-key numeric change (+1 / -1), else 0."""
        return self.changes[0].direction if len(self.changes) == 1 else 0


def mutable_keys(regime: Any) -> dict[str, str]:
    """What `Mutation.parse` resolves for `regime`: each mutable dotted key, and each name that only one
    mutable key has, -> the dotted key."""
    specs = list(getattr(regime, "mutable", []) or [])
    names: dict[str, list[str]] = {}
    for p in specs:
        names.setdefault(p.name, []).append(p.key)
    return {**{n: ks[0] for n, ks in names.items() if len(ks) == 1}, **{p.key: p.key for p in specs}}


class SlotPlan(BaseModel):
    """What the next training of one slot will be (plans/slot_SS.json)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    iteration: int = 1  # the batch this plan is for
    parent: int | None = None  # None: root
    parent_rule: str = ""
    strategy: str = ""
    reason: str = ""
    mutation: Mutation = Field(default_factory=Mutation)
    hypothesis: str = ""
    commit: str | None = None  # workspace commit the training will run on
    code_changes: list[CodeChange] = Field(default_factory=list)
    finished: bool = False  # finish_mutation was called


class SlotReview(BaseModel):
    """The policy's reading of one finished training (review.json)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    node: int
    visual: str = ""
    observation: str = ""


class Launch(BaseModel):
    """launch.json: a training's node id, code commit and plan, frozen at its first launch."""

    model_config = ConfigDict(extra="forbid")

    node: int
    iteration: int
    slot: int
    commit: str
    launched_at: str = ""
    parent: int | None = None
    strategy: str = ""
    mutation: Mutation = Field(default_factory=Mutation)
    parent_rule: str = ""
    hypothesis: str = ""
    code_changes: list[CodeChange] = Field(default_factory=list)

    @classmethod
    def of_plan(cls, plan: SlotPlan, node: int, iteration: int, commit: str, launched_at: str) -> "Launch":
        return cls(node=node, iteration=iteration, slot=plan.slot, commit=commit, launched_at=launched_at,
                   parent=plan.parent, strategy=plan.strategy, mutation=plan.mutation,
                   parent_rule=plan.parent_rule, hypothesis=plan.hypothesis, code_changes=plan.code_changes)


class SlotResult(BaseModel):
    """result.json: how a training ended (written once; its presence means "never re-run")."""

    model_config = ConfigDict(extra="forbid")

    status: TrainingStatus
    exit_code: int | None = None
    reason: str = ""
    traceback_tail: str = ""
    metrics: dict[str, Any] = Field(default_factory=dict)
    duration_s: float = 0.0
    finished_at: str = ""


class SlotOutcome(BaseModel):
    """One slot's finished training of the batch under analysis: its launch, its result and the
    regime's reading of the metrics (classification, score, degeneracy)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    slot: int
    node: int
    parent: int | None
    commit: str
    strategy: str = ""
    mutation: Mutation = Field(default_factory=Mutation)
    parent_rule: str = ""
    hypothesis: str = ""
    code_changes: list[CodeChange] = Field(default_factory=list)
    config: dict[str, Any] = Field(default_factory=dict)
    out_dir: str
    status: TrainingStatus
    reason: str = ""
    traceback_tail: str = ""
    duration_s: float = 0.0
    metrics: dict[str, Any] = Field(default_factory=dict)
    classification: Classification = "failed"
    score: float = 0.0
    degeneracy: Degeneracy = Field(default_factory=_no_degeneracy)
    #: run-relative paths of its plots, newest first
    plots: list[str] = Field(default_factory=list)
    finished_at: str = ""

    @property
    def id(self) -> int:
        """The node id (an outcome and the node record it becomes read alike in the search tree)."""
        return self.node


# ----------------------------------------------------------------------------- nodes.jsonl

class NodeRecord(BaseModel):
    """One finished training (one node of the search tree; one line of nodes.jsonl)."""

    model_config = ConfigDict(extra="forbid")

    id: int
    parent: int | None  # None: root
    block: int
    iter_in_block: int
    iteration: int  # 1-based batch index
    slot: int
    strategy: str = ""
    mutation: Mutation = Field(default_factory=Mutation)
    parent_rule: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    commit: str | None = None
    status: TrainingStatus = "ok"
    classification: Classification = "failed"
    score: float = 0.0
    metrics: dict[str, float] = Field(default_factory=dict)
    degeneracy: Degeneracy = Field(default_factory=_no_degeneracy)
    visual: str = ""
    observation: str = ""
    next: str = ""
    duration_s: float = 0.0
    out_dir: str = ""
    finished_at: str = ""
    # extras (allowed by contracts: "extend if needed")
    hypothesis: str = ""
    code_changes: list[CodeChange] = Field(default_factory=list)
    reason: str = ""

    @classmethod
    def of_outcome(cls, o: SlotOutcome, review: SlotReview | None, next_parent: str, block: int,
                   iter_in_block: int, iteration: int, run_dir: Path | None, now: str) -> "NodeRecord":
        """The node a finished training becomes when the batch is logged (out_dir run-relative)."""
        out_dir = Path(o.out_dir)
        if run_dir is not None and out_dir.is_absolute():
            try:  # relative to the run directory, so a moved run still resolves
                out_dir = out_dir.relative_to(Path(run_dir))
            except ValueError:
                pass
        return cls(
            id=o.node, parent=o.parent, block=block, iter_in_block=iter_in_block, iteration=iteration,
            slot=o.slot, strategy=o.strategy, mutation=o.mutation, parent_rule=o.parent_rule,
            config=o.config, commit=o.commit, status=o.status, classification=o.classification,
            score=o.score, metrics={k: float(v) for k, v in o.metrics.items()
                                    if isinstance(v, (int, float))},
            degeneracy=o.degeneracy, visual=review.visual if review else "",
            observation=review.observation if review else "", next=next_parent, duration_s=o.duration_s,
            out_dir=str(out_dir), finished_at=o.finished_at or now, hypothesis=o.hypothesis,
            code_changes=o.code_changes, reason=o.reason)
