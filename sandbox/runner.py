"""The subprocess runner (DESIGN.md §8): one training in its own process group.

`run_training` starts ``python -m <train_entry> --config C --out D --device X``
with cwd = the output directory and an environment reduced to an allow-list
(no API key ever reaches training code), with the workspace checkout first on
PYTHONPATH so its copy of the science package shadows the installed one. It
enforces a wall-clock timeout (SIGTERM to the group, SIGKILL after a grace
period), an optional address-space limit, caps the captured output, tails
progress.jsonl for the live view, and turns the outcome into a `RunResult`.
"""

from __future__ import annotations

import collections
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: variables copied from the parent environment when set (contracts §4)
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "GNN_AGENT_CACHE")
#: every variable a training process may see
ENV_ALLOWLIST = frozenset(INHERITED_ENV + (
    "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
    "TORCH_NUM_THREADS", "MPLBACKEND"))
#: fragments of variable names that smell like credentials; never passed even via extra_env
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "ANTHROPIC", "AWS_", "AUTH")
TRACEBACK_LINES = 40
LOG_CAP_BYTES = 4 * 1024 * 1024
POLL_S = 0.1


class RunSpec(BaseModel):
    """One training to run (contracts §4)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    node_id: int
    config_path: Path
    out_dir: Path
    code_dir: Path  # goes first on PYTHONPATH
    train_entry: str
    device: str = "cpu"
    timeout_s: float = Field(3600, gt=0)
    grace_s: float = Field(10, ge=0)
    memory_limit_mb: int | None = Field(None, gt=0)
    threads: int = Field(1, ge=1)
    gpu: str | None = None  # CUDA_VISIBLE_DEVICES value
    extra_env: dict[str, str] = Field(default_factory=dict)
    log_cap_bytes: int = Field(LOG_CAP_BYTES, ge=1024)

    @field_validator("train_entry")
    @classmethod
    def _module(cls, v: str) -> str:
        if not v or not all(p.isidentifier() for p in v.split(".")):
            raise ValueError(f"train_entry {v!r} is not a dotted module name")
        return v

    @field_validator("extra_env")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if any(m in k.upper() for m in SECRET_MARKERS):
                raise ValueError(f"extra_env: {k} looks like a credential; training code never gets credentials")
        return v


class RunResult(BaseModel):
    """The outcome of one training (contracts §4)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    node_id: int
    status: Literal["ok", "failed", "timeout", "killed"]
    exit_code: int | None
    reason: str
    traceback_tail: str
    metrics: dict[str, float]
    duration_s: float
    out_dir: Path


def build_env(spec: RunSpec, parent: dict[str, str] | None = None) -> dict[str, str]:
    """The training's environment: the allow-list only, PYTHONPATH = code_dir first."""
    parent = os.environ if parent is None else parent
    env = {k: parent[k] for k in INHERITED_ENV if k in parent}
    env.setdefault("PATH", os.defpath)
    threads = str(spec.threads)
    env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads,
                "TORCH_NUM_THREADS": threads, "MPLBACKEND": "Agg",
                # only the checkout: the parent's PYTHONPATH could point at the installed package
                "PYTHONPATH": str(Path(spec.code_dir).resolve())})
    if spec.gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = spec.gpu
    elif "CUDA_VISIBLE_DEVICES" in parent:  # e.g. the GPU Ray assigned to this worker
        env["CUDA_VISIBLE_DEVICES"] = parent["CUDA_VISIBLE_DEVICES"]
    env.update(spec.extra_env)
    return env


class _CappedLog:
    """Writes a stream to a file, keeping the first and last `cap/2` bytes."""

    def __init__(self, path: Path, cap: int):
        self.f = open(path, "wb")
        self.head_left = cap // 2
        self.tail_cap = cap - cap // 2
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.dropped = 0
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            if self.head_left > 0:
                head, data = data[: self.head_left], data[self.head_left:]
                self.f.write(head)
                self.f.flush()
                self.head_left -= len(head)
            if not data:
                return
            self.tail.append(data)
            self.tail_size += len(data)
            while self.tail_size > self.tail_cap:
                first = self.tail[0]
                excess = self.tail_size - self.tail_cap
                if len(first) <= excess:
                    self.tail.popleft()
                    self.tail_size -= len(first)
                    self.dropped += len(first)
                else:
                    self.tail[0] = first[excess:]
                    self.tail_size -= excess
                    self.dropped += excess

    def close(self) -> None:
        with self.lock:
            if self.dropped:
                self.f.write(f"\n[... {self.dropped} bytes of output truncated (log cap) ...]\n".encode())
            for chunk in self.tail:
                self.f.write(chunk)
            self.f.close()


def _pump(stream, log: _CappedLog, keep: collections.deque | None) -> None:
    for line in iter(stream.readline, b""):
        log.write(line)
        if keep is not None:
            keep.append(line.decode(errors="replace").rstrip("\n"))
    stream.close()


class _ProgressTail:
    """Reads new complete lines of progress.jsonl."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.last: dict | None = None

    def poll(self) -> list[dict]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out = []
        for line in data[: end + 1].splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a torn or foreign line must not stop the run
            if isinstance(rec, dict):
                out.append(rec)
                self.last = rec
        return out


def _limit_memory(limit_bytes: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec: keep it to one syscall
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return apply


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _terminate_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the whole group, then SIGKILL whatever is left after `grace_s`."""
    pgid = proc.pid
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc.poll() is not None and not _group_alive(pgid):
            break
        time.sleep(0.05)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _read_metrics(out_dir: Path) -> tuple[dict[str, float] | None, str | None]:
    """(metrics, None) or (None/partial, reason) from out_dir/metrics.json."""
    path = out_dir / "metrics.json"
    if not path.is_file():
        return None, "exit 0 but metrics.json is missing"
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        return None, f"metrics.json is not valid JSON ({str(e).splitlines()[0]})"
    if not isinstance(raw, dict):
        return None, f"metrics.json must be a flat name -> number object, got {type(raw).__name__}"
    metrics: dict[str, float] = {}
    for k, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None, f"metrics.json: {k} is {type(v).__name__} {v!r}, not a number"
        metrics[str(k)] = float(v)
    bad = [k for k, v in metrics.items() if not math.isfinite(v)]
    if bad:
        loss = [k for k in bad if "loss" in k.lower()]
        if loss:
            return metrics, f"NaN loss: metric {loss[0]} is {metrics[loss[0]]}"
        return metrics, f"metric {bad[0]} is {metrics[bad[0]]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    return metrics, None


def _failure_reason(code: int, tail: list[str], memory_limit_mb: int | None) -> str:
    """One line saying why a training exited non-zero."""
    text = "\n".join(tail)
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        reason = f"killed by {name}"
        if memory_limit_mb and -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
            reason += f" (probably out of memory: limit {memory_limit_mb} MB)"
        return reason
    if any(m in text for m in ("MemoryError", "std::bad_alloc", "Cannot allocate memory", "DefaultCPUAllocator")):
        return f"out of memory (limit {memory_limit_mb} MB)" if memory_limit_mb else "out of memory"
    for line in reversed(tail):
        s = line.strip()
        if s.startswith(("config error:", "training diverged:")):
            return s
    last = next((s.strip() for s in reversed(tail) if s.strip()), "")
    return f"exit code {code}" + (f": {last[:300]}" if last else " (no output on stderr)")


def run_training(spec: RunSpec, on_progress: Callable[[int, dict], None] | None = None,
                 cancel: threading.Event | None = None) -> RunResult:
    """Run one training to completion, timeout or cancellation; never raises for
    a failing training (bad launches such as a missing config raise ValueError)."""
    out_dir = Path(spec.out_dir).resolve()
    config = Path(spec.config_path).resolve()
    code_dir = Path(spec.code_dir).resolve()
    if not config.is_file():
        raise ValueError(f"run slot {spec.slot}: config {config} does not exist")
    if not code_dir.is_dir():
        raise ValueError(f"run slot {spec.slot}: code_dir {code_dir} does not exist")
    if spec.memory_limit_mb and spec.device != "cpu":
        # RLIMIT_AS counts address space; CUDA reserves far more than any sensible limit
        raise ValueError(f"run slot {spec.slot}: memory_limit_mb (an address-space limit) works only with "
                         f"device cpu, not {spec.device}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.json", "progress.jsonl"):  # a re-run must not read the last attempt's files
        (out_dir / stale).unlink(missing_ok=True)
    # -P: no cwd at the front of sys.path, so code_dir (PYTHONPATH) really comes first
    cmd = [sys.executable, "-P", "-m", spec.train_entry, "--config", str(config), "--out", str(out_dir),
           "--device", spec.device]
    log = _CappedLog(out_dir / "train.log", spec.log_cap_bytes)
    err_tail: collections.deque[str] = collections.deque(maxlen=TRACEBACK_LINES)
    progress = _ProgressTail(out_dir / "progress.jsonl")
    preexec = _limit_memory(spec.memory_limit_mb * 1024 * 1024) if spec.memory_limit_mb else None

    def deliver(records: list[dict]) -> None:
        if on_progress is None:
            return
        for rec in records:
            try:
                on_progress(spec.slot, rec)
            except Exception:  # a broken view must not kill the training
                pass

    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=out_dir, env=build_env(spec), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=preexec, close_fds=True)
    pumps = [threading.Thread(target=_pump, args=(proc.stdout, log, None), daemon=True),
             threading.Thread(target=_pump, args=(proc.stderr, log, err_tail), daemon=True)]
    for t in pumps:
        t.start()
    status: str | None = None
    try:
        while proc.poll() is None:
            deliver(progress.poll())
            if cancel is not None and cancel.is_set():
                status = "killed"
                _terminate_group(proc, spec.grace_s)
                break
            if time.monotonic() - t0 > spec.timeout_s:
                status = "timeout"
                _terminate_group(proc, spec.grace_s)
                break
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:  # an exception (e.g. KeyboardInterrupt from a Ray cancel) reached us
            _terminate_group(proc, 0)
        # children the training left behind die with it
        _signal_group(proc.pid, signal.SIGKILL)
        for t in pumps:
            t.join(timeout=5)
        log.close()
    duration = time.monotonic() - t0
    deliver(progress.poll())
    code = proc.returncode
    tail = list(err_tail)

    def result(st: str, reason: str, metrics: dict[str, float] | None = None) -> RunResult:
        return RunResult(slot=spec.slot, node_id=spec.node_id, status=st, exit_code=code, reason=reason,
                         traceback_tail="\n".join(tail), metrics=metrics or {}, duration_s=round(duration, 3),
                         out_dir=out_dir)

    if status == "killed":
        return result("killed", "cancelled: process group terminated")
    if status == "timeout":
        return result("timeout", f"wall-clock timeout after {spec.timeout_s:g} s: process group terminated")
    if code != 0:
        return result("failed", _failure_reason(code, tail, spec.memory_limit_mb))
    metrics, problem = _read_metrics(out_dir)
    if problem:
        return result("failed", problem, metrics)
    last = progress.last
    if last is not None and isinstance(last.get("loss"), (int, float)) and not math.isfinite(last["loss"]):
        return result("failed", f"NaN loss at step {last.get('step')} (progress.jsonl)", metrics)
    return result("ok", "ok", metrics)
