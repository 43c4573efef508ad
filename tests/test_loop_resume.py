"""Resume: a run killed with SIGKILL mid-batch loses no finished iteration and duplicates none."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from agent.run import resume_run, start_run
from rundir.store import Store
from tests.loop_helpers import toy_options

DRIVE = Path(__file__).resolve().parent / "fixtures" / "toy_regime" / "drive.py"


def _wait_for(cond, timeout=60.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie waiting for its reaper is dead too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_sigkill_mid_batch_then_resume(tmp_path):
    run_dir = tmp_path / "run"
    hold = tmp_path / "HOLD"  # variant "hold": slot 1 waits while this file exists
    hold.touch()
    proc = subprocess.Popen([sys.executable, str(DRIVE), str(run_dir), "hold", "6"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        it1 = run_dir / "iterations" / "iter_001"
        # batch 1: slot 0 finished, slot 1 held -> release it; then batch 2 gets held the same way
        assert _wait_for(lambda: (it1 / "slot_00" / "metrics.json").exists() and (it1 / "slot_01" / "starts.log").exists())
        hold.unlink()
        it2 = run_dir / "iterations" / "iter_002"
        assert _wait_for(lambda: (it1 / "slot_01" / "result.json").exists())
        hold.touch()
        assert _wait_for(lambda: (it2 / "slot_00" / "metrics.json").exists() and (it2 / "slot_01" / "starts.log").exists())
        os.kill(proc.pid, signal.SIGKILL)  # the loop dies while slot 1 of batch 2 trains
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert len(Store(run_dir / "nodes.jsonl")) == 2  # batch 1 logged, batch 2 not
    assert not (it2 / "slot_01" / "metrics.json").exists()
    # the orphaned training dies with the loop (PR_SET_PDEATHSIG through sandbox/confine.py's
    # launcher; an unconfined toy would notice on its own and write orphaned.log) and leaves no metrics
    pid = int((it2 / "slot_01" / "train.pid").read_text())
    assert _wait_for(lambda: not _alive(pid) or (it2 / "slot_01" / "orphaned.log").exists())
    assert not (it2 / "slot_01" / "metrics.json").exists()
    hold.unlink()
    resume_run(run_dir)
    nodes = Store(run_dir / "nodes.jsonl").nodes()
    assert [n.id for n in nodes] == [1, 2, 3, 4, 5, 6]  # contiguous, none duplicated
    assert sorted((n.iteration, n.slot) for n in nodes) == [(i, s) for i in (1, 2, 3) for s in (0, 1)]
    lines = (run_dir / "nodes.jsonl").read_text().splitlines()
    assert len(lines) == 6
    # the finished training of batch 2 was collected, not re-run; the killed one re-ran once
    assert len((it2 / "slot_00" / "starts.log").read_text().splitlines()) == 1
    assert len((it2 / "slot_01" / "starts.log").read_text().splitlines()) == 2
    assert json.loads((it2 / "slot_00" / "result.json").read_text())["reason"] == "collected on resume"
    entries = [l for l in (run_dir / "analysis.md").read_text().splitlines() if l.startswith("## Iter ")]
    assert [int(l.split()[2].rstrip(":")) for l in entries] == [1, 2, 3, 4, 5, 6]
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "done"


def test_stop_event_finishes_the_step_and_resume_continues(tmp_path):
    run_dir = tmp_path / "run"
    stop = threading.Event()

    def on_event(ev):
        if ev["type"] == "batch_logged" and ev["iteration"] == 1:
            stop.set()

    start_run(toy_options(run_dir, iterations=6), stop=stop, on_event=on_event)
    assert len(Store(run_dir / "nodes.jsonl")) == 2
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "stopped"
    resume_run(run_dir)
    assert [n.id for n in Store(run_dir / "nodes.jsonl").nodes()] == [1, 2, 3, 4, 5, 6]


def test_crash_is_reported_and_the_run_resumes(tmp_path):
    import pytest

    class Broken:
        def run_batch(self, specs, on_progress=None, cancel=None):
            raise RuntimeError("executor lost its workers")

        def shutdown(self):
            pass

    run_dir = tmp_path / "run"
    with pytest.raises(RuntimeError, match="lost its workers"):
        start_run(toy_options(run_dir, iterations=4), executor=Broken())
    st = json.loads((run_dir / "status.json").read_text())
    assert st["phase"] == "stopped" and "executor lost its workers" in st["message"]
    resume_run(run_dir)  # the real executor
    assert [n.id for n in Store(run_dir / "nodes.jsonl").nodes()] == [1, 2, 3, 4]
