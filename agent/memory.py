"""What the loop writes into memory.md and analysis.md, rendered from the node store.

The file format itself (sections, edits, the comparison table) is `rundir.memory`;
this module renders the regime-specific content: the analysis.md entry of a
node, its one line under Iterations This Block, the Best Configurations table,
Block Info, the comparison row of a run.
"""

from __future__ import annotations

from typing import Iterable

from agent import systems as sys_mod
from agent.fmt import fmt_metric, fmt_value
from regimes.base import Regime, get_dotted
from rundir.memory import ComparisonRow, Memory
from rundir.records import NodeRecord


def initial_memory(regime: Regime, variant: str, block: int = 1, focus: str = "") -> Memory:
    """The memory of a new run."""
    mem = Memory()
    mem.bodies["Established Principles"] = "[Confirmed patterns — require 3+ supporting iterations]"
    mem.bodies["Open Questions"] = "[Patterns needing more testing, contradictions]"
    mem.bodies["Previous Block Summary"] = "[none yet]"
    mem.bodies["Block Info"] = block_info(regime, variant, block, focus)
    mem.bodies["Hypothesis"] = "[Prediction for this block]"
    mem.bodies["Iterations This Block"] = ""
    mem.bodies["Emerging Observations"] = ""
    return mem


def block_info(regime: Regime, variant: str, block: int, focus: str = "") -> str:
    lines = [f"Regime: {regime.name} (variant {variant}), block {block}"]
    lines.append(f"Focus: {focus or '[which parameter subspace]'}")
    return "\n".join(lines)


def config_line(regime: Regime, config: dict) -> str:
    """The `Config:` line body, in the regime's short names (seed log form). Where the system
    may change and the regime's log form does not name its key, `sim_seed=S` leads the line."""
    line = regime.format_config_line(config)
    if _shows_system(regime) and regime.system_key not in regime.log_config.values():
        line = f"sim_seed={fmt_value(regime.system_of(config))}" + (f", {line}" if line else "")
    return line


def _shows_system(regime: Regime) -> bool:
    return bool(getattr(regime, "system_mutable", None)) and regime.system_mutable()


def metrics_line(regime: Regime, metrics: dict) -> str:
    """The `Metrics:` line body, with the regime's short metric labels (e.g. kino_R2)."""
    if not regime.log_metrics:
        return f"{regime.primary_metric}={fmt_metric(metrics.get(regime.primary_metric))}"
    return regime.format_metrics_line(metrics)


def slot_line(regime: Regime, slot: int, config: dict) -> str | None:
    if not regime.slot_fixed:
        return None
    shorts = {v: k for k, v in regime.log_config.items()}
    parts = []
    for key in regime.slot_fixed:
        name = shorts.get(key, key.rsplit(".", 1)[-1].replace("homeostasis_", ""))
        parts.append(f"{name}={fmt_value(get_dotted(config, key, regime.slot_value(key, slot)))}")
    return f"Slot: slot_{slot} ({', '.join(parts)})"


def render_entry(regime: Regime, rec: NodeRecord) -> str:
    """One `## Iter N` entry of analysis.md in the seeds' log form."""
    parent = "root" if rec.parent is None else str(rec.parent)
    lines = [f"## Iter {rec.id}: {rec.classification}",
             f"Node: id={rec.id}, parent={parent}",
             f"Mode/Strategy: {rec.strategy or 'exploit'}"]
    sl = slot_line(regime, rec.slot, rec.config)
    if sl:
        lines.append(sl)
    lines.append(f"Config: {config_line(regime, rec.config)}")
    for cc in rec.code_changes:
        lines += ["CODE MODIFICATION:",
                  f"  File: {cc.file}",
                  f"  Function: {cc.function}",
                  f"  Change: {cc.change}",
                  f"  Hypothesis: {cc.hypothesis}"]
    if rec.status != "ok":
        lines.append(f"Metrics: training {rec.status}: {_one_line(rec.reason) or 'no metrics'}")
    else:
        lines.append(f"Metrics: {metrics_line(regime, rec.metrics)}")
    lines.append(f"Visual: {_one_line(rec.visual) or '-'}")
    lines.append(f"Mutation: {rec.mutation.line() or '-'}")
    if regime.slot_fixed:
        names = [cc.strategy for cc in rec.code_changes if cc.strategy]
        lines.append(f"Strategy: {', '.join(names) if names else 'hyperparameter-only'}")
    else:
        lines.append(f"Parent rule: {_one_line(rec.parent_rule) or '-'}")
    lines.append(f"Observation: {_one_line(rec.observation) or '-'}")
    lines.append(f"Next: parent={rec.next or 'root'}")
    return "\n".join(lines) + "\n\n"


def memory_line(regime: Regime, rec: NodeRecord) -> str:
    """The one-line summary of a node in `Iterations This Block`."""
    parent = "root" if rec.parent is None else rec.parent
    system = f", system={fmt_value(regime.system_of(rec.config))}" if _shows_system(regime) else ""
    return (f"- Iter {rec.id} ({rec.classification}, slot {rec.slot}, parent={parent}, {rec.strategy}{system}): "
            f"{rec.mutation.line()} -> score={rec.score:.4f}"
            + (f"; {_one_line(rec.observation)}" if rec.observation else ""))


def _one_line(s: str) -> str:
    return " ".join((s or "").split())


# ----- code-maintained tables -----

def best_configs_table(regime: Regime, nodes: Iterable[NodeRecord], k: int = 5) -> str:
    """Top-k nodes by score as the Best Configurations table; where systems vary, a system column,
    each system's best node and the recipes' robustness (mean, worst over the systems they ran on)."""
    nodes = list(nodes)
    top = sorted(nodes, key=lambda n: (-n.score, n.id))[:k]
    shorts = list(regime.log_config.keys())
    key = regime.system_key
    per_system = _shows_system(regime) or sys_mod.mixes(nodes, key)
    header = ["Blk", "Node", *(["system"] if per_system else []), *shorts, regime.primary_metric, "score", "Finding"]
    rows = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    for n in top:
        cells = [str(n.block), str(n.id)] + ([sys_mod.fmt_system(regime.system_of(n.config))] if per_system else [])
        cells += [fmt_value(get_dotted(n.config, regime.log_config[s])) for s in shorts]
        cells += [fmt_metric(n.metrics.get(regime.primary_metric, float("nan"))), f"{n.score:.4f}",
                  (_one_line(n.observation) or n.classification)[:80].replace("|", "/")]
        rows.append("| " + " | ".join(cells) + " |")
    if per_system and nodes:
        rows += ["", *system_lines(regime, nodes)]
    return "\n".join(rows)


def system_lines(regime: Regime, nodes: list[NodeRecord], k: int = 3) -> list[str]:
    """Per-system results and recipe robustness, for memory.md (results per system seed)."""
    key = regime.system_key
    summaries = sys_mod.by_system(nodes, key, regime.identifiability_metrics)
    out = [f"Systems ({key}; scores compare configs only within one system):"]
    for r in summaries:
        best = "-" if r.best_id is None else f"best node {r.best_id} score {r.best_score:.4f}"
        ident = sys_mod.identifiability_text(r.identifiability)
        out.append(f"- system {sys_mod.fmt_system(r.system)}: {r.nodes} nodes, {best}" + (f"; data: {ident}" if ident else ""))
    multi = [r for r in sys_mod.robustness(nodes, key) if r.n_systems >= 2][:k]
    out.append("Robustness (recipes run on 2+ systems):" + ("" if multi else " none yet (replay a recipe at a new "
                                                                            f"{key} to measure it)"))
    out += [f"- {sys_mod.robustness_line(r)}" for r in multi]
    return out



def comparison_row(regime: Regime, variant: str, run: str, nodes: list[NodeRecord]) -> ComparisonRow:
    best = max(nodes, key=lambda n: (n.score, -n.id), default=None)
    return ComparisonRow(regime=regime.name, variant=variant, run=run, iterations=len(nodes),
                         best_node=best.id if best else None,
                         best_primary=best.metrics.get(regime.primary_metric) if best else None,
                         best_score=best.score if best else None,
                         best_config=config_line(regime, best.config) if best else "")


