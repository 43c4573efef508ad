"""Executors (docs/contracts.md §4): run a batch of trainings, one per slot.

- `LocalExecutor`: a thread pool on this machine, each thread driving one
  `run_training` subprocess; slots share the cores (threads per slot) and,
  when GPUs exist, `slots_per_gpu` slots share each GPU (chosen from the
  GPUs' free memory by default: these models are far too small to keep a GPU
  busy alone).
- `RayExecutor`: one Ray task per slot. The code at the slot's commit travels
  with the task (the checkout is packed into a tar in the driver and unpacked
  in the task), and the output directory comes back as a tar, so it works on a
  remote cluster without a shared filesystem. The whole training runs on the
  worker: staging (from the worker's cache), the confined training and the
  evaluation, with the trusted code installed there when the driver's
  trusted root does not exist on the worker.

Both return `RunResult` records in the order of the specs. `on_progress` is
called from worker threads (local) or the driver's polling loop (Ray).
"""

from __future__ import annotations

import io
import json
import os
import queue
import shutil
import signal
import subprocess
import tarfile
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Literal

from sandbox.runner import RunResult, RunSpec, run_training

ProgressFn = Callable[[int, dict], None]
RAY_HINT = "the ray executor needs Ray: pip install 'gnn-agent[ray]' (or pip install ray)"
#: files and dirs never shipped with the code (worktree link, caches)
PACK_SKIP = {".git", "__pycache__", ".pytest_cache"}


def cpu_count() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def gpu_count(device: str) -> int:
    """Number of CUDA GPUs when `device` allows them (torch imported lazily)."""
    if device == "cpu":
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


#: GPU memory planned for one training slot: a CUDA context (~0.5 GiB) plus the metabolism/signal
#: models, their data and the caching allocator's slack, with head-room; the automatic
#: slots-per-GPU fits the least-free GPU's memory by this much
SLOT_GPU_MEMORY_MB = 2048


def gpu_free_memory_mb(n: int) -> list[int] | None:
    """Free memory (MB) of GPUs 0..n-1 by `nvidia-smi` (NVML: unlike torch.cuda.mem_get_info it creates no
    CUDA context in the driver, which would hold ~0.5 GiB per GPU for the whole run); None when unknown."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        free = [int(float(x)) for x in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return free[:n] if len(free) >= n else None


def auto_slots_per_gpu(free_mb: list[int] | None, slots: int, cores: int) -> tuple[int, str]:
    """(slots per GPU, why): as many as the least-free GPU holds at SLOT_GPU_MEMORY_MB each, no more than
    the batch puts on one GPU and one core per slot (each training's Python loop needs a core to launch its
    kernels); 1 when the free memory is unknown."""
    n = len(free_mb) if free_mb else 0
    if not n:
        return 1, "free GPU memory unknown (no nvidia-smi): 1 per GPU; set --slots-per-gpu"
    by_mem = min(free_mb) // SLOT_GPU_MEMORY_MB
    by_batch = -(-slots // n)
    by_cores = max(1, cores // n)
    k = max(1, min(by_mem, by_batch, by_cores))
    return k, (f"auto: {min(free_mb)} MB free on the fullest GPU / {SLOT_GPU_MEMORY_MB} MB a slot = {by_mem}, "
               f"{by_batch} for {slots} slots on {n} GPU(s), {by_cores} by {cores} cores")


def _error_result(spec: RunSpec, status: str, reason: str) -> RunResult:
    return RunResult(slot=spec.slot, node_id=spec.node_id, status=status, exit_code=None, reason=reason,
                     traceback_tail="", metrics={}, duration_s=0.0, out_dir=Path(spec.out_dir))


class Executor(ABC):
    """Runs batches of trainings (contracts §4)."""

    name: str = "executor"

    @abstractmethod
    def run_batch(self, specs: list[RunSpec], on_progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> list[RunResult]:
        """Run every spec; results in the order of `specs`. Never raises for a failing training."""

    def shutdown(self) -> None:
        """Release resources (idempotent)."""

    def describe(self) -> str:
        return self.name


class LocalExecutor(Executor):
    """A thread pool of `min(slots, max_parallel)` workers on this machine.

    `max_parallel` defaults to GPUs x slots per GPU with CUDA, else the number
    of cores. Each run gets `max(1, cores // parallel)` threads and, with GPUs,
    a GPU through CUDA_VISIBLE_DEVICES (unless the spec pins one), shared by
    up to `slots_per_gpu` runs at once (None: `auto_slots_per_gpu`).
    """

    name = "local"

    def __init__(self, slots: int, device: str = "cpu", max_parallel: int | None = None,
                 slots_per_gpu: int | None = None):
        if slots < 1:
            raise ValueError(f"local executor: slots must be >= 1, got {slots}")
        if device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"local executor: device must be cpu, cuda or auto, got {device!r}")
        if slots_per_gpu is not None and slots_per_gpu < 1:
            raise ValueError(f"local executor: slots_per_gpu must be >= 1, got {slots_per_gpu}")
        self.slots = slots
        self.device = device
        self._max_parallel = max_parallel
        self._slots_per_gpu = slots_per_gpu
        self._spg: tuple[int, str] | None = None
        self._gpus: int | None = None  # detected lazily: importing torch is slow
        self._pool: ThreadPoolExecutor | None = None

    @property
    def gpus(self) -> int:
        if self._gpus is None:
            self._gpus = gpu_count(self.device)
            if self.device == "cuda" and self._gpus == 0:
                raise RuntimeError("local executor: device cuda requested but no CUDA GPU is visible")
        return self._gpus

    @property
    def slots_per_gpu(self) -> int:
        """Runs sharing one GPU at a time (1 without GPUs)."""
        return self._slots_per_gpu_why()[0]

    def _slots_per_gpu_why(self) -> tuple[int, str]:
        if self._spg is None:
            if not self.gpus:
                self._spg = (1, "no GPU")
            elif self._slots_per_gpu is not None:
                self._spg = (self._slots_per_gpu, "set by --slots-per-gpu")
            else:
                self._spg = auto_slots_per_gpu(gpu_free_memory_mb(self.gpus), self.slots, cpu_count())
        return self._spg

    @property
    def parallel(self) -> int:
        cap = self._max_parallel or (self.gpus * self.slots_per_gpu if self.gpus else cpu_count())
        return max(1, min(self.slots, cap))

    @property
    def threads_per_slot(self) -> int:
        return max(1, cpu_count() // self.parallel)

    def describe(self) -> str:
        spg, why = self._slots_per_gpu_why()
        return (f"local: {self.parallel} parallel, {self.threads_per_slot} threads each"
                + (f", {self.gpus} GPU(s), {spg} slot(s) per GPU ({why})" if self.gpus else ""))

    def run_batch(self, specs: list[RunSpec], on_progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> list[RunResult]:
        if not specs:
            return []
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.parallel, thread_name_prefix="slot")
        free_gpus: queue.Queue[str] = queue.Queue()
        for _ in range(self.slots_per_gpu):  # round-robin: the GPUs fill evenly
            for g in range(self.gpus):
                free_gpus.put(str(g))
        threads = self.threads_per_slot
        device = "cuda" if self.gpus else "cpu"

        def one(spec: RunSpec) -> RunResult:
            if cancel is not None and cancel.is_set():
                return _error_result(spec, "killed", "cancelled before start")
            gpu = None
            if self.gpus and spec.gpu is None:
                gpu = free_gpus.get()  # at most slots_per_gpu runs hold each GPU
            try:
                update = {"threads": threads}
                if gpu is not None:
                    update.update(gpu=gpu, device=device)
                return run_training(spec.model_copy(update=update), on_progress, cancel)
            except Exception as e:  # a launch error (missing config, bad dir) fails this slot only
                return _error_result(spec, "failed", f"runner error: {e}")
            finally:
                if gpu is not None:
                    free_gpus.put(gpu)

        futures = [self._pool.submit(one, s) for s in specs]
        return [f.result() for f in futures]

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


# ----- Ray -----

def pack_dir(path: Path) -> bytes:
    """A gzip tar of a directory's contents (no .git link, no caches)."""
    buf = io.BytesIO()
    path = Path(path)
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for p in sorted(path.rglob("*")):
            rel = p.relative_to(path)
            if any(part in PACK_SKIP for part in rel.parts) or p.suffix == ".pyc":
                continue
            if p.is_symlink():
                continue  # never ship links out of the tree
            tar.add(p, arcname=rel.as_posix(), recursive=False)
    return buf.getvalue()


def unpack_dir(data: bytes, dest: Path) -> None:
    """Unpack `pack_dir` bytes into `dest` (refusing members that leave it)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        tar.extractall(dest, filter="data")


def restore_sigint() -> bool:
    """Make SIGINT raise KeyboardInterrupt in this process again when it was ignored; True if it was.

    Ray's gentle cancel (`ray.cancel(force=False)`) is `_thread.interrupt_main()` in the worker, which
    does nothing while the Python-level SIGINT handler is SIG_IGN or SIG_DFL. A worker inherits SIG_IGN
    whenever the process that started Ray had it (`nohup agent run --executor ray &`, `ray start` from a
    non-interactive shell: ignored dispositions survive fork and exec, and Python then installs no
    handler). Such a worker cannot be interrupted, so a cancelled training would run to its timeout.
    Called at the top of the task, in the worker's main thread (signal.signal works only there).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) not in (signal.SIG_IGN, signal.SIG_DFL, None):
        return False  # Python's default handler, or one Ray installed: it raises already
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return True


def _ray_task(spec_json: str, code_tar: bytes, config_bytes: bytes, progress_queue=None) -> tuple[str, bytes]:
    """Body of the Ray task: unpack code, run the training, pack the outputs."""
    restore_sigint()  # before the training starts: a cancel must reach run_training as KeyboardInterrupt
    spec = RunSpec.model_validate_json(spec_json)
    work = Path(tempfile.mkdtemp(prefix=f"gnn-agent-slot{spec.slot:02d}-"))
    try:
        code = work / "code"
        unpack_dir(code_tar, code)
        config = work / "config.yaml"
        config.write_bytes(config_bytes)
        out = work / "out"
        update = {"code_dir": code, "config_path": config, "out_dir": out, "gpu": None}
        if spec.trusted_root is not None and not Path(spec.trusted_root).is_dir():
            # a remote worker: stage and evaluate with the trusted copy installed there
            update["trusted_root"] = None
        local = spec.model_copy(update=update)

        def forward(slot: int, rec: dict) -> None:
            if progress_queue is not None:
                try:
                    progress_queue.put_nowait((slot, rec))
                except Exception:
                    pass  # a full or gone queue must not stop the training

        try:
            result = run_training(local, forward if progress_queue is not None else None)
        except Exception as e:
            result = _error_result(local, "failed", f"runner error on {os.uname().nodename}: {e}")
        return result.model_dump_json(), (pack_dir(out) if out.exists() else b"")
    finally:
        shutil.rmtree(work, ignore_errors=True)


class RayExecutor(Executor):
    """One Ray task per slot (`num_gpus=1` when the cluster has GPUs and device allows).

    `address`: None starts (or reuses) a local Ray instance; "auto" or
    "HOST:PORT" connects to a cluster. The sandbox package must be importable
    on the workers (it is, on a local instance; on a cluster install gnn-agent
    there).
    """

    name = "ray"

    def __init__(self, slots: int, address: str | None = None, device: str = "cpu",
                 slots_per_gpu: int | None = None, **init_kwargs):
        try:
            import ray
        except ImportError:
            raise RuntimeError(RAY_HINT) from None
        if slots < 1:
            raise ValueError(f"ray executor: slots must be >= 1, got {slots}")
        self.ray = ray
        if slots_per_gpu is not None and slots_per_gpu < 1:
            raise ValueError(f"ray executor: slots_per_gpu must be >= 1, got {slots_per_gpu}")
        self.slots = slots
        self.device = device
        #: a task asks for 1/slots_per_gpu of a GPU, so Ray packs that many on one (the workers' free memory
        #: is not known here: no automatic choice, 1 unless set)
        self.slots_per_gpu = slots_per_gpu or 1
        self._owns_ray = False
        if not ray.is_initialized():
            try:
                ray.init(address=address, include_dashboard=False, log_to_driver=False, **init_kwargs)
            except ConnectionError as e:
                raise RuntimeError(f"ray executor: cannot connect to Ray at {address!r}: {e}") from None
            self._owns_ray = True
        cluster_gpus = int(ray.cluster_resources().get("GPU", 0))
        self.use_gpu = device != "cpu" and cluster_gpus > 0
        if device == "cuda" and not self.use_gpu:
            raise RuntimeError("ray executor: device cuda requested but the Ray cluster has no GPU")
        self._remote = ray.remote(max_retries=0)(_ray_task)

    def describe(self) -> str:
        res = self.ray.cluster_resources()
        return f"ray: {int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs"

    def run_batch(self, specs: list[RunSpec], on_progress: ProgressFn | None = None,
                  cancel: threading.Event | None = None) -> list[RunResult]:
        if not specs:
            return []
        ray = self.ray
        from ray.util.queue import Queue

        # progress records come back through a queue actor: the driver calls on_progress
        # and appends them to the driver-side progress.jsonl the live view tails
        pq = Queue(maxsize=10000)
        sinks = {}
        for spec in specs:
            out_dir = Path(spec.out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "progress.jsonl").unlink(missing_ok=True)
            sinks[spec.slot] = out_dir / "progress.jsonl"
        refs, started = [], {}
        for spec in specs:
            if cancel is not None and cancel.is_set():
                refs.append(None)
                continue
            opts = {"num_cpus": spec.threads}
            if self.use_gpu:
                opts["num_gpus"] = 1.0 / self.slots_per_gpu
                spec = spec.model_copy(update={"device": "cuda"})
            ref = self._remote.options(**opts).remote(
                spec.model_dump_json(), pack_dir(spec.code_dir), Path(spec.config_path).read_bytes(), pq)
            refs.append(ref)
            started[ref] = time.monotonic()
        pending = [r for r in refs if r is not None]
        cancelled = False
        try:
            while pending:
                _done, pending = ray.wait(pending, num_returns=len(pending), timeout=0.2)
                self._drain(pq, on_progress, sinks)
                if cancel is not None and cancel.is_set() and not cancelled:
                    cancelled = True
                    for r in pending:  # KeyboardInterrupt in the task: run_training kills its group
                        ray.cancel(r, force=False)
        finally:
            self._drain(pq, on_progress, sinks)
        results: list[RunResult] = []
        for spec, ref in zip(specs, refs):
            if ref is None:
                results.append(_error_result(spec, "killed", "cancelled before start"))
                continue
            try:
                result_json, out_tar = ray.get(ref)
            except ray.exceptions.TaskCancelledError:
                results.append(_error_result(spec, "killed", "cancelled: Ray task cancelled"))
                continue
            except ray.exceptions.RayError as e:
                reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
                results.append(_error_result(spec, "killed" if cancelled else "failed", f"ray task error: {reason}"))
                continue
            out_dir = Path(spec.out_dir).resolve()
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "progress.jsonl").unlink(missing_ok=True)  # the task's own copy is complete
            if out_tar:
                unpack_dir(out_tar, out_dir)
            res = RunResult.model_validate_json(result_json)
            results.append(res.model_copy(update={"out_dir": out_dir, "slot": spec.slot, "node_id": spec.node_id}))
        pq.shutdown()
        return results

    @staticmethod
    def _drain(pq, on_progress: ProgressFn | None, sinks: dict[int, Path]) -> None:
        try:
            items = pq.get_nowait_batch(pq.qsize())
        except Exception:
            return
        lines: dict[int, list[str]] = {}
        for slot, rec in items:
            lines.setdefault(slot, []).append(json.dumps(rec))
            if on_progress is not None:
                try:
                    on_progress(slot, rec)
                except Exception:
                    pass  # a broken view must not stop the batch
        for slot, ls in lines.items():
            if slot in sinks:
                with open(sinks[slot], "a") as f:
                    f.write("\n".join(ls) + "\n")

    def shutdown(self) -> None:
        if self._owns_ray and self.ray.is_initialized():
            self.ray.shutdown()
            self._owns_ray = False


def make_executor(name: Literal["local", "ray"], slots: int, ray_address: str | None = None,
                  device: str = "cpu", slots_per_gpu: int | None = None) -> Executor:
    """The executor of `agent run --executor NAME` (contracts §4); `slots_per_gpu`: --slots-per-gpu
    (None: automatic for local, 1 for Ray)."""
    if name == "local":
        if ray_address is not None:
            raise ValueError("--ray-address is only meaningful with --executor ray")
        return LocalExecutor(slots, device=device, slots_per_gpu=slots_per_gpu)
    if name == "ray":
        return RayExecutor(slots, address=ray_address, device=device, slots_per_gpu=slots_per_gpu)
    raise ValueError(f"unknown executor {name!r}: choose local or ray")
