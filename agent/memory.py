"""memory.md (working memory) and analysis.md entries.

memory.md has a fixed structure (DESIGN.md §5, seed documents)::

    # Working Memory
    ## Knowledge Base
    ### Best Configurations        (table maintained by code from the store)
    ### Established Principles
    ### Open Questions
    ### Regime Comparison          (table, only for runs that continue another run)
    ## Previous Block Summary
    ## Current Block
    ### Block Info
    ### Hypothesis
    ### Iterations This Block      (one line per node, appended by code)
    ### Emerging Observations      (always last)

Edits are section-level (replace or append the body of one named section),
so the structure cannot be broken: a body may not contain a Markdown heading.
The analysis.md entry is rendered by code from structured fields.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict

from agent import systems as sys_mod
from agent.store import NodeRecord, write_text_atomic
from regimes.base import Regime, format_metric, format_value, get_dotted
from tools.limits import MEMORY_SECTION_CHARS, MEMORY_SECTION_CHARS_BY_NAME

TITLE = "# Working Memory"
#: (heading level, name) in file order
SECTIONS: tuple[tuple[int, str], ...] = (
    (2, "Knowledge Base"),
    (3, "Best Configurations"),
    (3, "Established Principles"),
    (3, "Open Questions"),
    (3, "Regime Comparison"),
    (2, "Previous Block Summary"),
    (2, "Current Block"),
    (3, "Block Info"),
    (3, "Hypothesis"),
    (3, "Iterations This Block"),
    (3, "Emerging Observations"),
)
SECTION_NAMES = tuple(n for _, n in SECTIONS)
#: maintained by code only; update_memory may not touch them
CODE_SECTIONS = ("Best Configurations", "Regime Comparison")
#: what update_memory may edit (the container sections too: text under the heading, before its subsections)
EDITABLE_SECTIONS = tuple(n for n in SECTION_NAMES if n not in CODE_SECTIONS)
OPTIONAL_SECTIONS = ("Regime Comparison",)

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")


class MemoryError_(ValueError):
    """A section edit that would break memory.md (one-line message)."""


class Memory:
    """memory.md as ordered section bodies."""

    def __init__(self, bodies: dict[str, str] | None = None, comparison: bool = False):
        self.bodies = {n: "" for n in SECTION_NAMES}
        if bodies:
            self.bodies.update(bodies)
        self.comparison = comparison or bool(self.bodies.get("Regime Comparison", "").strip())

    # ----- io -----

    @classmethod
    def parse(cls, text: str) -> "Memory":
        """Parse memory.md; text under an unknown heading stays in the section above it."""
        bodies: dict[str, list[str]] = {n: [] for n in SECTION_NAMES}
        current: str | None = None
        seen_comparison = False
        for line in text.splitlines():
            m = _HEADING.match(line)
            if m:
                level, name = len(m.group(1)), _strip_suffix(m.group(2))
                if (level, name) in SECTIONS:
                    current = name
                    seen_comparison |= name == "Regime Comparison"
                    continue
                if level == 1 and current is None:
                    continue  # the title
            if current is not None:
                bodies[current].append(line)
        mem = cls({k: "\n".join(v).strip("\n") for k, v in bodies.items()}, comparison=seen_comparison)
        return mem

    @classmethod
    def load(cls, path: Path) -> "Memory":
        return cls.parse(Path(path).read_text())

    def render(self, block: int | None = None) -> str:
        out = [TITLE, ""]
        for level, name in SECTIONS:
            if name in OPTIONAL_SECTIONS and not self.comparison:
                continue
            heading = name
            if block is not None and name == "Previous Block Summary" and block > 1:
                heading = f"{name} (Block {block - 1})"
            if block is not None and name == "Current Block":
                heading = f"{name} (Block {block})"
            out.append(f"{'#' * level} {heading}")
            out.append("")
            body = self.bodies[name].strip("\n")
            if body:
                out.append(body)
                out.append("")
        return "\n".join(out).rstrip("\n") + "\n"

    def save(self, path: Path, block: int | None = None) -> None:
        write_text_atomic(Path(path), self.render(block))

    # ----- edits -----

    def update(self, section: str, text: str, mode: str = "replace", code: bool = False) -> None:
        """Replace or append the body of one section. Raises MemoryError_ on a bad edit."""
        name = _strip_suffix(section.lstrip("#").strip())
        if name not in SECTION_NAMES:
            raise MemoryError_(f"unknown memory section {section!r}; sections: {', '.join(EDITABLE_SECTIONS)}")
        if name in CODE_SECTIONS and not code:
            raise MemoryError_(f"section {name!r} is maintained by the loop from the node store")
        if mode not in ("replace", "append"):
            raise MemoryError_(f"mode must be 'replace' or 'append', not {mode!r}")
        bad = heading_line(text)
        if bad is not None:
            raise MemoryError_(f"text may not contain Markdown headings (line {bad.strip()[:60]!r}); "
                               "it would break the memory structure")
        text = text.strip("\n")
        if mode == "replace" or not self.bodies[name].strip():
            body = text
        else:
            body = self.bodies[name].rstrip("\n") + "\n" + text
        limit = MEMORY_SECTION_CHARS_BY_NAME.get(name, MEMORY_SECTION_CHARS)
        if not code and len(body) > limit:
            # memory.md goes into every prompt: a section stays bounded (replace it with a summary)
            raise MemoryError_(f"section {name!r} would be {len(body)} characters; at most {limit} "
                               "(replace it with a shorter summary)")
        if name == "Regime Comparison":
            self.comparison = True
        self.bodies[name] = body


#: an ATX heading as CommonMark reads it (up to 3 spaces of indent; `#` alone is one too)
_ATX = re.compile(r"^ {0,3}#{1,6}(\s|$)")
#: a setext underline: `===` or `---` right under a line of text makes that line a heading
_SETEXT = re.compile(r"^ {0,3}(=+|-+)\s*$")


def heading_line(text: str) -> str | None:
    """The first line of `text` a Markdown reader would take as a heading, or None."""
    prev = ""
    for line in text.splitlines():
        if _ATX.match(line):
            return line
        if _SETEXT.match(line) and prev.strip() and not _SETEXT.match(prev) and not prev.lstrip().startswith("|"):
            return prev + "\n" + line
        prev = line
    return None


def _strip_suffix(name: str) -> str:
    # "Current Block (Block 3)" -> "Current Block"; "Knowledge Base (accumulated ...)" -> "Knowledge Base"
    return re.sub(r"\s*\(.*\)\s*$", "", name).strip()


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


# ----- number formatting (seed style: 5E-3, 0.8123) -----

#: config values: the regime contract's seed-style formatter (5E-3, 0.05, 2000)
fmt_value = format_value


#: metrics: 4 decimals, scientific when tiny or huge (regimes.base.format_metric)
fmt_metric = format_metric


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
                  f"  File: {cc.get('file', '')}",
                  f"  Function: {cc.get('function', '')}",
                  f"  Change: {cc.get('change', '')}",
                  f"  Hypothesis: {cc.get('hypothesis', '')}"]
    if rec.status != "ok":
        lines.append(f"Metrics: training {rec.status}: {_one_line(rec.reason) or 'no metrics'}")
    else:
        lines.append(f"Metrics: {metrics_line(regime, rec.metrics)}")
    lines.append(f"Visual: {_one_line(rec.visual) or '-'}")
    lines.append(f"Mutation: {_one_line(rec.mutation) or '-'}")
    if regime.slot_fixed:
        names = [cc.get("strategy") for cc in rec.code_changes if cc.get("strategy")]
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
            f"{_one_line(rec.mutation)} -> score={rec.score:.4f}"
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


class ComparisonRow(BaseModel):
    model_config = ConfigDict(extra="forbid")
    regime: str
    variant: str
    run: str
    iterations: int
    best_node: int | None
    best_primary: float | None
    best_score: float | None
    best_config: str = ""


COMPARISON_HEADER = ("Regime", "Variant", "Run", "Iterations", "Best node", "Best primary", "Best score",
                     "Best config")


def parse_comparison(body: str) -> list[ComparisonRow]:
    rows = []
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != len(COMPARISON_HEADER) or cells[0] in ("Regime", "---"):
            continue
        rows.append(ComparisonRow(regime=cells[0], variant=cells[1], run=cells[2],
                                  iterations=int(cells[3]) if cells[3].isdigit() else 0,
                                  best_node=int(cells[4]) if cells[4].isdigit() else None,
                                  best_primary=_float_or_none(cells[5]), best_score=_float_or_none(cells[6]),
                                  best_config=cells[7]))
    return rows


def render_comparison(rows: list[ComparisonRow]) -> str:
    out = ["| " + " | ".join(COMPARISON_HEADER) + " |", "| " + " | ".join("---" for _ in COMPARISON_HEADER) + " |"]
    for r in rows:
        out.append("| " + " | ".join([
            r.regime, r.variant, r.run, str(r.iterations), "-" if r.best_node is None else str(r.best_node),
            "-" if r.best_primary is None else fmt_metric(r.best_primary),
            "-" if r.best_score is None else f"{r.best_score:.4f}", r.best_config.replace("|", "/")]) + " |")
    return "\n".join(out)


def upsert_comparison(mem: Memory, row: ComparisonRow) -> None:
    """Replace the row of (regime, variant) or add it."""
    rows = [r for r in parse_comparison(mem.bodies["Regime Comparison"])
            if (r.regime, r.variant) != (row.regime, row.variant)]
    rows.append(row)
    mem.update("Regime Comparison", render_comparison(rows), "replace", code=True)


def comparison_row(regime: Regime, variant: str, run: str, nodes: list[NodeRecord]) -> ComparisonRow:
    best = max(nodes, key=lambda n: (n.score, -n.id), default=None)
    return ComparisonRow(regime=regime.name, variant=variant, run=run, iterations=len(nodes),
                         best_node=best.id if best else None,
                         best_primary=best.metrics.get(regime.primary_metric) if best else None,
                         best_score=best.score if best else None,
                         best_config=config_line(regime, best.config) if best else "")


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
