"""The run state the tools act on (`ToolEnv`) and the per-slot plan file.

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

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from regimes.base import Regime


class SlotPlan(BaseModel):
    """What the next training of one slot will be (plans/slot_SS.json)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    iteration: int = 1  # the batch this plan is for
    parent: int | None = None  # None: root
    parent_rule: str = ""
    strategy: str = ""
    reason: str = ""
    mutation: str = ""
    hypothesis: str = ""
    commit: str | None = None  # workspace commit the training will run on
    code_changes: list[dict[str, str]] = Field(default_factory=list)
    finished: bool = False  # finish_mutation was called


class SlotReview(BaseModel):
    """The policy's reading of one finished training (review.json)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    node: int
    visual: str = ""
    observation: str = ""


def slot_dir(run_dir: Path, iteration: int, slot: int) -> Path:
    return Path(run_dir) / "iterations" / f"iter_{iteration:03d}" / f"slot_{slot:02d}"


# the C loader/dumper when libyaml is there: configs are read many times per batch
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(path: Path) -> dict:
    return yaml.load(Path(path).read_text(), Loader=_Loader) or {}


def dump_yaml_atomic(path: Path, data: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.dump(data, Dumper=_Dumper, sort_keys=False))
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class ToolEnv:
    """Everything a tool needs, bound to one run directory."""

    def __init__(self, run_dir: Path, regime: Regime, workspace: Any, store: Any, n_slots: int,
                 code_enabled: bool = True, policy_name: str = "heuristic"):
        self.run_dir = Path(run_dir)
        self.regime = regime
        self.workspace = workspace  # sandbox.workspace.Workspace
        self.store = store  # agent.store.Store (duck-typed: get, __contains__, nodes)
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
        #: slot -> result of the batch under analysis (node, out_dir, config, commit, metrics, ...)
        self.batch: dict[int, dict] = {}
        self.last_message = ""
        self._reasoning_path = self.run_dir / "reasoning.log"

    # ----- paths -----

    def config_path(self, slot: int) -> Path:
        return self.run_dir / "configs" / f"slot_{slot:02d}.yaml"

    def plan_path(self, slot: int) -> Path:
        return self.run_dir / "plans" / f"slot_{slot:02d}.json"

    def review_path(self, slot: int) -> Path:
        return slot_dir(self.run_dir, self.iteration, slot) / "review.json"

    @property
    def memory_path(self) -> Path:
        return self.run_dir / "memory.md"

    @property
    def instructions_path(self) -> Path:
        return self.run_dir / "instructions.md"

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
        write_atomic(self.plan_path(plan.slot), plan.model_dump_json(indent=1))

    def node_info(self, node_id: int) -> dict | None:
        """A finished node (store) or one of the batch under analysis, as a dict."""
        rec = self.store.get(node_id)
        if rec is not None:
            return rec.model_dump()
        for r in self.batch.values():
            if r.get("node") == node_id:
                return {"id": node_id, **r}
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
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # backslashreplace: a lone surrogate a policy sent must not make logging itself fail
        with open(self._reasoning_path, "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(f"{stamp} {text}\n")

    def record_rejection(self, step: str, tool: str, args: dict, error: str) -> None:
        rec = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "step": step,
               "iteration": self.iteration, "tool": tool, "args": args, "error": error}
        with open(self.run_dir / "rejected.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")

    def n_rejected(self) -> int:
        p = self.run_dir / "rejected.jsonl"
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
                write_atomic(p, text)
