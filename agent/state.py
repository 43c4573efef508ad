"""The LangGraph state of the loop: counters, ids and paths only.

Everything bigger (configs, metrics, memory, plans) lives in files of the run
directory; the state says where the loop is.
"""

from __future__ import annotations

from typing import TypedDict


class LoopState(TypedDict, total=False):
    run_dir: str
    prepared: bool
    phase: str  # the graph node running or next
    iteration: int  # 1-based index of the batch being run / analysed
    iterations_done: int  # finished trainings (nodes) in the run
    iterations_total: int  # budget: stop after the batch that reaches it
    block: int  # 1-based
    iter_in_block: int  # finished trainings in the current block
    batch_nodes: list[int]  # node ids of the current batch
    block_end: bool  # the batch just logged closed its block


def initial_state(run_dir: str, iterations_total: int) -> LoopState:
    return LoopState(run_dir=run_dir, prepared=False, phase="prepare", iteration=1, iterations_done=0,
                     iterations_total=iterations_total, block=1, iter_in_block=0, batch_nodes=[], block_end=False)
