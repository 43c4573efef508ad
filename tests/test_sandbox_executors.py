"""Executors: two slots on different commits run at once, each its own code; Ray gives the same records."""

import json
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from regimes.base import MetricSpec, Regime
from sandbox.executors import LocalExecutor, make_executor, pack_dir, unpack_dir
from sandbox.runner import RunSpec, regime_entries
from sandbox.workspace import Workspace, edit_message

FIXTURE = Path(__file__).parent / "fixtures" / "sandbox" / "fakesci"
TRAIN = "fakesci/train.py"


def _regime() -> Regime:
    return Regime(name="fake", title="Fake", description="d", package="fakesci", package_dir=FIXTURE,
                  train_entry="fakesci.train", mutable=[], metrics=[MetricSpec(name="value")],
                  primary_metric="value", instructions=Path("fake.md"),
                  editable=[{"path": TRAIN, "regions": ["body"]}])


def two_slot_job(base: Path, sleep: float = 1.5) -> list[RunSpec]:
    """Slot 0 trains the root code (value 1), slot 1 an edit computing 3x (value 3)."""
    regime = _regime()
    ws = Workspace.create(base / "workspace", regime)
    old = ws.read("root", TRAIN)
    edited, errors = ws.checked_edit(regime, ws.root_commit, TRAIN, old.replace("y = x * VALUE", "y = 3 * x * VALUE"),
                                     edit_message(1, 1, "triple", "scale"))
    assert errors == []
    specs = []
    for slot, commit in enumerate([ws.root_commit, edited]):
        d = base / "iter_001" / f"slot_{slot:02d}"
        code = ws.checkout(commit, d / "code")
        d.mkdir(parents=True, exist_ok=True)
        (d / "config.yaml").write_text(json.dumps({"steps": 5, "sleep": sleep}))
        specs.append(RunSpec(slot=slot, node_id=10 + slot, config_path=d / "config.yaml", out_dir=d / "out",
                             code_dir=code, train_entry=regime.train_entry, **regime_entries(regime),
                             timeout_s=60))
    return specs


def _times(res):
    t = json.loads((res.out_dir / "times.json").read_text())
    return t["start"], t["end"]


def test_two_slots_on_different_commits_run_at_once(tmp_path):
    specs = two_slot_job(tmp_path)
    ex = LocalExecutor(slots=2, max_parallel=2)
    assert ex.parallel == 2 and ex.threads_per_slot >= 1
    seen = []
    lock = threading.Lock()

    def on_progress(slot, rec):
        with lock:
            seen.append(slot)

    try:
        results = ex.run_batch(specs, on_progress=on_progress)
    finally:
        ex.shutdown()
    assert [r.slot for r in results] == [0, 1] and [r.node_id for r in results] == [10, 11]
    assert [r.status for r in results] == ["ok", "ok"], [r.reason for r in results]
    assert [r.metrics["value"] for r in results] == [1.0, 3.0]  # each ran its own commit's code
    (s0, e0), (s1, e1) = _times(results[0]), _times(results[1])
    assert s0 < e1 and s1 < e0, "the two runs did not overlap"
    assert set(seen) == {0, 1}


def test_local_executor_failures_and_cancel(tmp_path):
    specs = two_slot_job(tmp_path, sleep=0)
    bad = specs[1].model_copy(update={"config_path": tmp_path / "missing.yaml"})
    ex = make_executor("local", slots=2)
    results = ex.run_batch([specs[0], bad])
    assert results[0].status == "ok"
    assert results[1].status == "failed" and "runner error" in results[1].reason and "missing.yaml" in results[1].reason
    cancel = threading.Event()
    cancel.set()
    assert [r.status for r in ex.run_batch(specs, cancel=cancel)] == ["killed", "killed"]
    ex.shutdown()
    with pytest.raises(ValueError, match="unknown executor"):
        make_executor("slurm", slots=2)


def test_pack_roundtrip_skips_git_link(tmp_path):
    src = tmp_path / "src"
    (src / "a" / "__pycache__").mkdir(parents=True)
    (src / "a" / "x.py").write_text("x = 1")
    (src / "a" / "__pycache__" / "x.pyc").write_bytes(b"c")
    (src / ".git").write_text("gitdir: /elsewhere")
    unpack_dir(pack_dir(src), tmp_path / "dst")
    assert sorted(p.relative_to(tmp_path / "dst").as_posix() for p in (tmp_path / "dst").rglob("*")) == ["a", "a/x.py"]


def test_ray_missing_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(RuntimeError, match=r"pip install 'gnn-agent\[ray\]'"):
        make_executor("ray", slots=2)


@pytest.fixture(scope="module")
def ray_instance():
    """A local Ray whose raylet and workers inherit SIGINT ignored, as under `nohup agent run ... &` (a
    background job of a non-interactive shell): the cancel tests below must pass there too (they failed
    with 'timeout' when Ray's interrupt could not reach the task)."""
    ray = pytest.importorskip("ray")
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    finally:
        signal.signal(signal.SIGINT, old)
    yield ray
    ray.shutdown()


def test_restore_sigint_lets_rays_interrupt_through():
    """Ray's gentle cancel is _thread.interrupt_main(): a no-op while SIGINT is ignored; restore_sigint
    (called by the Ray task) makes it raise KeyboardInterrupt again."""
    code = textwrap.dedent("""
        import _thread, signal, time
        from sandbox.executors import restore_sigint

        def interrupted():
            try:
                _thread.interrupt_main()
                for _ in range(100):
                    time.sleep(0.001)  # bytecode runs: a pending interrupt raises here
            except KeyboardInterrupt:
                return True
            return False

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        ignored = interrupted()
        restored = restore_sigint()
        print(ignored, restored, interrupted(), restore_sigint())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parent.parent, check=True).stdout.split()
    # ignored: no interrupt; restored once (a second call leaves the default handler alone)
    assert out == ["False", "True", "True", "False"]


def test_ray_executor_matches_local(tmp_path, ray_instance):
    local_specs = two_slot_job(tmp_path / "local", sleep=0.5)
    ray_specs = two_slot_job(tmp_path / "ray", sleep=0.5)
    local = LocalExecutor(slots=2, max_parallel=2)
    try:
        local_results = local.run_batch(local_specs)
    finally:
        local.shutdown()
    ex = make_executor("ray", slots=2)
    seen = []
    try:
        ray_results = ex.run_batch(ray_specs, on_progress=lambda slot, rec: seen.append((slot, rec["step"])))
    finally:
        ex.shutdown()  # the module fixture owns the Ray instance: it stays up
    assert ray_instance.is_initialized()
    assert [(r.slot, r.node_id, r.status, r.metrics) for r in ray_results] == \
        [(r.slot, r.node_id, r.status, r.metrics) for r in local_results]
    assert [r.metrics["value"] for r in ray_results] == [1.0, 3.0]
    for spec, res in zip(ray_specs, ray_results):
        out = Path(spec.out_dir).resolve()
        assert res.out_dir == out
        for name in ("metrics.json", "analysis.log", "train.log", "progress.jsonl", "model.pt", "plots/loss.png"):
            assert (out / name).is_file(), name
        assert len((out / "progress.jsonl").read_text().splitlines()) == 5
    assert {s for s, _ in seen} == {0, 1}


def test_ray_cancel_kills_the_trainings(tmp_path, ray_instance):
    import os
    import time

    specs = two_slot_job(tmp_path, sleep=0)
    for s in specs:
        Path(s.config_path).write_text(json.dumps({"mode": "hang"}))
    ex = make_executor("ray", slots=2)
    cancel = threading.Event()
    timer = threading.Timer(20.0, cancel.set)  # a fallback: cancel as soon as both trainings run
    timer.start()
    running = set()

    def on_progress(slot, rec):  # the hang mode reports once, after starting its child
        running.add(slot)
        if running == {0, 1}:
            cancel.set()

    try:
        results = ex.run_batch(specs, on_progress=on_progress, cancel=cancel)
    finally:
        timer.cancel()
        ex.shutdown()
    assert running == {0, 1}, "the trainings never started"
    assert [r.status for r in results] == ["killed", "killed"]
    assert all("cancelled" in r.reason for r in results)
    # the children of the hanging trainings died with their groups
    deadline = time.time() + 5
    while time.time() < deadline:
        left = [p for p in os.listdir("/proc") if p.isdigit() and _is_fake_sleeper(p)]
        if not left:
            break
        time.sleep(0.2)
    assert not left, left


def _is_fake_sleeper(pid: str) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ")
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return b"time.sleep(600)" in cmd and state != "Z"
