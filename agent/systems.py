"""Systems and recipes: honest comparisons when the simulation seed varies.

A *system* is one simulated dataset: the value of the regime's `system_key`
(`simulation.seed`; a new value simulates another W, another S with the same
frozen parameters). A *recipe* is everything else a node ran with: its config
without the system key, and its code commit. Scores of two systems are not
comparable as config effects (a hard seed caps every recipe), so the loop
compares a node with nodes of its own system, and a recipe across systems by
its robustness: its score on each system it ran on, their mean and the worst.

Works on store records (NodeRecord) and on plain dicts (nodes.jsonl lines,
batch results), so the memory, the report, the live view and the heuristic
share one definition.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from regimes.base import format_value, get_dotted

#: used when no regime is at hand (report without a loadable plugin)
DEFAULT_SYSTEM_KEY = "simulation.seed"


def _get(n: Any, name: str, default: Any = None) -> Any:
    if isinstance(n, dict):
        if name == "id":
            return n.get("id", n.get("node", default))
        return n.get(name, default)
    return getattr(n, name, default)


def system_key(regime: Any) -> str:
    return getattr(regime, "system_key", None) or DEFAULT_SYSTEM_KEY


def system_of(n: Any, key: str = DEFAULT_SYSTEM_KEY) -> Any:
    """The system of a node (store record, or a dict with a `config`)."""
    return get_dotted(_get(n, "config") or {}, key)


def recipe_of(n: Any, key: str = DEFAULT_SYSTEM_KEY) -> str:
    """A canonical text of the node's recipe: its config without the system key, and its commit."""
    cfg = copy.deepcopy(_get(n, "config") or {})
    parts = key.split(".")
    cur = cfg
    for p in parts[:-1]:
        cur = cur.get(p) if isinstance(cur, dict) else None
    if isinstance(cur, dict):
        cur.pop(parts[-1], None)
    return json.dumps({"config": cfg, "commit": _get(n, "commit")}, sort_keys=True, default=str)


def _score(n: Any) -> float | None:
    s = _get(n, "score")
    return float(s) if isinstance(s, (int, float)) and math.isfinite(s) else None


def systems(nodes: Iterable[Any], key: str = DEFAULT_SYSTEM_KEY) -> list[Any]:
    """The distinct systems of `nodes`, in order of first appearance."""
    out: list[Any] = []
    for n in nodes:
        s = system_of(n, key)
        if s not in out:
            out.append(s)
    return out


def mixes(nodes: Iterable[Any], key: str = DEFAULT_SYSTEM_KEY) -> bool:
    return len(systems(nodes, key)) > 1


def fmt_system(s: Any) -> str:
    return "?" if s is None else format_value(s)


@dataclass
class SystemSummary:
    """One system's nodes and its best one, with the identifiability figures its data reported."""

    system: Any
    nodes: int
    best_id: int | None
    best_score: float | None
    identifiability: dict[str, float] = field(default_factory=dict)


def by_system(nodes: Iterable[Any], key: str = DEFAULT_SYSTEM_KEY,
              identifiability: Iterable[str] = ()) -> list[SystemSummary]:
    """One summary per system (order of first appearance); identifiability figures from its first node reporting them."""
    names = list(identifiability)
    out: dict[Any, SystemSummary] = {}
    for n in nodes:
        s = system_of(n, key)
        row = out.setdefault(s, SystemSummary(system=s, nodes=0, best_id=None, best_score=None))
        row.nodes += 1
        sc = _score(n)
        nid = _get(n, "id")
        if sc is not None and (row.best_score is None or sc > row.best_score
                               or (sc == row.best_score and nid is not None and row.best_id is not None
                                   and nid < row.best_id)):
            row.best_id, row.best_score = nid, sc
        metrics = _get(n, "metrics") or {}
        for m in names:
            if m not in row.identifiability and isinstance(metrics.get(m), (int, float)):
                row.identifiability[m] = float(metrics[m])
    return list(out.values())


@dataclass
class Robustness:
    """A recipe's scores over the systems it ran on (several runs on one system: their mean)."""

    recipe: str
    node_ids: list[int]
    #: system -> score on it
    per_system: dict[Any, float]

    @property
    def n_systems(self) -> int:
        return len(self.per_system)

    @property
    def mean(self) -> float:
        return sum(self.per_system.values()) / len(self.per_system)

    @property
    def worst(self) -> float:
        return min(self.per_system.values())

    @property
    def worst_system(self) -> Any:
        return min(self.per_system.items(), key=lambda kv: (kv[1], str(kv[0])))[0]

    @property
    def first_id(self) -> int:
        return min(self.node_ids)


def robustness(nodes: Iterable[Any], key: str = DEFAULT_SYSTEM_KEY) -> list[Robustness]:
    """Every recipe with its per-system scores, the most robust first (more systems, then worst, then mean)."""
    acc: dict[str, tuple[list[int], dict[Any, list[float]]]] = {}
    for n in nodes:
        sc = _score(n)
        if sc is None:
            continue
        ids, per = acc.setdefault(recipe_of(n, key), ([], {}))
        ids.append(_get(n, "id"))
        per.setdefault(system_of(n, key), []).append(sc)
    out = [Robustness(recipe=r, node_ids=sorted(i for i in ids if i is not None),
                      per_system={s: sum(v) / len(v) for s, v in per.items()})
           for r, (ids, per) in acc.items()]
    out.sort(key=lambda r: (-min(r.n_systems, 2), -r.worst, -r.mean, r.first_id if r.node_ids else 0))
    return out


def robustness_of(nodes: Iterable[Any], node: Any, key: str = DEFAULT_SYSTEM_KEY) -> Robustness | None:
    """The robustness of `node`'s recipe."""
    rec = recipe_of(node, key)
    return next((r for r in robustness(nodes, key) if r.recipe == rec), None)


def robustness_line(r: Robustness) -> str:
    """`recipe of node 3 (nodes 3, 9): 2 systems (seeds 42 0.8123, 43 0.3301): mean 0.5712, worst 0.3301 (seed 43)`."""
    per = ", ".join(f"{fmt_system(s)} {v:.4f}" for s, v in r.per_system.items())
    ids = ", ".join(str(i) for i in r.node_ids[:8]) + (", ..." if len(r.node_ids) > 8 else "")
    return (f"recipe of node {r.first_id} (nodes {ids}): {r.n_systems} system{'s' if r.n_systems != 1 else ''} "
            f"(seeds {per}): mean {r.mean:.4f}, worst {r.worst:.4f} (seed {fmt_system(r.worst_system)})")


def identifiability_text(figs: dict[str, float]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in figs.items())


__all__ = ["DEFAULT_SYSTEM_KEY", "Robustness", "SystemSummary", "by_system", "fmt_system", "identifiability_text",
           "mixes", "recipe_of", "robustness", "robustness_line", "robustness_of", "system_key", "system_of",
           "systems"]
