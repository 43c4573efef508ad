"""UCB scores of the current block's nodes (docs/contracts.md §5).

UCB(node) = score + c * sqrt(N) / (1 + V), with N the number of finished
nodes in the block, V = 1 + the number of its descendants in the block, and
c = claude.ucb_c. Nodes still running (or parents already chosen for the
next batch) count as visits of their parent and its ancestors, so two slots
do not pile onto one node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Protocol

from rundir.records import Mutation


class _Node(Protocol):
    id: int
    parent: int | None
    score: float
    mutation: Mutation


@dataclass(frozen=True)
class UCBEntry:
    id: int
    parent: int | None
    visits: int
    score: float
    ucb: float
    mutation: str
    #: the node's system (simulation seed), shown only when the block mixes systems
    system: str | None = None

    def line(self) -> str:
        parent = "root" if self.parent is None else str(self.parent)
        mutation = " ".join(self.mutation.split()) or "-"
        system = "" if self.system is None else f", system={self.system}"
        return (f"Node {self.id}: UCB={self.ucb:.3f}, parent={parent}, visits={self.visits}, "
                f"score={self.score:.4f}{system}, Mutation={mutation}")


def tag_systems(entries: list[UCBEntry], system_of: dict[int, str]) -> list[UCBEntry]:
    """Entries with their system named when they span more than one: a score on a hard system is
    not a worse config, and the file says so plainly (`system=S` before `Mutation=`)."""
    if len({system_of.get(e.id) for e in entries}) <= 1:
        return entries
    from dataclasses import replace

    return [replace(e, system=system_of.get(e.id, "?")) for e in entries]


def ucb_scores(nodes: Iterable[_Node], c: float, pending_parents: Iterable[int | None] = ()) -> list[UCBEntry]:
    """UCB entries of `nodes` (the finished nodes of one block), best first.

    `pending_parents`: parents of trainings still running or already
    scheduled; each adds one visit to that parent and its ancestors."""
    nodes = list(nodes)
    by_id = {n.id: n for n in nodes}
    visits = {n.id: 1 for n in nodes}

    def credit(start: int | None) -> None:
        seen = set()
        cur = start
        while cur is not None and cur in by_id and cur not in seen:  # guard against cycles
            seen.add(cur)
            visits[cur] += 1
            cur = by_id[cur].parent

    for n in nodes:
        credit(n.parent)
    for p in pending_parents:
        credit(p)
    big_n = len(nodes)
    out = [UCBEntry(n.id, n.parent, visits[n.id], float(n.score),
                    float(n.score) + c * math.sqrt(big_n) / (1 + visits[n.id]), Mutation.of(n.mutation).line())
           for n in nodes]
    out.sort(key=lambda e: (-e.ucb, e.id))
    return out


def render(entries: list[UCBEntry]) -> str:
    """The ucb_scores.txt text (empty string for no entries)."""
    return "".join(e.line() + "\n" for e in entries)
