"""Issue 19: one driver per run directory, atomic creation, limits reaching RunSpec, torn store lines,
the log step's crash windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from agent.driver import LOCK_FILE, DriverLock, RunLocked, lock_held
from agent.run import RunError, resume_run, start_run
from rundir.store import Store
from tests._killwalk import FakeExecutor
from tests.loop_helpers import TOY_PLUGINS, toy_options

ROOT = Path(__file__).resolve().parents[1]


class Recording(FakeExecutor):
    """The kill-walk's in-process executor, keeping every RunSpec it was given."""

    def __init__(self, on_batch=None):
        super().__init__(None)
        self.specs = []
        self.on_batch = on_batch

    def run_batch(self, specs, on_progress=None, cancel=None):
        self.specs += specs
        if self.on_batch is not None:
            self.on_batch(specs)
        return super().run_batch(specs, on_progress, cancel)


# ----------------------------------------------------------------------------- one driver

def test_second_driver_is_refused_while_the_first_runs(tmp_path):
    run_dir = tmp_path / "run"
    errors: list[BaseException] = []

    def second(_specs):
        if errors:
            return
        try:
            resume_run(run_dir, executor=FakeExecutor(None))
        except BaseException as e:  # noqa: BLE001 — what the second driver got
            errors.append(e)

    start_run(toy_options(run_dir, iterations=2), executor=Recording(on_batch=second))
    assert len(errors) == 1 and isinstance(errors[0], RunLocked)
    assert errors[0].pid == os.getpid() and f"pid {os.getpid()}" in str(errors[0])
    assert "\n" not in str(errors[0])
    # the first driver was not disturbed, and the lock went with it
    assert [n.id for n in Store(run_dir / "nodes.jsonl").nodes()] == [1, 2]
    assert lock_held(run_dir) is None


def test_lock_is_released_by_the_kernel_when_the_holder_dies(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    code = f"import sys, time; sys.path.insert(0, {str(ROOT)!r}); from agent.driver import DriverLock; " \
           f"DriverLock({str(d)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        assert lock_held(d) == p.pid
        with pytest.raises(RunLocked, match=f"pid {p.pid}"):
            DriverLock(d).acquire()
        p.kill()
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert lock_held(d) is None
    with DriverLock(d):  # free again, without anyone cleaning up
        assert (d / LOCK_FILE).read_text().strip() == str(os.getpid())


def test_cli_resume_of_a_driven_run_exits_2_naming_the_holder(tmp_path):
    run_dir = tmp_path / "run"
    start_run(toy_options(run_dir, iterations=2), executor=FakeExecutor(None))
    with DriverLock(run_dir):
        out = subprocess.run([sys.executable, "-m", "agent", "resume", str(run_dir), "--no-live"], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    err = out.stderr.strip().splitlines()
    assert err[0] == f"error: run {run_dir} is already driven by pid {os.getpid()}"
    assert err[1].startswith("hint:") and len(err) == 2


def test_two_concurrent_resumes_one_drives_the_other_gets_exit_2(tmp_path):
    """`agent resume D & agent resume D`: both pass the liveness check; the lock lets only one drive."""
    run_dir = tmp_path / "run"
    start_run(toy_options(run_dir, iterations=2), executor=FakeExecutor(None))
    cmd = [sys.executable, "-m", "agent", "resume", str(run_dir), "--no-live", "--iterations", "6"]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)][1]
    assert "is already driven by" in loser
    lines = (run_dir / "nodes.jsonl").read_text().splitlines()
    assert [json.loads(ln)["id"] for ln in lines] == [1, 2, 3, 4, 5, 6]
    mem = (run_dir / "memory.md").read_text()
    assert all(mem.count(f"- Iter {i} (") <= 1 for i in range(1, 7))


# ----------------------------------------------------------------------------- creation

def test_a_killed_creation_leaves_no_run_directory_and_run_starts_again(tmp_path):
    """Creation is atomic: a creator killed halfway leaves only a hidden, unlocked sibling,
    which the next `agent run` removes (no 'no root tag' directory that neither command accepts)."""
    run_dir = tmp_path / "runs" / "r"
    stale = tmp_path / "runs" / ".creating-r.99999"
    (stale / "workspace").mkdir(parents=True)
    (stale / "run.yaml").write_text("regime: toy\n")
    with pytest.raises(RunError, match="not a run directory"):
        resume_run(run_dir)
    start_run(toy_options(run_dir, iterations=2), executor=FakeExecutor(None))
    assert not stale.exists()
    assert json.loads((run_dir / "status.json").read_text())["phase"] == "done"


def test_a_creation_in_progress_is_not_swept(tmp_path):
    runs = tmp_path / "runs"
    busy = runs / ".creating-other.1"
    busy.mkdir(parents=True)
    with DriverLock(busy):
        start_run(toy_options(runs / "r", iterations=2), executor=FakeExecutor(None))
        assert busy.is_dir()


def test_run_dir_that_is_not_empty_is_refused_and_untouched(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(RunError, match="not empty"):
        start_run(toy_options(d, iterations=2), executor=FakeExecutor(None))
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    assert not list(tmp_path.glob(".creating-*"))


# ----------------------------------------------------------------------------- limits

def test_regime_limits_reach_runspec_and_run_yaml(tmp_path):
    ex = Recording()
    start_run(toy_options(tmp_path / "a", iterations=2, device="cpu"), executor=ex)
    assert {s.timeout_s for s in ex.specs} == {3600.0} and {s.memory_limit_mb for s in ex.specs} == {None}
    ex = Recording()
    start_run(toy_options(tmp_path / "b", iterations=2, device="cpu", timeout_min=2.5, memory_limit_mb=3000),
              executor=ex)
    assert {s.timeout_s for s in ex.specs} == {150.0} and {s.memory_limit_mb for s in ex.specs} == {3000}
    assert all(s.extra_env == {"GNN_AGENT_RUN": str((tmp_path / "b").resolve())} for s in ex.specs)
    info = (tmp_path / "b" / "run.yaml").read_text()
    assert "timeout_min: 2.5" in info and "memory_limit_mb: 3000" in info
    from rich.console import Console

    from agent.live import render

    con = Console(record=True, width=200)
    con.print(render(tmp_path / "b", 200))
    assert "limits 2.5 min/training, 3000 MB" in con.export_text()  # the live view's header
    # resume keeps the run's limits
    ex = Recording()
    resume_run(tmp_path / "b", iterations=4, executor=ex)
    assert {s.timeout_s for s in ex.specs} == {150.0} and {s.memory_limit_mb for s in ex.specs} == {3000}


def test_regime_declares_limits_per_profile(tmp_path):
    from regimes.base import TrainingLimits
    from tests.fixtures.toy_regime.toy_def import make

    r = make("toy", limits={"quick": TrainingLimits(timeout_min=5, memory_limit_mb=2048)})
    assert r.training_limits("quick") == TrainingLimits(timeout_min=5, memory_limit_mb=2048)
    assert r.training_limits("full").timeout_min == 720.0
    from agent.run import resolve_limits

    got = resolve_limits(r, "quick", "cpu")
    assert (got["timeout_min"], got["memory_limit_mb"]) == (5, 2048)
    got = resolve_limits(r, "quick", "cuda")  # an address-space limit cannot apply on a GPU
    assert got["memory_limit_mb"] is None and "cpu only" in got["limits_reason"]
    with pytest.raises(RunError, match="cannot apply on cuda"):
        resolve_limits(r, "quick", "cuda", memory_limit_mb=1000)


def test_cli_header_shows_the_limits_and_bad_values_are_usage_errors(tmp_path):
    base = [sys.executable, "-m", "agent", "run", "--regime", "toy", "--regime-path", str(TOY_PLUGINS),
            "--slots", "1", "--iterations", "1", "--policy", "heuristic", "--no-live", "--device", "cpu"]
    out = subprocess.run(base + ["--run-dir", str(tmp_path / "r"), "--timeout-min", "3", "--memory-limit-mb", "4096"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "training limits: 3 min wall clock per training, memory 4096 MB " \
           "(timeout: --timeout-min; memory: --memory-limit-mb)" in out.stdout
    bad = subprocess.run(base + ["--run-dir", str(tmp_path / "s"), "--timeout-min", "0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--timeout-min" in bad.stderr and not (tmp_path / "s").exists()


# ----------------------------------------------------------------------------- store and log step

def test_torn_last_line_is_moved_aside_on_resume(tmp_path, caplog):
    run_dir = tmp_path / "run"
    start_run(toy_options(run_dir, iterations=2), executor=FakeExecutor(None))
    with open(run_dir / "nodes.jsonl", "ab") as f:
        f.write(b'{"id": 3, "parent": 1, "blo')
    resume_run(run_dir, iterations=4, executor=FakeExecutor(None))
    lines = (run_dir / "nodes.jsonl").read_text().splitlines()
    assert [json.loads(ln)["id"] for ln in lines] == [1, 2, 3, 4]
    assert (run_dir / "nodes.jsonl.torn").read_text() == '{"id": 3, "parent": 1, "blo\n'
    assert "moved an unreadable line" in (run_dir / "reasoning.log").read_text()
    caplog.clear()
    Store(run_dir / "nodes.jsonl")
    assert not [r for r in caplog.records if "torn" in r.getMessage()]  # not warned about forever


def test_log_step_rerun_completes_memory_after_a_kill_between_appends(tmp_path):
    """Issue 19 item 7: a kill after the first Store.append lost node 1's memory line; a kill after
    the policy's update_memory duplicated its line. The re-run of the step now repairs both."""
    run_dir = tmp_path / "run"
    start_run(toy_options(run_dir, iterations=2), executor=FakeExecutor(None))
    mem_done = (run_dir / "memory.md").read_text()
    # simulate the state right after node 1's append: node 2 missing, memory from before the step
    lines = (run_dir / "nodes.jsonl").read_text().splitlines()
    (run_dir / "nodes.jsonl").write_text(lines[0] + "\n")
    snap = json.loads((run_dir / "step_snapshot.json").read_text())
    assert snap["key"] == "log:1:1"
    before_log = snap["files"]["memory.md"].replace("- Iter 1 (", "- ITER-GONE (")
    before_log = "\n".join(ln for ln in before_log.splitlines() if "ITER-GONE" not in ln
                           and "- Iter 2 (" not in ln) + "\n"
    (run_dir / "memory.md").write_text(before_log)
    (run_dir / "step_snapshot.json").unlink()  # killed before the policy part: no snapshot yet
    # rewind the checkpoint to before the log step: resume re-runs it
    _rewind_to(run_dir, "log")
    resume_run(run_dir, executor=FakeExecutor(None))
    mem = (run_dir / "memory.md").read_text()
    assert mem.count("- Iter 1 (") == 1 and mem.count("- Iter 2 (") == 1
    assert mem == mem_done
    assert [json.loads(ln)["id"] for ln in (run_dir / "nodes.jsonl").read_text().splitlines()] == [1, 2]


def _rewind_to(run_dir: Path, step: str) -> None:
    """Drop the run's LangGraph checkpoints after the one whose next step is `step` (as if killed in it)."""
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    from agent.graph import build_graph
    from tests.loop_helpers import open_ctx

    ctx = open_ctx(run_dir)
    conn = sqlite3.connect(str(run_dir / "state.sqlite"), check_same_thread=False)
    try:
        graph = build_graph().compile(checkpointer=SqliteSaver(conn))
        cfg = {"configurable": {"thread_id": ctx.info.run_id}}
        target = next(s for s in graph.get_state_history(cfg) if s.next == (step,))
        cid = target.config["configurable"]["checkpoint_id"]
        # ids are time-ordered; the step's own results are pending writes of `cid`
        conn.execute("DELETE FROM checkpoints WHERE thread_id = ? AND checkpoint_id > ?", (ctx.info.run_id, cid))
        conn.execute("DELETE FROM writes WHERE thread_id = ? AND checkpoint_id >= ?", (ctx.info.run_id, cid))
        conn.commit()
        assert graph.get_state(cfg).next == (step,)
    finally:
        conn.close()


def test_policy_step_rerun_restores_its_files_first(tmp_path):
    """A step killed after its tool calls is re-run from the files before its first attempt."""
    run_dir = tmp_path / "run"
    start_run(toy_options(run_dir, iterations=2), executor=FakeExecutor(None))
    mem_done = (run_dir / "memory.md").read_text()
    # the killed attempt's effect: an update_memory append the re-run must not repeat
    (run_dir / "memory.md").write_text(mem_done.replace("## Current Block", "DUPLICATE\n\n## Current Block"))
    _rewind_to(run_dir, "log")
    resume_run(run_dir, executor=FakeExecutor(None))
    assert (run_dir / "memory.md").read_text() == mem_done


def test_a_kill_between_launch_record_and_node_tag_leaves_no_node_untagged(tmp_path, monkeypatch):
    """Found by the kill walk: killed after launch.json but before the `node-N` tag, a resumed run
    never tagged node N (the tag was made only with a new launch.json)."""
    from sandbox.workspace import Workspace

    run_dir = tmp_path / "run"
    real = Workspace.tag_node

    def dying(self, node_id, commit):
        if node_id == 3:
            raise KeyboardInterrupt  # the kill, right at the tag of node 3
        return real(self, node_id, commit)

    monkeypatch.setattr(Workspace, "tag_node", dying)
    with pytest.raises(KeyboardInterrupt):
        start_run(toy_options(run_dir, iterations=4), executor=FakeExecutor(None))
    monkeypatch.setattr(Workspace, "tag_node", real)
    assert (run_dir / "iterations" / "iter_002" / "slot_00" / "launch.json").exists()
    resume_run(run_dir, executor=FakeExecutor(None))
    ws = Workspace.open(run_dir / "workspace")
    assert all(ws.node_commit(i) for i in range(1, 5))


def test_a_kill_between_a_steps_saved_results_and_its_checkpoint_resumes_that_step(tmp_path, monkeypatch):
    """Found by the kill walk: killed after LangGraph saved a step's writes (put_writes) but before the
    next checkpoint (put), the snapshot's `next` was empty and resume took the run for finished:
    it went on from mutate, and batch 1 was never logged."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    run_dir = tmp_path / "run"
    real_put, real_writes = SqliteSaver.put, SqliteSaver.put_writes
    armed = []

    def put_writes(self, config, writes, *a, **kw):
        if ("phase", "select_parent") in [tuple(w) for w in writes]:
            armed.append(True)  # the analyse step's results are saved ...
        return real_writes(self, config, writes, *a, **kw)

    def put(self, *a, **kw):
        if armed:
            raise KeyboardInterrupt  # ... and the kill comes before the checkpoint after it
        return real_put(self, *a, **kw)

    monkeypatch.setattr(SqliteSaver, "put_writes", put_writes)
    monkeypatch.setattr(SqliteSaver, "put", put)
    with pytest.raises(KeyboardInterrupt):
        start_run(toy_options(run_dir, iterations=4), executor=FakeExecutor(None))
    monkeypatch.setattr(SqliteSaver, "put_writes", real_writes)
    monkeypatch.setattr(SqliteSaver, "put", real_put)
    assert len(Store(run_dir / "nodes.jsonl")) == 0
    resume_run(run_dir, executor=FakeExecutor(None))
    nodes = Store(run_dir / "nodes.jsonl").nodes()
    assert [(n.id, n.iteration) for n in nodes] == [(1, 1), (2, 1), (3, 2), (4, 2)]
