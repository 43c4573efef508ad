"""What a tool acts on: the run (`ToolEnv`, run-wide) and where the loop is (`Step`, one frozen
value per graph node). The files are those of `rundir`.

The loop builds one `Step` per graph node and hands it to the `ToolBox` (and, as the
`StepContext` derived from it, to the policy); nothing copies loop state into the
`ToolEnv`. Tools read and write only files under the run directory (and commits in its
workspace):

- `configs/slot_SS.yaml`   the next config of each slot (set_config)
- `plans/slot_SS.json`     the next training of each slot: parent, strategy,
                           mutation, hypothesis, workspace commit, code changes
- `iterations/iter_NNN/slot_SS/review.json`   the policy's analysis (visual, observation)
- `memory.md`, `instructions.md`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from regimes.base import Regime
from rundir import paths
from rundir.io import append_jsonl, dump_yaml_atomic, load_yaml, utc_now, write_text_atomic
from rundir.records import NodeRecord, SlotOutcome, SlotPlan

StepName = Literal["prepare", "analyse", "log", "select_parent", "block_end", "mutate"]


class Step(BaseModel):
    """Where the loop is at one graph node, built once by the node (agent/graph.py) and frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StepName
    #: the batch run and analysed; at mutate (and prepare) the batch being prepared: edits and
    #: plans are for it (commit messages say `[iter N ...]`)
    iteration: int = 1
    block: int = 1
    #: finished trainings of the block, as the policy sees them (code_edits_allowed asks it)
    iter_in_block: int = 0
    #: the step runs at a block boundary (code edits of block_end regimes allowed)
    at_block_end: bool = False
    #: the slots this step concerns (`ToolBox.done()` needs the step's required call for each)
    slots: tuple[int, ...] = ()
    #: the batch just finished, by slot ({} before the first one)
    batch: dict[int, SlotOutcome] = Field(default_factory=dict)
    #: finished trainings (nodes) of the run
    iterations_done: int = 0


class ToolEnv:
    """Everything run-wide a tool needs, bound to one run directory."""

    def __init__(self, run_dir: Path, regime: Regime, workspace: Any, store: Any, n_slots: int,
                 code_enabled: bool = True):
        self.run_dir = Path(run_dir)
        self.regime = regime
        self.workspace = workspace  # sandbox.workspace.Workspace
        self.store = store  # rundir.store.Store (duck-typed: get, __contains__, nodes)
        self.n_slots = n_slots
        self.code_enabled = code_enabled
        self._reasoning_path = self.run_dir / paths.REASONING

    # ----- paths -----

    def config_path(self, slot: int) -> Path:
        return paths.slot_config_path(self.run_dir, slot)

    def plan_path(self, slot: int) -> Path:
        return paths.plan_path(self.run_dir, slot)

    def review_path(self, iteration: int, slot: int) -> Path:
        return paths.review_path(self.run_dir, iteration, slot)

    @property
    def memory_path(self) -> Path:
        return self.run_dir / paths.MEMORY

    @property
    def instructions_path(self) -> Path:
        return self.run_dir / paths.INSTRUCTIONS

    # ----- slot state -----

    def check_slot(self, slot: int) -> str | None:
        if not 0 <= slot < self.n_slots:
            return f"unknown slot {slot}; this run has slots 0-{self.n_slots - 1}"
        return None

    def slot_config(self, slot: int) -> dict:
        return load_yaml(self.config_path(slot))

    def save_slot_config(self, slot: int, cfg: dict) -> None:
        dump_yaml_atomic(self.config_path(slot), cfg)

    def load_plan(self, slot: int, iteration: int = 1) -> SlotPlan:
        """The slot's plan file, or an empty plan for `iteration` when there is none yet."""
        p = self.plan_path(slot)
        if p.exists():
            return SlotPlan.model_validate_json(p.read_text())
        return SlotPlan(slot=slot, iteration=iteration)

    def save_plan(self, plan: SlotPlan) -> None:
        write_text_atomic(self.plan_path(plan.slot), plan.model_dump_json(indent=1))

    def node(self, node_id: int, batch: dict[int, SlotOutcome] | None = None) -> NodeRecord | SlotOutcome | None:
        """A finished node: its record (store), or its outcome in `batch` when it is not logged yet."""
        rec = self.store.get(node_id)
        if rec is not None:
            return rec
        return next((r for r in (batch or {}).values() if r.node == node_id), None)

    def node_commit(self, node_id: int | None, batch: dict[int, SlotOutcome] | None = None) -> str:
        """The workspace commit a node ran on (root commit for None)."""
        if node_id is None:
            return self.workspace.root_commit
        node = self.node(node_id, batch)
        return (node.commit if node is not None else None) or self.workspace.root_commit

    # ----- logging -----

    def reasoning(self, text: str) -> None:
        """Append a time-stamped line (or block) to reasoning.log."""
        stamp = utc_now()
        # backslashreplace: a lone surrogate a policy sent must not make logging itself fail
        with open(self._reasoning_path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{stamp} {text}\n")

    def record_rejection(self, step: Step, tool: str, args: dict, error: str) -> None:
        append_jsonl(self.run_dir / paths.REJECTED, {"time": utc_now(), "step": step.name, "iteration": step.iteration,
                                                     "tool": tool, "args": args, "error": error})

    def n_rejected(self) -> int:
        p = self.run_dir / paths.REJECTED
        return sum(1 for _ in open(p)) if p.exists() else 0

    # ----- snapshots (a failed policy step is rolled back before the fallback) -----

    def snapshot(self, iteration: int) -> dict[Path, str | None]:
        """The files a policy step at `iteration` may change, as they are now (None: absent)."""
        files = [self.memory_path, self.instructions_path]
        for s in range(self.n_slots):
            files += [self.config_path(s), self.plan_path(s), self.review_path(iteration, s)]
        return {p: (p.read_text() if p.exists() else None) for p in files}

    def restore(self, snap: dict[Path, str | None]) -> None:
        for p, text in snap.items():
            if text is None:
                if p.exists():
                    p.unlink()
            elif not p.exists() or p.read_text() != text:
                write_text_atomic(p, text)
