"""The memory.md format: fixed sections, section-level edits, the Regime Comparison table.

memory.md has a fixed structure (the seed documents)::

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
What goes into the sections (entries, tables from the node store) is rendered
by `agent.memory`.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from regimes.base import format_metric
from rundir.io import write_text_atomic

#: memory.md goes into every prompt: the body of one section after a policy edit is bounded
#: (Iterations This Block, also appended by the loop, one line per node, gets more room)
MEMORY_SECTION_CHARS = 8000
MEMORY_SECTION_CHARS_BY_NAME = {"Iterations This Block": 24000}

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
            "-" if r.best_primary is None else format_metric(r.best_primary),
            "-" if r.best_score is None else f"{r.best_score:.4f}", r.best_config.replace("|", "/")]) + " |")
    return "\n".join(out)


def upsert_comparison(mem: Memory, row: ComparisonRow) -> None:
    """Replace the row of (regime, variant) or add it."""
    rows = [r for r in parse_comparison(mem.bodies["Regime Comparison"])
            if (r.regime, r.variant) != (row.regime, row.variant)]
    rows.append(row)
    mem.update("Regime Comparison", render_comparison(rows), "replace", code=True)


def _float_or_none(s: str) -> float | None:
    try:
        return float(s)
    except ValueError:
        return None
