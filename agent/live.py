"""The live terminal view of a run, rendered from the run directory's files.

Everything shown is read from files the loop writes (status.json, nodes.jsonl,
ucb_scores.txt, llm_calls.jsonl, reasoning.log and each running slot's
progress.jsonl), so `render(run_dir, width)` is a pure function of the run
directory: the same files give the same picture, whether the run is live,
finished, or a recorded fixture. The readers are `rundir.readers` / `rundir.store`,
the formatting `agent.fmt`, Ctrl-C handling `agent.interrupts`; this module renders.

Without a TTY (or with --no-live) `PlainReporter` turns file changes into one
plain log line per event: batch start, slot finished, block end, fallback, done.
`drive` runs a run under the view and the interrupt handler.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError
from rich import box
from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agent.fmt import (best_node, best_so_far, confinement_note, fmt_duration, fmt_rate, fmt_score, key_config,
                       phase1_note, policy_steps_line, profile_note, sparkline, varied_keys)
from agent.interrupts import Interrupts
from rundir.io import llm_cost, tail_lines
from rundir.paths import PID_FILE
from rundir.readers import Progress, parse_time, read_progress, read_run_yaml, read_status, read_ucb, slot_out_dir
from rundir.records import Mutation, RunStatus
from rundir.store import read_nodes

STATUS_STYLE = {"pending": "dim", "running": "bold cyan", "done": "green", "ok": "green",
                "failed": "bold red", "timeout": "bold magenta", "killed": "red"}
CLASS_STYLE = {"converged": "bold green", "partial": "yellow", "failed": "red"}
SPARK = "▁▂▃▄▅▆▇█"
#: a status.json older than this (seconds) belongs to a run that is not running any more
STALE_AFTER_S = 120.0


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
                         f"{n.get('strategy') or '-'}: {Mutation.of(n.get('mutation')).line() or '-'}) score {fmt_score(n.get('score'))}"
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
