"""The live terminal view of a run, rendered from the run directory's files.

Everything shown is read from files the loop writes (status.json, nodes.jsonl,
ucb_scores.txt, llm_calls.jsonl, reasoning.log and each running slot's
progress.jsonl), so `render(run_dir, width)` is a pure function of the run
directory: the same files give the same picture, whether the run is live,
finished, or a recorded fixture. `agent status` and `agent report` reuse the
readers defined here.

Without a TTY (or with --no-live) `PlainReporter` turns file changes into one
plain log line per event: batch start, slot finished, block end, fallback, done.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from rundir.io import llm_cost, read_json, read_jsonl, tail_lines
from rundir.paths import PID_FILE
from rundir.readers import (Progress, RunFileError, check_run_dir, parse_time, read_progress, read_run_yaml,
                            read_status, read_ucb, slot_out_dir)
from rundir.records import TERMINAL_PHASES, RunStatus
from rundir.store import read_nodes

STATUS_STYLE = {"pending": "dim", "running": "bold cyan", "done": "green", "ok": "green",
                "failed": "bold red", "timeout": "bold magenta", "killed": "red"}
CLASS_STYLE = {"converged": "bold green", "partial": "yellow", "failed": "red"}
SPARK = "▁▂▃▄▅▆▇█"
#: a status.json older than this (seconds) belongs to a run that is not running any more
STALE_AFTER_S = 120.0


# ----------------------------------------------------------------------------- formatting

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


def fmt_value(v: Any) -> str:
    """Config values the way the seeds write them: 5E-3, 0.5, 16, True."""
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if v == 0:
            return "0"
        if abs(v) < 1e-2 or abs(v) >= 1e5:
            mant, exp = f"{v:.2E}".split("E")
            mant = mant.rstrip("0").rstrip(".")
            return f"{mant}E{int(exp)}"
        return f"{v:.4g}"
    return str(v)


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


# ----------------------------------------------------------------------------- render

def pid_alive(pid: int) -> bool:
    """True when process `pid` exists (possibly owned by another user); a zombie is dead."""
    from agent.driver import pid_alive as alive  # one liveness rule for the run lock, resume and the view

    return alive(pid)


def owner_pid(run_dir: Path) -> int | None:
    """The pid in RUN_DIR/run.pid when that process is alive, else None."""
    try:
        pid = int((Path(run_dir) / PID_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def _elapsed(st: RunStatus, now: datetime | None, owned: bool = False) -> float | None:
    t0 = parse_time(st.started_at)
    if t0 is None:
        return None
    upd = parse_time(st.updated_at)
    t1 = now
    stale = now is None or (upd is not None and (now - upd).total_seconds() > STALE_AFTER_S and not owned)
    if upd is not None and (st.finished or stale):
        t1 = upd  # a finished or abandoned run: its elapsed time stops at its last update
    if t1 is None:
        return None
    return max(0.0, (t1 - t0).total_seconds())


def _header(run_dir: Path, st: RunStatus, run_cfg: dict, now: datetime | None) -> Panel:
    cost, n_calls = llm_cost(run_dir)
    cost = max(cost, st.cost_usd or 0.0)
    policy = st.policy or run_cfg.get("policy") or "?"
    model = st.model or run_cfg.get("model")
    pol = f"{policy} ({model})" if policy in ("claude",) and model else policy
    budget = run_cfg.get("max_cost_usd", (run_cfg.get("budget") or {}).get("max_cost_usd"))
    t = Text()
    t.append(st.regime, style="bold magenta")
    t.append(f" [{st.variant or run_cfg.get('variant') or 'default'}]", style="magenta")
    t.append("   policy ", style="dim")
    t.append(pol, style="bold")
    if st.fallback:
        t.append("  FALLBACK→heuristic", style="bold red")
    t.append("   block ", style="dim")
    t.append(f"{st.block}", style="bold")
    t.append(f" iter {st.iter_in_block}/{st.n_iter_block or '?'}", style="bold")
    t.append("   iterations ", style="dim")
    t.append(f"{st.iterations_done}/{st.iterations_total or '?'}", style="bold")
    t.append("\nphase ", style="dim")
    t.append(st.phase, style="bold green" if st.finished else "bold cyan")
    t.append("   elapsed ", style="dim")
    t.append(fmt_duration(_elapsed(st, now, owned=owner_pid(run_dir) is not None)))
    t.append("   cost ", style="dim")
    t.append(f"${cost:.2f}" + (f" / ${budget:.2f}" if isinstance(budget, (int, float)) else ""))
    if n_calls:
        t.append(f" ({n_calls} calls)", style="dim")
    t.append("\nprofile ", style="dim")
    t.append(profile_note(st.profile or run_cfg.get("profile"), run_cfg.get("device"),
                          run_cfg.get("profile_reason")))
    if isinstance(run_cfg.get("timeout_min"), (int, float)):  # training limits (issue 19)
        t.append("   limits ", style="dim")
        mem = run_cfg.get("memory_limit_mb")
        t.append(f"{run_cfg['timeout_min']:g} min/training, " + (f"{mem} MB" if mem else "no memory limit"))
    t.append("\nconfinement ", style="dim")
    t.append(*confinement_note(run_cfg))
    phase1 = phase1_note(run_dir)
    if phase1:
        t.append("\nphase 1 ", style="dim")
        t.append(phase1)
    return Panel(t, title=f"gnn-agent · {st.run_id or Path(run_dir).name}", title_align="left",
                 border_style="blue")


def _progress_cell(bar_w: int, prog: Progress | None, status: str) -> Table:
    total = (prog.total if prog and prog.total else None) or 1.0
    completed = total if status in ("done", "ok") else (prog.step if prog else 0.0)
    grid = Table.grid(padding=(0, 1))
    grid.add_column(width=bar_w, no_wrap=True)
    grid.add_column(no_wrap=True)
    steps = f"{int(prog.step)}/{int(prog.total)}" if prog and prog.total else "—"
    grid.add_row(ProgressBar(total=total, completed=completed, width=bar_w, complete_style="cyan",
                             finished_style="green"), Text(steps, style="dim"))
    return grid


def _slot_table(run_dir: Path, st: RunStatus, width: int, nodes: list[dict] | None = None) -> Table:
    wide = width >= 100
    table = Table(expand=True, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1))
    table.add_column("slot", justify="right", min_width=4, no_wrap=True)
    table.add_column("node", justify="right", min_width=4, no_wrap=True)
    if wide:
        table.add_column("parent", justify="right", min_width=6, no_wrap=True)
    show_system = any(s.system is not None for s in st.slots)
    if show_system:
        table.add_column("system", justify="right", min_width=6, no_wrap=True)
    table.add_column("strategy", width=14 if wide else 9, overflow="ellipsis", no_wrap=True)
    table.add_column("mutation", ratio=1, min_width=10, overflow="ellipsis", no_wrap=True)
    bar_w = max(6, min(20, width // 9))
    table.add_column("progress", width=bar_w + 10, no_wrap=True)
    if wide:
        table.add_column("speed · ETA", justify="right", width=12, no_wrap=True)
    table.add_column("score", justify="right", width=6, no_wrap=True)
    table.add_column("status", width=7, no_wrap=True)
    by_id = {n.get("id"): n for n in nodes or []}
    for s in st.slots:
        out = slot_out_dir(run_dir, s.out_dir)
        prog = read_progress(out) if out is not None and s.status != "pending" else None
        speed = f"{fmt_rate(prog.rate)}/s" if prog and prog.rate else "—"
        if prog and prog.eta_s is not None and s.status == "running":
            speed += f" {fmt_duration(prog.eta_s)}"
        row = [str(s.slot), str(s.node) if s.node is not None else "—"]
        if wide:
            row.append("root" if s.parent is None else str(s.parent))
        mutation: str | Text = s.mutation or "—"
        rec = by_id.get(s.node)
        if s.status in ("failed", "timeout", "killed") and rec and rec.get("reason") not in (None, "", "ok"):
            mutation = Text(f"{rec['reason']} · {s.mutation or ''}", style="red")  # why, before what
        if show_system:
            row.append(s.system or "—")
        row += [s.strategy or "—", mutation, _progress_cell(bar_w, prog, s.status)]
        if wide:
            row.append(speed)
        row += [fmt_score(s.score), Text(s.status, style=STATUS_STYLE.get(s.status, ""))]
        table.add_row(*row)
    if not st.slots:
        table.add_row(*["—"] + [""] * (len(table.columns) - 1))
    return table


def _best_panel(nodes: list[dict], st: RunStatus) -> RenderableType:
    b = best_node(nodes)
    t = Text()
    t.append("best so far ", style="bold")
    if b is None:
        if st.best and st.best.node is not None:
            t.append(f"node {st.best.node}  score {fmt_score(st.best.score)}", style="bold green")
        else:
            t.append("no finished node yet", style="dim")
        return t
    t.append(f"node {b['id']}", style="bold green")
    t.append(f"  score {fmt_score(b['score'])}", style="bold green")
    cls = b.get("classification")
    if cls:
        t.append(f"  {cls}", style=CLASS_STYLE.get(cls, ""))
    t.append(f"  slot {b.get('slot')}  {b.get('strategy') or ''}", style="dim")
    from agent import systems as sys_mod

    if sys_mod.mixes(nodes):  # scores of different systems: say which one, and each system's best
        t.append(f"  system {sys_mod.fmt_system(sys_mod.system_of(b))}", style="bold")
        t.append("\n  per system: ", style="dim")
        t.append(" · ".join(f"{sys_mod.fmt_system(r.system)} best {fmt_score(r.best_score)}"
                            for r in sys_mod.by_system(nodes)))
    cfg = key_config(b, varied_keys(nodes))
    if cfg:
        t.append("\n  config: ", style="dim")
        t.append(cfg)
    spark = sparkline(best_so_far(nodes))
    scores = sparkline([n.get("score") for n in nodes])
    if spark:
        t.append("\n  best  ", style="dim")
        t.append(spark, style="green")
        t.append("   scores ", style="dim")
        t.append(scores, style="cyan")
        t.append(f"   ({len(nodes)} nodes)", style="dim")
    return t


def _ucb_line(line: str) -> Text:
    """One ucb_scores.txt line with its node id and UCB value highlighted."""
    t = Text("  ", no_wrap=True, overflow="ellipsis")
    head, sep, rest = line.partition(":")
    if sep and head.startswith("Node"):
        t.append(head + sep, style="bold cyan")
        ucb, sep2, tail = rest.partition(",")
        t.append(ucb, style="bold")
        t.append(sep2 + tail)
    else:
        t.append(line)
    return t


def _prepare_table(run_dir: Path, width: int) -> Table | None:
    """Trainings of the prepare step (e.g. homeostasis phase 1 in prepare/phase1/), while it runs."""
    dirs = sorted(p.parent for p in (run_dir / "prepare").glob("*/progress.jsonl"))
    if not dirs:
        return None
    bar_w = max(6, min(20, width // 9))
    table = Table(expand=True, box=box.SIMPLE_HEAD, header_style="bold", pad_edge=False, padding=(0, 1))
    table.add_column("prepare", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("progress", width=bar_w + 10, no_wrap=True)
    table.add_column("speed · ETA", justify="right", width=12, no_wrap=True)
    for d in dirs:
        prog = read_progress(d)
        done = (d / "metrics.json").is_file()
        speed = f"{fmt_rate(prog.rate)}/s" if prog and prog.rate else "—"
        if prog and prog.eta_s is not None and not done:
            speed += f" {fmt_duration(prog.eta_s)}"
        table.add_row(f"{d.name} training", _progress_cell(bar_w, prog, "done" if done else "running"), speed)
    return table


def render(run_dir: Path, width: int | None = 120, now: datetime | None = None,
           reasoning_lines: int = 2) -> RenderableType:
    """The live view of `run_dir`, built only from its files.

    `width` is the console width the layout is sized for; `now` (default: the
    clock) is used only for the elapsed time of a running run.
    """
    run_dir = Path(run_dir)
    width = width or 120
    now = now or datetime.now(timezone.utc)
    st = read_status(run_dir)
    if st is None:
        return Panel(Text(f"waiting for {run_dir}/status.json …", style="dim"), title="gnn-agent",
                     title_align="left", border_style="blue")
    run_cfg = read_run_yaml(run_dir)
    nodes = read_nodes(run_dir)
    parts: list[RenderableType] = [_header(run_dir, st, run_cfg, now)]
    if st.phase == "prepare" and (prep := _prepare_table(run_dir, width)) is not None:
        parts.append(prep)
    parts += [_slot_table(run_dir, st, width, nodes), _best_panel(nodes, st)]
    ucb = read_ucb(run_dir, 3)
    ut = Text()
    ut.append("top UCB", style="bold")
    if not ucb:
        ut.append("  (block start: parents are root)", style="dim")
    parts.append(ut)
    parts.extend(_ucb_line(line) for line in ucb)
    mt = Text()
    mt.append("policy ", style="bold")
    mt.append((st.message or "").strip() or "—", style="italic")
    last = st.policy_steps.last_fallback if st.policy_steps else None
    if st.fallback:
        why = f"{last.fault or '?'}: {last.reason}" if last else "see reasoning.log"
        mt.append(f"\n  the latest step fell back to heuristic ({why})", style="red")
    steps = policy_steps_line(st)
    if steps:
        mt.append(f"\n  {steps}", style="dim")
    parts.append(mt)
    parts.extend(Text("  " + line, style="dim", no_wrap=True, overflow="ellipsis")
                 for line in tail_lines(run_dir / "reasoning.log", reasoning_lines))
    if st.finished:
        parts.append(Text(f"run {st.phase}: `agent report {run_dir}` writes the report", style="bold green"))
    return Group(*parts)


# ----------------------------------------------------------------------------- plain lines

class PlainReporter:
    """Turns changes of a run directory's files into plain log lines (no TTY, --no-live).

    Each `poll()` returns the lines for what happened since the previous poll:
    batch start, slot finished (with score), block end, fallback, done.
    """

    def __init__(self, run_dir: Path, history: bool = True):
        """`history=False` (resume): nodes already in nodes.jsonl are summarised in one line, not replayed."""
        self.run_dir = Path(run_dir)
        self._seen_nodes: set[int] = set()
        self._pending: list[str] = []
        if not history:
            old = read_nodes(self.run_dir)
            self._seen_nodes = {n.get("id") for n in old}
            b = best_node(old)
            if old:
                self._pending.append(f"resuming after {len(old)} finished nodes"
                                     + (f"; best node {b['id']} score {fmt_score(b['score'])}" if b else ""))
        self._batch: tuple[int, int] | None = None
        self._block: int | None = None
        self._fallbacks = 0
        self._fallback = False
        self._done = False
        self._phase: str | None = None
        if not history:  # resume: the previous process's counts and its stop are not news
            st0 = read_status(self.run_dir)
            if st0 is not None:
                self._fallbacks = st0.policy_steps.fallbacks if st0.policy_steps else 0
                self._done = st0.finished

    def poll(self, status: dict | None = None) -> list[str]:
        """Lines for the events since the last poll (possibly none).

        `status`: a status.json snapshot delivered by the loop's `status` event
        (so no transition is missed between two file reads); default: read the file.
        """
        st = None
        if status is not None:
            try:
                st = RunStatus.model_validate(status)
            except ValidationError:
                st = None
        if st is None:
            st = read_status(self.run_dir)
        nodes = read_nodes(self.run_dir)
        lines, self._pending = self._pending, []
        from agent import systems as sys_mod

        mixed = sys_mod.mixes(nodes)
        for n in nodes:
            nid = n.get("id")
            if nid in self._seen_nodes:
                continue
            self._seen_nodes.add(nid)
            cls = n.get("classification") or n.get("status") or ""
            lines.append(f"slot {n.get('slot')} finished: node {nid} (parent {n.get('parent') or 'root'}, "
                         f"{n.get('strategy') or '-'}: {n.get('mutation') or '-'}) score {fmt_score(n.get('score'))}"
                         f" {cls}".rstrip()
                         + (f" on system {sys_mod.fmt_system(sys_mod.system_of(n))}" if mixed else ""))
        if st is None:
            return lines
        if self._block is not None and st.block > self._block:
            b = best_node([n for n in nodes if n.get("block") == self._block])
            best = f"best node {b['id']} score {fmt_score(b['score'])}" if b else "no scored node"
            lines.append(f"block {self._block} ended: {best}")
        self._block = st.block
        if st.phase == "prepare" and self._phase != "prepare":
            lines.append(f"prepare: data, regime preparation and first configs ({st.message or 'starting'})")
        self._phase = st.phase
        # one batch-start line per batch: iterations_done only moves when a batch has finished
        batch_key = (st.block, st.iterations_done)
        running = [s for s in st.slots if s.node is not None and s.status in ("running", "pending")]
        if any(s.status == "running" for s in running) and batch_key != self._batch:
            self._batch = batch_key
            desc = ", ".join(f"slot {s.slot} node {s.node} {s.strategy or '-'}" for s in running)
            lines.append(f"batch start (block {st.block}, {st.iterations_done}/{st.iterations_total or '?'} "
                         f"iterations done): {desc}")
        n_fb = st.policy_steps.fallbacks if st.policy_steps else (1 if st.fallback else 0)
        if n_fb > self._fallbacks:  # one line per fallback, with its reason
            last = st.policy_steps.last_fallback if st.policy_steps else None
            if last:
                lines.append(f"fallback {n_fb}: heuristic answered step {last.step} "
                             f"({last.fault}: {last.reason})")
            else:
                lines.append(f"fallback {n_fb}: heuristic answered this step ({st.message or 'see reasoning.log'})")
        elif st.fallback and not self._fallback and st.policy_steps is None:
            lines.append(f"fallback: the policy failed, heuristic answers this step ({st.message or ''})".rstrip())
        if self._fallback and not st.fallback and st.policy_steps is not None and st.policy_steps.total:
            lines.append(f"{st.policy} answers again ({policy_steps_line(st)})")
        self._fallbacks = max(self._fallbacks, n_fb)
        self._fallback = st.fallback
        if not st.finished:
            self._done = False  # a resumed run: its own end is news
        if st.finished and not self._done:
            self._done = True
            cost, _ = llm_cost(self.run_dir)
            b = best_node(nodes)
            best = f"best node {b['id']} score {fmt_score(b['score'])}" if b else "no scored node"
            steps = policy_steps_line(st)
            lines.append(f"run {st.phase}: {st.iterations_done} iterations, {best}, "
                         f"cost ${max(cost, st.cost_usd):.2f}" + (f"; {steps}" if steps else ""))
        return lines


# ----------------------------------------------------------------------------- driving a run

class Interrupts:
    """Ctrl-C handling while a run is in progress.

    The first Ctrl-C sets `stop` (the run ends cleanly after the current step,
    resumable); the second sets `kill` (running trainings are ended too); a
    third raises KeyboardInterrupt in the main thread. SIGTERM sets both at
    once (a service manager waits seconds, not a batch), so it too leaves the
    run stopped and resumable.

    A terminal sends Ctrl-C to its whole foreground process group, which also
    holds the helper processes the run starts (git for the workspace, the
    homeostasis phase-1 training): killed mid-step, they would turn a clean
    stop into an error. So SIGINT is *blocked* in the main thread while a run
    is driven (children inherit the blocked mask and never see it); trainings
    are cancelled through `kill` by the runner (SIGTERM/SIGKILL), never by SIGINT.

    The signal still reaches this process in some thread that does not block
    it: the small "ctrl-c" thread below, or a thread started before the run
    (torch's pool). Python's C-level handler writes the signal number to the
    wakeup fd in whichever thread receives it, so the ctrl-c thread, reading
    that fd, sees every Ctrl-C at once. (A Python-level handler alone runs only
    when the main thread next executes bytecode, which can be minutes later
    while it waits for a batch.)
    """

    def __init__(self, say: Callable[[str], None]):
        self.stop = threading.Event()
        self.kill = threading.Event()
        self._say = say
        self._old = None
        self._old_term = None
        self._old_mask = None
        self._old_wakeup = -1
        self._pipe: tuple[int, int] | None = None
        self._waiter: threading.Thread | None = None
        self._closing = False
        self._raise = False

    def handle(self, signum=None, frame=None) -> None:
        """Count one Ctrl-C: stop, then kill, then KeyboardInterrupt in the main thread."""
        if not self.stop.is_set():
            self.stop.set()
            self._say("Ctrl-C: stopping after the current step (Ctrl-C again ends the running trainings)")
        elif not self.kill.is_set():
            self.kill.set()
            self._say("Ctrl-C again: ending the running trainings")
        elif threading.current_thread() is threading.main_thread():
            raise KeyboardInterrupt
        else:
            import _thread

            self._raise = True
            _thread.interrupt_main()  # runs _on_main() in the main thread, which raises

    def terminate(self, signum=None, frame=None) -> None:
        """SIGTERM (kill, systemd, a batch scheduler): end the running trainings and stop, resumable —
        the same as Ctrl-C twice; a second SIGTERM counts like a third Ctrl-C."""
        if not self.kill.is_set():
            self.stop.set()
            self.kill.set()
            self._say("SIGTERM: ending the running trainings and stopping (resume with `agent resume`)")
        else:
            self.handle()

    def _on_main(self, signum=None, frame=None) -> None:
        # The Python-level handler: the ctrl-c thread already counted this signal
        # through the wakeup fd; only the third Ctrl-C's interrupt_main raises here.
        if self._raise:
            raise KeyboardInterrupt

    def _wait(self) -> None:
        import select

        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # this thread receives it
        rfd = self._pipe[0]
        while not self._closing:
            try:
                ready, _, _ = select.select([rfd], [], [])
            except InterruptedError:
                continue
            if not ready:
                continue
            try:
                data = os.read(rfd, 64)
            except BlockingIOError:
                continue
            if self._closing:
                return
            for b in data:
                if b == signal.SIGINT:
                    self.handle()
                elif b == signal.SIGTERM:
                    self.terminate()

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._on_main)
            # not blocked (trainings inherit the mask, and the runner stops them with SIGTERM): the C-level
            # handler writes it to the wakeup fd, which the ctrl-c thread reads
            self._old_term = signal.signal(signal.SIGTERM, self._on_main)
            if hasattr(signal, "pthread_sigmask"):
                r, w = os.pipe()
                os.set_blocking(r, False)
                os.set_blocking(w, False)
                self._pipe = (r, w)
                self._old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
                self._old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
                self._waiter = threading.Thread(target=self._wait, name="ctrl-c", daemon=True)
                self._waiter.start()
            else:  # no signal masks (not POSIX): the Python-level handler counts
                signal.signal(signal.SIGINT, self.handle)
                signal.signal(signal.SIGTERM, self.terminate)
        return self

    def __exit__(self, *exc) -> None:
        if self._waiter is not None:
            self._closing = True
            os.write(self._pipe[1], b"\0")  # wakes the ctrl-c thread, which returns
            self._waiter.join(timeout=2)
            signal.pthread_sigmask(signal.SIG_SETMASK, self._old_mask)
            signal.set_wakeup_fd(self._old_wakeup)
            for fd in self._pipe:
                os.close(fd)
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        if self._old_term is not None:
            signal.signal(signal.SIGTERM, self._old_term)


def drive(target: Callable[..., Any], run_dir: Path, console: Console,
          live: bool, refresh_per_second: float = 3.0, history: bool = True) -> tuple[Any, Interrupts]:
    """Run `target(stop, kill, on_event)` in this (main) thread while a view of `run_dir` refreshes.

    `on_event` is the callback to hand to start_run/resume_run: in plain mode a
    `status` event (the loop's status.json snapshot) is turned into lines at
    once, so short batches are not missed between two polls.

    `live=True`: a rich Live view re-rendered from the files a few times a
    second. `live=False`: plain lines per event. Either way a watcher thread
    writes RUN_DIR/run.pid (this process) once the run directory exists, so
    `agent status` can tell a running run from an abandoned one; it is removed
    when `target` returns. Returns (target's result, the Interrupts with their
    stop/kill flags). Exceptions of `target` propagate after the view is closed.
    `history=False` (resume): the plain view does not replay the nodes already recorded.
    """
    from rich.live import Live

    run_dir = Path(run_dir)
    pid_path = run_dir / PID_FILE
    reporter = None if live else PlainReporter(run_dir, history=history)
    finished = threading.Event()
    lock = threading.Lock()  # the reporter is fed from the loop's thread and from the watcher

    def say(msg: str) -> None:
        console.print(f"[bold yellow]{msg}[/]" if live else msg)

    def flush_plain(status: dict | None = None) -> None:
        if reporter is not None:
            with lock:
                for line in reporter.poll(status):
                    console.print(_stamp(line), highlight=False, markup=False, soft_wrap=True)

    def on_event(event: dict) -> None:
        if isinstance(event, dict) and event.get("type") == "status" and isinstance(event.get("status"), dict):
            flush_plain(event["status"])

    def watch() -> None:
        wrote = False
        while not finished.wait(1.0 / refresh_per_second):
            if not wrote and (run_dir / "run.yaml").exists():
                try:
                    pid_path.write_text(f"{os.getpid()}\n")
                    wrote = True
                except OSError:
                    pass
            flush_plain()

    def safe_render() -> RenderableType:
        try:
            return render(run_dir, console.width)
        except Exception as e:  # the view must never take the run down
            return Text(f"(view error: {type(e).__name__}: {e})", style="red")

    watcher = threading.Thread(target=watch, name="run-view", daemon=True)
    with Interrupts(say) as intr:
        watcher.start()
        try:
            if live:
                with Live(get_renderable=safe_render, console=console, refresh_per_second=refresh_per_second,
                          redirect_stdout=True, redirect_stderr=True):
                    result = target(intr.stop, intr.kill, on_event)
            else:
                result = target(intr.stop, intr.kill, on_event)
        finally:
            finished.set()
            watcher.join(timeout=5)
            flush_plain()
            try:
                if pid_path.is_file() and pid_path.read_text().strip() == str(os.getpid()):
                    pid_path.unlink()
            except OSError:
                pass
    return result, intr


def _stamp(line: str) -> str:
    return f"[{time.strftime('%H:%M:%S')}] {line}"
