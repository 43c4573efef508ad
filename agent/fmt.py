"""Formatting for the views (live view, `agent status`, the report): one rule per kind of value.

Config and metric values use the same functions as memory.md and analysis.md
(`regimes.base.format_value` / `format_metric`), so a number reads the same
everywhere (12345.0 is `12345`, 0.005 is `5E-3`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from regimes.base import format_metric, format_value
from rundir.records import RunStatus

#: config values (5E-3, 0.5, 16, 12345, True) and metrics (0.8123, 1.2E-3): the one rule each, shared with
#: memory.md, analysis.md, the report and the heuristic's summaries
fmt_value = format_value
fmt_metric = format_metric
SPARK = "▁▂▃▄▅▆▇█"


def policy_steps_line(st: "RunStatus") -> str | None:
    """'N of M steps answered by claude; K fell back to heuristic (2 deadline, 1 repeated_rejection)'."""
    ps = st.policy_steps
    if ps is None or ps.total == 0:
        return None
    line = f"{ps.answered} of {ps.total} steps answered by {st.policy or 'the policy'}"
    if ps.fallbacks:
        faults = ", ".join(f"{v} {k}" for k, v in sorted(ps.faults.items(), key=lambda kv: -kv[1]))
        line += f"; {ps.fallbacks} fell back to heuristic ({faults})"
    return line


def fmt_score(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "—"


def fmt_rate(r: float) -> str:
    """Steps per second, compact: 0.42, 25.0, 812, 105k."""
    if r >= 10_000:
        return f"{r / 1000:.0f}k"
    if r >= 100:
        return f"{r:.0f}"
    return f"{r:.1f}" if r >= 1 else f"{r:.2f}"


def fmt_duration(s: float | None) -> str:
    """Seconds as 42s, 3m05s or 2h07m."""
    if s is None or not math.isfinite(s):
        return "—"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def sparkline(values: list[float]) -> str:
    """A one-line sparkline of `values` (empty string for no values)."""
    vals = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in vals)


def best_so_far(nodes: list[dict]) -> list[float]:
    """Running maximum of node scores, in finishing order."""
    out, best = [], -math.inf
    for n in nodes:
        s = n.get("score")
        if isinstance(s, (int, float)) and math.isfinite(s):
            best = max(best, s)
        if best > -math.inf:
            out.append(best)
    return out


def varied_keys(nodes: list[dict], sections: tuple[str, ...] = ("training", "graph_model")) -> list[str]:
    """Dotted config keys (in `sections`) whose value differs between nodes: what the search explored."""
    from regimes.base import flatten

    values: dict[str, set] = {}
    for n in nodes:
        cfg = n.get("config")
        if not isinstance(cfg, dict):
            continue
        for k, v in flatten(cfg).items():
            if k.split(".", 1)[0] in sections:
                values.setdefault(k, set()).add(json.dumps(v, sort_keys=True, default=str))
    return sorted(k for k, vs in values.items() if len(vs) > 1)


def best_node(nodes: list[dict]) -> dict | None:
    """The node of highest score (earliest on ties), or None."""
    scored = [n for n in nodes if isinstance(n.get("score"), (int, float)) and math.isfinite(n["score"])]
    return max(scored, key=lambda n: n["score"]) if scored else None


def key_config(node: dict, keys: list[str], limit: int = 6) -> str:
    """`name=value` pairs of a node's config for the given dotted keys."""
    from regimes.base import get_dotted

    parts = [f"{k.split('.', 1)[-1]}={fmt_value(get_dotted(node.get('config') or {}, k))}" for k in keys[:limit]]
    if len(keys) > limit:
        parts.append("…")
    return ", ".join(parts)


def confinement_note(run_cfg: dict) -> tuple[str, str]:
    """(text, style) of the header's confinement line, from run.yaml (docs/contracts.md §2b)."""
    label = run_cfg.get("confinement") or ""
    if not label:  # a run from before confinement was recorded
        return "not recorded (run.yaml predates it)", "dim"
    if label.startswith("off") or run_cfg.get("confine") is False:
        return label, "bold red"
    if label.startswith("none"):
        return label, "bold yellow"
    return label, ""


def phase1_note(run_dir: Path) -> str:
    """The phase-1 figures a regime's prepare step wrote (prepare/phase1.json: homeostasis), or ''."""
    try:
        figures = json.loads((Path(run_dir) / "prepare" / "phase1.json").read_text())
    except (OSError, ValueError):
        return ""
    if not isinstance(figures, dict):
        return ""
    return "  ".join(f"{k}={v:.3f}" for k, v in figures.items() if isinstance(v, (int, float)))


def profile_note(profile: str | None, device: str | None = None, reason: str | None = None) -> str:
    """The profile and why it is the one in use (run.yaml's profile_reason when the loop wrote one)."""
    if reason:
        # "profile quick: chosen automatically (no CUDA: ...)" -> "quick (chosen automatically (...))"
        why = reason.split(":", 1)[1].strip() if reason.startswith("profile") and ":" in reason else reason
        return f"{profile or '?'} — {why}"
    if profile == "quick":
        why = "CPU-sized" + (", default without CUDA" if device in (None, "cpu", "auto") else "")
        return f"quick ({why})"
    if profile == "full":
        return "full (paper scale)"
    return profile or "?"
