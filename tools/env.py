"""The run state the tools act on (`ToolEnv`); the files are those of `rundir`.

The loop owns one ToolEnv per run process and sets its step fields (block,
iteration, the batch being analysed) before each step. Tools read and write
only files under the run directory (and commits in its workspace):

- `configs/slot_SS.yaml`   the next config of each slot (set_config)
- `plans/slot_SS.json`     the next training of each slot: parent, strategy,
                           mutation, hypothesis, workspace commit, code changes
- `iterations/iter_NNN/slot_SS/review.json`   the policy's analysis (visual, observation)
- `memory.md`, `instructions.md`
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from regimes.base import Regime
from rundir import paths
from rundir.io import append_jsonl, load_yaml, dump_yaml_atomic, utc_now, write_text_atomic
from rundir.records import SlotOutcome, SlotPlan


class ToolEnv:
    """Everything a tool needs, bound to one run directory."""

    def __init__(self, run_dir: Path, regime: Regime, workspace: Any, store: Any, n_slots: int,
                 code_enabled: bool = True, policy_name: str = "heuristic"):
        self.run_dir = Path(run_dir)
        self.regime = regime
        self.workspace = workspace  # sandbox.workspace.Workspace
        self.store = store  # rundir.store.Store (duck-typed: get, __contains__, nodes)
        self.n_slots = n_slots
        self.code_enabled = code_enabled
        self.policy_name = policy_name
        # step fields, set by the loop
        self.step = "prepare"
        self.step_slots: list[int] = []
        self.iteration = 1
        self.block = 1
        self.iter_in_block = 0
        self.n_iter_block = 1
        self.at_block_end = False
        #: slot -> the finished training of the batch under analysis
        self.batch: dict[int, SlotOutcome] = {}
        self.last_message = ""
        self._reasoning_path = self.run_dir / paths.REASONING

    # ----- paths -----

    def config_path(self, slot: int) -> Path:
        return paths.slot_config_path(self.run_dir, slot)

    def plan_path(self, slot: int) -> Path:
        return paths.plan_path(self.run_dir, slot)

    def review_path(self, slot: int) -> Path:
        return paths.review_path(self.run_dir, self.iteration, slot)

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

    def load_plan(self, slot: int) -> SlotPlan:
        p = self.plan_path(slot)
        if p.exists():
            return SlotPlan.model_validate_json(p.read_text())
        return SlotPlan(slot=slot, iteration=self.iteration)

    def save_plan(self, plan: SlotPlan) -> None:
        write_text_atomic(self.plan_path(plan.slot), plan.model_dump_json(indent=1))

    def node_info(self, node_id: int) -> dict | None:
        """A finished node (store) or one of the batch under analysis, as a dict."""
        rec = self.store.get(node_id)
        if rec is not None:
            return rec.model_dump()
        for r in self.batch.values():
            if r.node == node_id:
                return {"id": node_id, **r.model_dump()}
        return None

    def node_commit(self, node_id: int | None) -> str:
        """The workspace commit a node ran on (root commit for None)."""
        if node_id is None:
            return self.workspace.root_commit
        info = self.node_info(node_id)
        return (info or {}).get("commit") or self.workspace.root_commit

    # ----- logging -----

    def reasoning(self, text: str) -> None:
        """Append a time-stamped line (or block) to reasoning.log."""
        stamp = utc_now()
        # backslashreplace: a lone surrogate a policy sent must not make logging itself fail
        with open(self._reasoning_path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{stamp} {text}\n")

    def record_rejection(self, step: str, tool: str, args: dict, error: str) -> None:
        append_jsonl(self.run_dir / paths.REJECTED, {"time": utc_now(), "step": step, "iteration": self.iteration,
                                                     "tool": tool, "args": args, "error": error})

    def n_rejected(self) -> int:
        p = self.run_dir / paths.REJECTED
        return sum(1 for _ in open(p)) if p.exists() else 0

    # ----- snapshots (a failed policy step is rolled back before the fallback) -----

    def snapshot(self) -> dict[Path, str | None]:
        paths = [self.memory_path, self.instructions_path]
        for s in range(self.n_slots):
            paths += [self.config_path(s), self.plan_path(s), self.review_path(s)]
        return {p: (p.read_text() if p.exists() else None) for p in paths}

    def restore(self, snap: dict[Path, str | None]) -> None:
        for p, text in snap.items():
            if text is None:
                if p.exists():
                    p.unlink()
            elif not p.exists() or p.read_text() != text:
                write_text_atomic(p, text)
