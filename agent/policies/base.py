"""The policy contract (docs/contracts.md §5).

A policy answers the graph's steps through the same tools: it receives a
`StepContext` (paths and small text, never tensors) and a `tools.ToolBox`
holding the tools allowed at that step, and calls them until
`ToolBox.done()` says the step's required calls were made.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from regimes.base import Regime
from rundir.records import NodeRecord, SlotOutcome

if TYPE_CHECKING:  # pragma: no cover - import only for type checkers
    from tools.toolbox import ToolBox

Step = Literal["prepare", "analyse", "log", "select_parent", "block_end", "mutate"]
STEPS: tuple[str, ...] = ("prepare", "analyse", "log", "select_parent", "block_end", "mutate")
#: the Claude model used when none is given (claude-sonnet-4-5 reaches end of life 2026-11-30)
DEFAULT_MODEL = "claude-sonnet-4-6"


class StepContext(BaseModel):
    """What a policy sees at one graph step: typed records, paths and small text (no tensors). What the
    step's tools write meanwhile (slot configs, plans) the policy reads through the ToolBox."""

    model_config = ConfigDict(extra="forbid")

    step: Step
    run_dir: Path
    regime_name: str
    block: int
    iter_in_block: int
    n_iter_block: int
    #: slots this step concerns
    slots: list[int]
    #: the batch under analysis, by slot (analyse, select_parent, log); empty at prepare and mutate
    results: list[SlotOutcome] = Field(default_factory=list)
    #: block_end: the nodes of the block that closes
    block_nodes: list[NodeRecord] = Field(default_factory=list)
    #: the search tree so far, by id: the run's logged nodes, and the batch under analysis where it is not
    #: logged yet (as the records the log step writes, without the review)
    nodes: list[NodeRecord] = Field(default_factory=list)
    #: the running regime (its contract: mutable keys, strategies, system key); None in tests that need none
    regime: Regime | None = None
    #: code edits are on for this run (`--code`); whether they are allowed at this step is `code_allowed`
    code_enabled: bool = True
    memory: str = ""
    instructions: str = ""
    ucb: str = ""
    code_allowed: bool = False
    code_block_reason: str | None = None
    #: seed for deterministic policies (run seed); extra, optional
    seed: int = 0
    #: finished iterations so far in the run (extra, for policies' rng streams)
    iterations_done: int = 0
    #: the run's UCB constant (extra: lets a policy recompute UCB with pending visits)
    ucb_c: float = 1.414


class PolicyError(RuntimeError):
    """Raised by a policy that cannot answer a step (e.g. the LLM deadline passed).

    The loop catches any exception from `Policy.act`, re-runs the step with the
    heuristic policy from a clean ToolBox, and records the fallback."""


class Policy(ABC):
    """Anything that answers the graph's steps through the tools."""

    name: str = "policy"

    @abstractmethod
    def act(self, ctx: StepContext, tools: "ToolBox") -> None:
        """Answer one step by calling `tools.call(name, args)` until `tools.done()`."""

    def close(self) -> None:
        """Release resources (HTTP clients, ...). Default: nothing."""
