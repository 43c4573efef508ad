"""The live view and the plain-line view render from a recorded run's files."""

import io
import json
import os
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path

import pytest

from fixtures.make_recorded_run import make_recorded_run
from rich.console import Console

from agent.fmt import fmt_value, sparkline
from agent.live import PlainReporter, drive, render
from rundir.io import tail_lines
from rundir.readers import read_progress
from agent.status_view import liveness, status_renderable

NOW = datetime(2026, 11, 22, 1, 6, 40, tzinfo=timezone.utc)  # 10 s after the fixture's last update


def _text(renderable, width=120) -> str:
    console = Console(width=width, record=True, force_terminal=False, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_recorded_run_shows_every_part(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    text = _text(render(run, 120, now=NOW))
    lines = text.splitlines()
    # header: regime, policy, block/iteration, elapsed, cost, profile and why
    assert "homeostasis" in text and "policy heuristic" in text
    assert "block 1 iter 8/12" in text and "iterations 8/16" in text
    assert "elapsed 6m40s" in text and "$0.03 / $5.00" in text
    assert "profile quick — chosen automatically (no CUDA: CPU-sized quick profile)" in text
    # one row per slot: node, parent, strategy, progress, steps/s, ETA, status
    rows = {int(ln.split()[0]): ln for ln in lines if ln.strip()[:1].isdigit() and ("running" in ln or "done" in ln
                                                                                   or "pending" in ln)}
    assert sorted(rows) == [0, 1, 2, 3]
    assert rows[0].split()[1:4] == ["9", "5", "exploit"] and "240/400" in rows[0] and "running" in rows[0]
    assert "25.0/s 6s" in rows[0]  # (400 - 240) steps at 25 steps/s
    assert "120/400" in rows[1] and "25.0/s 11s" in rows[1]
    assert "0.8100" in rows[2] and "done" in rows[2]
    assert "root" not in rows[3] and "pending" in rows[3] and "principle-test" in rows[3]
    # best so far with its key config, the UCB lines, the latest policy message
    assert "best so far node 5  score 0.9050  converged" in text
    assert "learning_rate_node_homeostasis=5E-3" in text
    assert "Node 5: UCB=2.912, parent=2" in text and "Node 2: UCB=1.852" in text
    assert "policy exploit node 5 on slots 0-1, probe the embedding lr on slot 3" in text


def test_render_is_a_pure_function_of_the_files(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    assert _text(render(run, 120, now=NOW)) == _text(render(run, 120, now=NOW))
    # a narrower console still shows every slot and the best node
    narrow = _text(render(run, 80, now=NOW), width=80)
    assert all(len(ln) <= 80 for ln in narrow.splitlines())
    assert "best so far node 5" in narrow and narrow.count("running") >= 2


def test_render_finished_run_and_missing_status(tmp_path):
    done = make_recorded_run(tmp_path / "done", state="done")
    text = _text(render(done, 120, now=NOW))
    assert "phase done" in text and "elapsed 5m40s" in text  # stops at the last update
    assert "agent report" in text
    assert text.count("done") >= 5
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "waiting for" in _text(render(empty, 120))


def test_failed_slot_shows_the_runner_reason(tmp_path):
    run = make_recorded_run(tmp_path / "run", state="done")
    recs = [json.loads(x) for x in (run / "nodes.jsonl").read_text().splitlines()]
    recs[6].update(status="timeout", reason="timeout after 3600 s", score=0.0)
    (run / "nodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    st = json.loads((run / "status.json").read_text())
    st["slots"][2]["status"] = "timeout"
    (run / "status.json").write_text(json.dumps(st))
    row = next(ln for ln in _text(render(run, 160, now=NOW), width=160).splitlines() if ln.strip().startswith("2 "))
    assert "timeout after 3600 s" in row and row.rstrip().endswith("timeout")


def test_render_survives_torn_and_malformed_files(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    with open(run / "nodes.jsonl", "a") as f:
        f.write('{"id": 99, "score": 0.99')  # a write in progress
    st = json.loads((run / "status.json").read_text())
    st["slots"][0]["node"] = "not-an-int"
    (run / "status.json").write_text(json.dumps(st))
    (run / "iterations" / "iter_003" / "slot_01" / "progress.jsonl").write_text('{"step": 5, "tot')
    text = _text(render(run, 120, now=NOW))
    assert "homeostasis" in text and "node 5" in text and "99" not in text.split("top UCB")[0].split("best")[1]


def test_progress_rate_and_eta_from_progress_jsonl(tmp_path):
    d = tmp_path / "slot"
    d.mkdir()
    (d / "progress.jsonl").write_text("".join(json.dumps({"step": s, "total": 1000, "loss": 1.0, "elapsed_s": s / 50})
                                              + "\n" for s in range(0, 501, 50)))
    p = read_progress(d)
    assert p.step == 500 and p.total == 1000
    assert abs(p.rate - 50.0) < 1e-9 and abs(p.eta_s - 10.0) < 1e-9
    assert read_progress(tmp_path / "nothing") is None


def test_small_formatters():
    assert fmt_value(0.005) == "5E-3" and fmt_value(1e-4) == "1E-4" and fmt_value(0.5) == "0.5"
    assert fmt_value(16) == "16" and fmt_value(True) == "True" and fmt_value(0.0) == "0"
    assert sparkline([0, 0.5, 1]) == "▁▅█" and sparkline([]) == ""


def test_tail_lines_reads_only_the_end(tmp_path):
    f = tmp_path / "log"
    f.write_text("".join(f"line {i}\n" for i in range(5000)))
    assert tail_lines(f, 2, max_bytes=200) == ["line 4998", "line 4999"]


def test_plain_lines_one_per_event(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    rep = PlainReporter(run)
    first = rep.poll()
    finished = [ln for ln in first if " finished: node " in ln]
    assert len(finished) == 8
    assert ("slot 0 finished: node 5 (parent 2, exploit: learning_rate_node_homeostasis: 3E-3 -> 5E-3) "
            "score 0.9050 converged") in first
    assert [ln for ln in first if ln.startswith("batch start")] == [
        "batch start (block 1, 8/16 iterations done): slot 0 node 9 exploit, slot 1 node 10 exploit, "
        "slot 3 node 12 principle-test"]
    assert rep.poll() == []  # nothing changed: nothing printed
    # the batch finishes, a fallback happens, the block ends, the run is done
    rec = json.loads((run / "nodes.jsonl").read_text().splitlines()[4])
    rec.update(id=9, parent=5, score=0.95, classification="converged")
    with open(run / "nodes.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    st = json.loads((run / "status.json").read_text())
    st.update(fallback=True, message="claude timed out")
    (run / "status.json").write_text(json.dumps(st))
    lines = rep.poll()
    assert any("node 9" in ln and "0.9500" in ln for ln in lines)
    assert "fallback 1: heuristic answered this step (claude timed out)" in lines
    st.update(block=2, phase="done", fallback=False)
    (run / "status.json").write_text(json.dumps(st))
    lines = rep.poll()
    assert any(ln.startswith("block 1 ended: best node 9 score 0.9500") for ln in lines)
    assert any(ln.startswith("run done:") for ln in lines)
    assert rep.poll() == []


def test_drive_plain_prints_lines_and_ctrl_c_sets_stop_then_kill(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=120)
    seen = {}

    def target(stop: threading.Event, kill: threading.Event, on_event):
        pid_file = run / "run.pid"
        for _ in range(500):  # the watcher marks the run as owned by this process
            if pid_file.is_file():
                break
            threading.Event().wait(0.01)
        seen["pid"] = pid_file.read_text().strip()
        os.kill(os.getpid(), signal.SIGINT)  # the user's first Ctrl-C
        assert stop.wait(5)
        seen["kill_after_one"] = kill.is_set()
        os.kill(os.getpid(), signal.SIGINT)  # the second one
        assert kill.wait(5)
        return run

    before = signal.getsignal(signal.SIGINT)
    result, intr = drive(target, run, console, live=False, refresh_per_second=20)
    assert result == run and intr.stop.is_set() and intr.kill.is_set() and seen["kill_after_one"] is False
    assert seen["pid"] == str(os.getpid()) and not (run / "run.pid").exists()
    assert signal.getsignal(signal.SIGINT) is before  # the handler is restored
    text = out.getvalue()
    assert "stopping after the current step" in text and "ending the running trainings" in text
    assert text.count(" finished: node ") == 8  # each event printed once


def test_drive_live_renders_the_view(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120, color_system=None)

    def target(stop, kill, on_event):
        return "ok"

    result, intr = drive(target, run, console, live=True)
    assert result == "ok" and not intr.stop.is_set()
    text = out.getvalue()
    assert "homeostasis" in text and "Node 5: UCB=2.912" in text


def test_status_screen(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    text = _text(status_renderable(run, 120, now=NOW))
    assert "state running (status updated 10s ago)" in text
    assert "best nodes (of 8)" in text and "converged 1" in text and "explore 4" in text
    assert "LLM 2 calls, $0.0250" in text and "last messages" in text
    later = datetime(2026, 11, 22, 3, 0, 0, tzinfo=timezone.utc)
    alive, why = liveness(run, None, later)
    assert not alive and "no status.json" in why
    text = _text(status_renderable(run, 120, now=later))
    assert "not running: last update 1h53m ago" in text and "agent resume" in text
    (run / "run.pid").write_text(str(os.getpid()))
    assert liveness(run, None, later)[0] is True
    # a long step (e.g. homeostasis phase 1) leaves status.json old, but the owner is alive: the clock runs on
    assert "elapsed 2h00m" in _text(render(run, 120, now=later))
    done = make_recorded_run(tmp_path / "done", state="done")
    assert "finished (done)" in _text(status_renderable(done, 120, now=later))


def test_read_nodes_is_incremental_and_notices_a_rewrite(tmp_path):
    from rundir.store import read_nodes

    run = make_recorded_run(tmp_path / "run")
    assert [n["id"] for n in read_nodes(run)] == list(range(1, 9))
    with open(run / "nodes.jsonl", "a") as f:
        f.write(json.dumps({"id": 9, "score": 0.5}) + "\n" + '{"id": 10, "sco')  # 10 is half-written
    assert [n["id"] for n in read_nodes(run)][-1] == 9
    with open(run / "nodes.jsonl", "a") as f:
        f.write('re": 0.6}\n')
    assert [n["id"] for n in read_nodes(run)][-2:] == [9, 10]
    (run / "nodes.jsonl").write_text(json.dumps({"id": 1, "score": 0.1}) + "\n")  # rewritten, shorter
    assert read_nodes(run) == [{"id": 1, "score": 0.1}]


def test_plain_resume_summarises_history(tmp_path):
    run = make_recorded_run(tmp_path / "run")
    lines = PlainReporter(run, history=False).poll()
    assert lines[0] == "resuming after 8 finished nodes; best node 5 score 0.9050"
    assert not any(" finished: node " in ln for ln in lines)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the signal mask from /proc")
def test_children_started_during_a_run_do_not_see_terminal_ctrl_c(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: helpers (git, phase-1 training) must not die of it."""
    import subprocess

    run = make_recorded_run(tmp_path / "run")
    console = Console(file=io.StringIO(), force_terminal=False)

    def target(stop, kill, on_event):
        status = subprocess.run(["grep", "SigBlk", "/proc/self/status"], capture_output=True, text=True).stdout
        return int(status.split()[1], 16)

    blocked, intr = drive(target, run, console, live=False)
    assert blocked & (1 << (signal.SIGINT - 1))
    assert not signal.pthread_sigmask(signal.SIG_BLOCK, set()) & {signal.SIGINT}  # restored afterwards


def test_prepare_step_shows_its_training_progress(tmp_path):
    """During prepare (homeostasis phase 1 trains for minutes) the view shows that training's progress."""
    run = make_recorded_run(tmp_path / "run")
    st = json.loads((run / "status.json").read_text())
    st.update(phase="prepare", iterations_done=0)
    (run / "status.json").write_text(json.dumps(st))
    prep = run / "prepare" / "phase1"
    prep.mkdir(parents=True)
    (prep / "progress.jsonl").write_text("".join(
        json.dumps({"step": s, "total": 1000, "loss": 1.0, "elapsed_s": s / 50}) + "\n" for s in (100, 200, 300)))
    text = _text(render(run, 120, now=NOW))
    row = next(ln for ln in text.splitlines() if "phase1 training" in ln)
    assert "300/1000" in row and "50.0/s" in row
    st["phase"] = "run_slots"  # once the batch runs, the prepare row is gone
    (run / "status.json").write_text(json.dumps(st))
    assert "phase1 training" not in _text(render(run, 120, now=NOW))


def test_ctrl_c_landing_on_a_thread_started_before_the_run_is_seen_at_once(tmp_path):
    """A SIGINT the kernel hands to an older thread (e.g. torch's pool, which does not block it)
    must still stop the run promptly while the main thread waits for a batch."""
    run = make_recorded_run(tmp_path / "run")
    done = threading.Event()
    older = threading.Thread(target=done.wait, name="older", daemon=True)
    older.start()  # started before drive(): SIGINT is not blocked in it
    seen = {}

    def target(stop, kill, on_event):
        signal.pthread_kill(older.ident, signal.SIGINT)
        seen["stopped"] = stop.wait(3)  # the main thread is blocked here, as during a batch
        return run

    try:
        drive(target, run, Console(file=io.StringIO(), force_terminal=False), live=False, refresh_per_second=20)
    finally:
        done.set()
    assert seen["stopped"] is True
