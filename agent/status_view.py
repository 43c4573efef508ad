"""`agent status RUN_DIR`: a one-screen summary of a running or finished run.

Built from the run directory's files only (like the live view, whose pieces
it reuses): the header and slot table, whether the run is still alive, the
best nodes, counts per block / classification / strategy, the LLM cost and
the last policy messages.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from agent.fmt import best_node, fmt_duration, fmt_score, key_config, policy_steps_line, varied_keys
from agent.live import CLASS_STYLE, STALE_AFTER_S, owner_pid, render
from rundir.io import llm_cost, tail_lines
from rundir.paths import PID_FILE
from rundir.readers import parse_time, read_status
from rundir.records import RunStatus
from rundir.store import read_nodes



def liveness(run_dir: Path, st: RunStatus | None, now: datetime | None = None) -> tuple[bool, str]:
    """(running?, why) from the pid file when there is one, else from status.json's age and phase."""
    now = now or datetime.now(timezone.utc)
    run_dir = Path(run_dir)
    pid_path = run_dir / PID_FILE
    if pid_path.is_file():
        pid = owner_pid(run_dir)
        if pid is not None:
            return True, f"running (process {pid} is alive)"
        if st is None or not st.finished:
            return False, (f"not running: its process has ended (last update "
                           f"{st.updated_at if st else '?'}); continue with: agent resume {run_dir}")
    if st is None:
        return False, "not started (no status.json)"
    if st.phase == "stopped":
        return False, f"stopped ({st.message or 'Ctrl-C'}); continue with: agent resume {run_dir}"
    if st.finished:
        return False, f"finished ({st.phase})"
    upd = parse_time(st.updated_at)
    if upd is None:
        return False, "unknown (status.json has no updated_at)"
    age = (now - upd).total_seconds()
    if age <= STALE_AFTER_S:
        return True, f"running (status updated {fmt_duration(age)} ago)"
    return False, f"not running: last update {fmt_duration(age)} ago, phase {st.phase} (agent resume {run_dir})"


def best_table(nodes: list[dict], n: int = 5) -> Table:
    """The `n` best nodes: id, parent, slot, strategy, score, classification, key config."""
    keys = varied_keys(nodes)
    t = Table(title=f"best nodes (of {len(nodes)})", title_justify="left", header_style="bold", expand=True,
              box=box.SIMPLE_HEAD, pad_edge=False)
    for col, just in (("node", "right"), ("parent", "right"), ("block", "right"), ("slot", "right"),
                      ("strategy", "left"), ("score", "right"), ("class", "left"), ("config", "left")):
        t.add_column(col, justify=just, no_wrap=True, overflow="ellipsis", ratio=1 if col == "config" else None)
    ranked = sorted((x for x in nodes if isinstance(x.get("score"), (int, float))),
                    key=lambda x: (-x["score"], x.get("id", 0)))
    for x in ranked[:n]:
        cls = x.get("classification") or ""
        t.add_row(str(x.get("id")), "root" if x.get("parent") is None else str(x["parent"]), str(x.get("block", "")),
                  str(x.get("slot", "")), x.get("strategy") or "—", fmt_score(x.get("score")),
                  Text(cls, style=CLASS_STYLE.get(cls, "")), key_config(x, keys, limit=4))
    return t


def counts_line(nodes: list[dict]) -> Text:
    """Counts of nodes per block, classification and strategy."""
    t = Text()
    blocks = Counter(x.get("block") for x in nodes)
    classes = Counter(x.get("classification") or "?" for x in nodes)
    strategies = Counter(x.get("strategy") or "?" for x in nodes)
    failed = sum(1 for x in nodes if x.get("status") not in (None, "ok"))
    t.append("counts ", style="bold")
    t.append(f"{len(nodes)} nodes in {len(blocks)} block(s)")
    if failed:
        t.append(f", {failed} trainings failed", style="red")
    t.append("\n  class: ", style="dim")
    for i, (k, v) in enumerate(sorted(classes.items())):
        t.append(("" if i == 0 else ", ") + f"{k} {v}", style=CLASS_STYLE.get(k, ""))
    t.append("\n  strategy: ", style="dim")
    t.append(", ".join(f"{k} {v}" for k, v in sorted(strategies.items(), key=lambda kv: -kv[1])))
    return t


def status_renderable(run_dir: Path, width: int | None = 120, now: datetime | None = None) -> RenderableType:
    """The `agent status` screen of `run_dir` (a pure function of its files, `now` and pid liveness)."""
    run_dir = Path(run_dir)
    now = now or datetime.now(timezone.utc)
    st = read_status(run_dir)
    nodes = read_nodes(run_dir)
    alive, why = liveness(run_dir, st, now)
    parts: list[RenderableType] = []
    state = Text()
    state.append("state ", style="bold")
    state.append(why, style="bold green" if alive else ("green" if st is not None and st.finished else "yellow"))
    parts.append(state)
    parts.append(render(run_dir, width, now, reasoning_lines=0))
    parts.append(Text(""))
    if nodes:
        parts.append(best_table(nodes))
        parts.append(counts_line(nodes))
    else:
        parts.append(Text("no finished node yet", style="dim"))
    cost, calls = llm_cost(run_dir)
    ct = Text()
    ct.append("LLM ", style="bold")
    ct.append(f"{calls} calls, ${max(cost, st.cost_usd if st else 0.0):.4f}" if calls else "no LLM calls")
    steps = policy_steps_line(st) if st else None
    if steps:
        ct.append("\npolicy ", style="bold")
        ct.append(steps, style="red" if st.policy_steps and st.policy_steps.fallbacks else "")
        last = st.policy_steps.last_fallback if st.policy_steps else None
        if last:
            ct.append(f"\n  last fallback: step {last.step}: {last.reason}", style="dim")
    parts.append(ct)
    msgs = tail_lines(run_dir / "reasoning.log", 5)
    if msgs:
        parts.append(Text("last messages", style="bold"))
        parts.extend(Text("  " + m, style="dim", no_wrap=True, overflow="ellipsis") for m in msgs)
    b = best_node(nodes)
    hint = Text()
    hint.append("files ", style="bold")
    hint.append(f"{run_dir}/memory.md  analysis.md  nodes.jsonl")
    if b:
        hint.append(f"   best outputs: {b.get('out_dir')}", style="dim")
    hint.append(f"\nnext  agent report {run_dir}" + ("" if alive or (st and st.finished) else f"   ·   agent resume {run_dir}"))
    parts.append(hint)
    return Group(*parts)
