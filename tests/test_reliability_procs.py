"""Issue 19: `agent resume` ends the trainings a dead driver left running (setsid children too),
and SIGTERM stops a run like Ctrl-C twice: status stopped, resumable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agent.driver import RUN_ENV, end_trainings, find_trainings
from agent.driver import pid_alive as _alive
from agent.run import resume_run
from rundir.store import Store
from tests._killwalk import FakeExecutor

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "fixtures" / "toy_regime"

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")

#: a training that, started while HOLD exists, forks a setsid child and ignores its parent's death;
#: pids are the host's (/proc/self: the runner starts trainings in their own PID namespace)
STUB_TRAIN = '''
import argparse, json, os, subprocess, sys, time
from pathlib import Path
ap = argparse.ArgumentParser()
ap.add_argument("--config"); ap.add_argument("--out"); ap.add_argument("--device", default="cpu")
a, _ = ap.parse_known_args()
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
me = os.readlink("/proc/self")
with open(out / "starts.log", "a") as f:
    f.write(f"{me}\\n")
if Path(HOLD).exists():
    code = "import os, sys, time; open(sys.argv[1], 'w').write(os.readlink('/proc/self')); time.sleep(300)"
    subprocess.Popen([sys.executable, "-c", code, str(out / "child.pid")], start_new_session=True)
    while not (out / "child.pid").exists() or not (out / "child.pid").read_text():
        time.sleep(0.01)
    (out / "pids.txt").write_text(f"{me} {(out / 'child.pid').read_text()}\\n")
    time.sleep(300)  # stubborn: neither HOLD nor a dead parent stops it
(out / "predictions.pt").write_text(json.dumps({"fit_R2": 0.5, "test_pearson": 0.6, "test_R2": 0.4,
                                                "final_loss": 0.5}))
'''
STUB_STAGE = "def stage(config_path, dest_dir):\n    pass\n"
STUB_EVAL = '''
import argparse
from pathlib import Path
ap = argparse.ArgumentParser()
ap.add_argument("--config"); ap.add_argument("--inputs"); ap.add_argument("--out")
a = ap.parse_args()
if __name__ == "__main__":
    (Path(a.out) / "metrics.json").write_text((Path(a.out) / "predictions.pt").read_text())
'''


def _stub_regime(tmp: Path, hold: Path) -> Path:
    pkg = tmp / "stubfit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    # the runner passes only its environment allow-list: the HOLD path is written into the code
    (pkg / "train.py").write_text(f"HOLD = {str(hold)!r}\n" + STUB_TRAIN)
    (pkg / "data.py").write_text(STUB_STAGE)
    (pkg / "evaluate.py").write_text(STUB_EVAL)
    plugins = tmp / "plugins"
    plugins.mkdir()
    (plugins / "stub.py").write_text(textwrap.dedent(f'''
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(TOY)!r})
        from toy_def import make
        REGIME = make("stub", package="stubfit", package_dir=Path({str(pkg)!r}), train_entry="stubfit.train",
                      editable=[], code_strategies=[])
        '''))
    return plugins


def _wait_for(cond, timeout=60.0) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if cond():
            return True
        time.sleep(0.05)
    return False


def test_a_dead_drivers_training_and_its_setsid_child_do_not_outlive_it(tmp_path):
    run_dir, hold = tmp_path / "run", tmp_path / "HOLD"
    plugins = _stub_regime(tmp_path, hold)
    hold.touch()
    script = tmp_path / "drive.py"
    script.write_text(textwrap.dedent(f'''
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from pathlib import Path
        from agent.run import RunOptions, start_run
        start_run(RunOptions(regime="stub", regime_path=[Path({str(plugins)!r})], slots=1, iterations=2,
                             policy="heuristic", run_dir=Path({str(run_dir)!r}), device="cpu"))
        '''))
    drv = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
    pids_file = run_dir / "iterations" / "iter_001" / "slot_00" / "pids.txt"
    try:
        assert _wait_for(pids_file.exists), drv.stderr.read().decode() if drv.poll() is not None else "no pids"
        train_pid, child_pid = map(int, pids_file.read_text().split())
        os.kill(drv.pid, signal.SIGKILL)
        drv.wait(timeout=30)
        # the runner's launcher dies with the driver (PR_SET_PDEATHSIG) and takes the training's PID
        # namespace with it: no orphan is left, setsid or not
        assert _wait_for(lambda: not _alive(train_pid) and not _alive(child_pid), timeout=10), \
            "the training or its setsid child outlived the driver"
        assert find_trainings(run_dir) == []
        hold.unlink()
        resume_run(run_dir)  # the real local executor
    finally:
        if drv.poll() is None:
            drv.kill()
        for p in locals().get("train_pid", None), locals().get("child_pid", None):
            if p and _alive(p):
                os.kill(p, signal.SIGKILL)
    assert not _alive(train_pid) and not _alive(child_pid)
    starts = (run_dir / "iterations" / "iter_001" / "slot_00" / "starts.log").read_text().split()
    assert len(starts) == 2 and int(starts[0]) == train_pid  # re-run once, after the orphan was gone
    assert [n.id for n in Store(run_dir / "nodes.jsonl").nodes()] == [1, 2]
    assert find_trainings(run_dir) == []


def test_only_processes_tagged_with_this_run_are_ended(tmp_path):
    run_dir = tmp_path / "run"
    other = tmp_path / "other"
    run_dir.mkdir()
    other.mkdir()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    mine = subprocess.Popen(sleeper, env={**os.environ, RUN_ENV: str(run_dir)}, start_new_session=True)
    theirs = subprocess.Popen(sleeper, env={**os.environ, RUN_ENV: str(other)})
    shell = subprocess.Popen(sleeper, cwd=run_dir)  # e.g. a user's shell inside the run directory
    try:
        assert _wait_for(lambda: find_trainings(run_dir) == [mine.pid], 10)
        notes: list[str] = []
        assert end_trainings(run_dir, grace_s=2, log=notes.append) == [mine.pid]
        mine.wait(timeout=10)
        assert mine.returncode == -signal.SIGTERM
        assert theirs.poll() is None and shell.poll() is None
        assert notes and str(mine.pid) in notes[0]
    finally:
        for p in (mine, theirs, shell):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_a_training_that_ignores_sigterm_is_killed(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(120)"
    p = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, RUN_ENV: str(run_dir)},
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        assert end_trainings(run_dir, grace_s=0.5) == [p.pid]
        p.wait(timeout=10)
        assert p.returncode == -signal.SIGKILL and time.monotonic() - t0 < 5
    finally:
        if p.poll() is None:
            p.kill()


def test_sigterm_stops_the_run_like_ctrl_c_and_it_resumes(tmp_path):
    run_dir, hold = tmp_path / "run", tmp_path / "HOLD"
    plugins = _stub_regime(tmp_path, hold)
    hold.touch()
    cmd = [sys.executable, "-m", "agent", "run", "--regime", "stub", "--regime-path", str(plugins), "--slots", "1",
           "--iterations", "2", "--policy", "heuristic", "--no-live", "--device", "cpu", "--run-dir", str(run_dir)]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids_file = run_dir / "iterations" / "iter_001" / "slot_00" / "pids.txt"
    child_pid = None
    try:
        assert _wait_for(pids_file.exists, 120), p.stderr.read() if p.poll() is not None else "no training"
        train_pid, child_pid = map(int, pids_file.read_text().split())
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert took < 20  # the training is ended, not waited for
    assert "stopped. resume with: agent resume" in out
    st = json.loads((run_dir / "status.json").read_text())
    assert st["phase"] == "stopped"
    assert not _alive(train_pid)  # the runner ended its process group
    hold.unlink()
    resume_run(run_dir, executor=FakeExecutor(None))  # ends the setsid child the group kill missed
    assert child_pid is not None and not _alive(child_pid)
    assert [n.id for n in Store(run_dir / "nodes.jsonl").nodes()] == [1, 2]
