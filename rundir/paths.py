"""Where each file of a run directory lives (docs/contracts.md §5)."""

from __future__ import annotations

from pathlib import Path

RUN_YAML = "run.yaml"
STATUS = "status.json"
NODES = "nodes.jsonl"
MEMORY = "memory.md"
INSTRUCTIONS = "instructions.md"
ANALYSIS = "analysis.md"
UCB = "ucb_scores.txt"
BASE_CONFIG = "base_config.yaml"
REASONING = "reasoning.log"
REJECTED = "rejected.jsonl"
POLICY_STEPS = "policy_steps.jsonl"
LLM_CALLS = "llm_calls.jsonl"
#: the files of the policy step in progress, before its first attempt (RunCtx._step_snapshot)
STEP_SNAPSHOT = "step_snapshot.json"
#: written by `agent run` / `agent resume` while they own the run
PID_FILE = "run.pid"

# per slot, in the directory of one training (iterations/iter_NNN/slot_SS/)
LAUNCH = "launch.json"
RESULT = "result.json"
REVIEW = "review.json"
SLOT_CONFIG = "config.yaml"


def slot_dir(run_dir: Path, iteration: int, slot: int) -> Path:
    """The directory of one training: iterations/iter_NNN/slot_SS."""
    return Path(run_dir) / "iterations" / f"iter_{iteration:03d}" / f"slot_{slot:02d}"


def slot_config_path(run_dir: Path, slot: int) -> Path:
    """The next config of a slot (set_config writes it): configs/slot_SS.yaml."""
    return Path(run_dir) / "configs" / f"slot_{slot:02d}.yaml"


def plan_path(run_dir: Path, slot: int) -> Path:
    """The next training of a slot: plans/slot_SS.json."""
    return Path(run_dir) / "plans" / f"slot_{slot:02d}.json"


def review_path(run_dir: Path, iteration: int, slot: int) -> Path:
    """The policy's analysis of one training."""
    return slot_dir(run_dir, iteration, slot) / REVIEW


def block_dir(run_dir: Path, block: int) -> Path:
    """The snapshot of memory/instructions/UCB taken when a block closes."""
    return Path(run_dir) / "blocks" / f"block_{block:03d}"
