"""--slots-per-gpu: several trainings share one GPU; the automatic choice from free GPU memory. The device
query is faked (no GPU here): gpu_count and gpu_free_memory_mb are the executor's only views of the GPUs."""

import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import sandbox.executors as ex
from sandbox.runner import RunResult, RunSpec


def test_auto_slots_per_gpu_is_bounded_by_memory_batch_and_cores():
    assert ex.auto_slots_per_gpu([80_000], slots=4, cores=16)[0] == 4  # an H100 holds the whole batch
    assert ex.auto_slots_per_gpu([80_000], slots=32, cores=16)[0] == 16  # one core per slot
    assert ex.auto_slots_per_gpu([5_000], slots=8, cores=16)[0] == 5_000 // ex.SLOT_GPU_MEMORY_MB
    assert ex.auto_slots_per_gpu([80_000, 3_000], slots=8, cores=16)[0] == 1  # the fullest GPU decides
    assert ex.auto_slots_per_gpu([80_000, 80_000], slots=5, cores=16)[0] == 3  # ceil(5 / 2)
    assert ex.auto_slots_per_gpu([100], slots=4, cores=16)[0] == 1  # never 0
    k, why = ex.auto_slots_per_gpu(None, slots=4, cores=16)
    assert k == 1 and "unknown" in why


def test_free_memory_unknown_without_nvidia_smi(monkeypatch):
    def missing(*a, **k):
        raise FileNotFoundError("nvidia-smi")
    monkeypatch.setattr(ex.subprocess, "run", missing)
    assert ex.gpu_free_memory_mb(1) is None

    monkeypatch.setattr(ex.subprocess, "run", lambda *a, **k: SimpleNamespace(stdout="81000\n40000\n"))
    assert ex.gpu_free_memory_mb(2) == [81000, 40000]
    assert ex.gpu_free_memory_mb(1) == [81000]
    assert ex.gpu_free_memory_mb(3) is None  # fewer GPUs listed than torch sees: do not guess

    def bad(*a, **k):
        raise subprocess.CalledProcessError(9, "nvidia-smi")
    monkeypatch.setattr(ex.subprocess, "run", bad)
    assert ex.gpu_free_memory_mb(1) is None


def _fake_gpus(monkeypatch, free_mb, cores=16):
    monkeypatch.setattr(ex, "gpu_count", lambda device: 0 if device == "cpu" else len(free_mb))
    monkeypatch.setattr(ex, "gpu_free_memory_mb", lambda n: list(free_mb[:n]))
    monkeypatch.setattr(ex, "cpu_count", lambda: cores)


def _recording_runner(monkeypatch, hold_s=0.3):
    """run_training replaced by a sleep that records each run's GPU and the peak number of runs per GPU."""
    lock = threading.Lock()
    now: dict[str, int] = {}
    peak: dict[str, int] = {}
    seen: list[tuple[int, str | None, str, int]] = []

    def fake(spec: RunSpec, on_progress=None, cancel=None) -> RunResult:
        with lock:
            seen.append((spec.slot, spec.gpu, spec.device, spec.threads))
            now[spec.gpu] = now.get(spec.gpu, 0) + 1
            peak[spec.gpu] = max(peak.get(spec.gpu, 0), now[spec.gpu])
        time.sleep(hold_s)
        with lock:
            now[spec.gpu] -= 1
        return ex._error_result(spec, "ok", "")

    monkeypatch.setattr(ex, "run_training", fake)
    return seen, peak


def _specs(tmp_path: Path, n: int) -> list[RunSpec]:
    return [RunSpec(slot=i, node_id=i, config_path=tmp_path / "c.yaml", out_dir=tmp_path / f"o{i}",
                    code_dir=tmp_path, train_entry="x.train", eval_entry="x.evaluate",
                    stage_entry="x:stage") for i in range(n)]


def test_auto_puts_a_four_slot_batch_on_one_gpu(monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, [80_000])
    seen, peak = _recording_runner(monkeypatch)
    e = ex.LocalExecutor(slots=4, device="auto")
    assert (e.gpus, e.slots_per_gpu, e.parallel, e.threads_per_slot) == (1, 4, 4, 4)
    assert "4 slot(s) per GPU (auto:" in e.describe()
    try:
        results = e.run_batch(_specs(tmp_path, 4))
    finally:
        e.shutdown()
    assert [r.status for r in results] == ["ok"] * 4
    assert sorted(s[1] for s in seen) == ["0"] * 4 and {s[2] for s in seen} == {"cuda"}
    assert peak == {"0": 4}  # all four at once: the GPU is shared, not taken in turns


def test_explicit_slots_per_gpu_spreads_evenly_and_caps_each_gpu(monkeypatch, tmp_path):
    _fake_gpus(monkeypatch, [80_000, 80_000])
    seen, peak = _recording_runner(monkeypatch)
    e = ex.make_executor("local", slots=6, device="cuda", slots_per_gpu=2)
    assert (e.slots_per_gpu, e.parallel) == (2, 4) and "set by --slots-per-gpu" in e.describe()
    try:
        e.run_batch(_specs(tmp_path, 6))
    finally:
        e.shutdown()
    # which GPU the last two runs get depends on which GPU's runs end first (4/2 or 3/3); the cap is
    # what must hold: never more than 2 at once on a GPU, both GPUs used, every run placed
    assert len(seen) == 6 and {s[1] for s in seen} == {"0", "1"}
    assert peak == {"0": 2, "1": 2}


def test_cpu_ignores_slots_per_gpu_and_bad_values_are_refused(monkeypatch):
    _fake_gpus(monkeypatch, [], cores=2)
    e = ex.LocalExecutor(slots=4, device="cpu", slots_per_gpu=3)
    assert (e.gpus, e.slots_per_gpu, e.parallel) == (0, 1, 2)
    with pytest.raises(ValueError, match="slots_per_gpu must be >= 1"):
        ex.LocalExecutor(slots=2, slots_per_gpu=0)


def test_cli_flag_reaches_the_executor(monkeypatch):
    from agent.cli import build_parser
    from agent.run import RunOptions
    from agent.runctx import RunCtx
    from rundir.records import RunInfo

    args = build_parser().parse_args(["run", "--regime", "homeostasis", "--slots-per-gpu", "3"])
    assert args.slots_per_gpu == 3
    assert build_parser().parse_args(["run", "--regime", "homeostasis"]).slots_per_gpu is None
    with pytest.raises(ValueError):
        RunOptions(regime="homeostasis", slots_per_gpu=0)
    info = RunInfo(run_id="r", regime="homeostasis", variant="v", profile="full", slots=4, policy="heuristic",
                   model="m", device="cuda", slots_per_gpu=3)
    got = {}
    monkeypatch.setattr(ex, "make_executor", lambda *a, **k: got.update(k) or "executor")
    ctx = SimpleNamespace(info=info, _executor=None)
    assert RunCtx.executor.fget(ctx) == "executor" and got["slots_per_gpu"] == 3 and got["device"] == "cuda"
