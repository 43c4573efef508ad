"""The subprocess runner (docs/contracts.md §2b): one training as two processes.

`run_training` drives one training (docs/contracts.md §2b, §4):

1. **stage** (this process, trusted code): a private directory per training
   (``mkdtemp`` under the runner's TMPDIR, mode 0700) gets a copy of the
   config and an ``inputs/`` directory that the regime's stage function
   (imported from the trusted installed code, never the workspace) fills with
   what training may see; no path into the cache is handed on;
2. **train** (the workspace checkout): ``python -P -m <train_entry> --config C
   --inputs IN --out OUT --device D`` under `sandbox/confine.py` (Landlock,
   user/PID/net namespaces, children die with it), with an environment
   reduced to an allow-list (no API key, no cache root; HOME and TMPDIR are
   private), PYTHONPATH = the checkout only;
3. **evaluate** (trusted code): ``python -P -m <eval_entry> --config C
   --inputs IN --out OUT`` with PYTHONPATH = the trusted root, the cache root
   in its environment, its own process group and what is left of the budget.

Both processes get a wall-clock timeout (SIGTERM to the group, SIGKILL after a
grace period), an optional address-space limit (training) and capped logs
(train.log, eval.log). A failure's reason comes from OUT/failure.json
(`regimes.runtime`) when the entry wrote one, else from stderr.
"""

from __future__ import annotations

import collections
import importlib
import importlib.util
import inspect
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from sandbox import confine as confine_mod

#: variables copied from the parent environment into the training's when set (contracts §4);
#: HOME and TMPDIR are replaced by private directories, the cache root never reaches it
INHERITED_ENV = ("PATH", "LANG", "LC_ALL")
#: what the evaluation (trusted) also inherits: it reads the cache (and may regenerate it
#: with the data secret, regimes.runtime.data_secret)
EVAL_INHERITED_ENV = INHERITED_ENV + ("HOME", "TMPDIR", "GNN_AGENT_CACHE", "GNN_AGENT_DATA_SECRET")
#: every variable a training process may see
ENV_ALLOWLIST = frozenset(INHERITED_ENV + (
    "HOME", "TMPDIR", "PYTHONPATH", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS", "MPLBACKEND", "PYTHONDONTWRITEBYTECODE"))
#: fragments of variable names that smell like credentials; never passed even via extra_env
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "CREDENTIAL", "ANTHROPIC", "AWS_", "AUTH")
#: extra_env may not override what the runner sets for confinement
RESERVED_ENV = ("HOME", "TMPDIR", "PYTHONPATH", "GNN_AGENT_CACHE")
TRACEBACK_LINES = 40
LOG_CAP_BYTES = 4 * 1024 * 1024
POLL_S = 0.1
#: the evaluation always gets at least this much of the budget, even after a long training
EVAL_MIN_S = 30.0
#: files a previous attempt may have left in the out dir (a re-run must not read them)
STALE_FILES = ("metrics.json", "analysis.log", "predictions.pt", "failure.json", "progress.jsonl", "eval.log",
               "stage.log")


def processes_file(out_dir: Path) -> Path:
    """One line per process started for a training (launcher, eval): `<out_dir>.processes.jsonl`
    NEXT TO out_dir, not in it - the training can write its out dir, and a forged line could
    make a resume kill another process."""
    out_dir = Path(out_dir)
    return out_dir.parent / f"{out_dir.name}.processes.jsonl"
#: files only the evaluation may write: removed after the training, before the evaluation
EVAL_OUTPUTS = ("metrics.json", "analysis.log", "failure.json")
#: the loop's records in a slot dir (= the out dir): the training can write there, so the runner
#: keeps a copy and puts back any it changed (a resume re-reads them: commit, config)
PROTECTED_FILES = ("launch.json", "config.yaml", "result.json")
PROTECTED_MAX_BYTES = 1 << 20


def _snapshot(out_dir: Path, names: set[str]) -> dict[str, bytes]:
    snap = {}
    for name in names:
        p = out_dir / name
        try:
            if p.is_file() and not p.is_symlink() and p.stat().st_size <= PROTECTED_MAX_BYTES:
                snap[name] = p.read_bytes()
        except OSError:
            pass
    return snap


def _restore(out_dir: Path, snap: dict[str, bytes]) -> list[str]:
    """Put back every snapshotted file the training changed or removed; returns their names."""
    changed = []
    for name, data in snap.items():
        p = out_dir / name
        try:
            same = p.is_file() and not p.is_symlink() and p.read_bytes() == data
        except OSError:
            same = False
        if not same:
            changed.append(name)
            if p.is_symlink() or p.is_dir():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            tmp = out_dir / f".{name}.restore"
            tmp.write_bytes(data)
            os.replace(tmp, p)
    return sorted(changed)


def _dotted(v: str, what: str) -> str:
    if not v or not all(p.isidentifier() for p in v.split(".")):
        raise ValueError(f"{what} {v!r} is not a dotted module name")
    return v


class RunSpec(BaseModel):
    """One training to run (contracts §4)."""

    model_config = ConfigDict(extra="forbid")

    slot: int
    node_id: int
    config_path: Path
    out_dir: Path
    code_dir: Path  # the workspace checkout: the training's whole PYTHONPATH
    train_entry: str
    #: trusted evaluation module, run with PYTHONPATH = trusted_root (contracts §2b)
    eval_entry: str
    #: "module:function" called in this process as fn(config_path, inputs_dir) before training
    stage_entry: str
    #: directory holding the trusted copy of the package's top-level module; None: find the
    #: installed package in this process (a Ray worker uses its own installation)
    trusted_root: Path | None = None
    #: OS confinement of the training (sandbox/confine.py); False = --no-confine (debugging)
    confine: bool = True
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
        return _dotted(v, "train_entry")

    @field_validator("eval_entry")
    @classmethod
    def _eval_module(cls, v: str) -> str:
        return _dotted(v, "eval_entry")

    @field_validator("stage_entry")
    @classmethod
    def _stage(cls, v: str) -> str:
        mod, sep, fn = v.partition(":")
        if not sep or not fn.isidentifier():
            raise ValueError(f"stage_entry {v!r} is not 'module:function'")
        _dotted(mod, "stage_entry module")
        return v

    @field_validator("extra_env")
    @classmethod
    def _no_secrets(cls, v: dict[str, str]) -> dict[str, str]:
        for k in v:
            if any(m in k.upper() for m in SECRET_MARKERS):
                raise ValueError(f"extra_env: {k} looks like a credential; training code never gets credentials")
            if k in RESERVED_ENV:
                raise ValueError(f"extra_env: {k} is set by the runner (confinement); it cannot be overridden")
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
    #: the confinement the training ran under (confine.describe's words); "" when it never started
    confinement: str = ""
    #: seconds spent staging, training and evaluating
    timings: dict[str, float] = Field(default_factory=dict)


def trusted_root_of(package: str, package_dir: Path) -> Path:
    """The directory holding `package`'s top-level module, given the package's own directory
    (e.g. regimes.metabolism at /x/regimes/metabolism -> /x)."""
    parts = package.split(".")
    root = Path(package_dir).resolve()
    for _ in parts:
        root = root.parent
    if not (root / parts[0]).is_dir():
        raise ValueError(f"package {package}: {package_dir} does not end in {'/'.join(parts)}")
    return root


def regime_entries(regime) -> dict:
    """The RunSpec fields a regime fixes: its evaluation and staging entries and the trusted root."""
    return {"eval_entry": regime.eval_entry, "stage_entry": regime.stage_entry,
            "trusted_root": trusted_root_of(regime.package, regime.package_dir)}


def resolve_trusted_root(spec: RunSpec) -> Path:
    """spec.trusted_root, or the directory this process imports the evaluation's top-level package from."""
    if spec.trusted_root is not None:
        root = Path(spec.trusted_root).resolve()
        if not root.is_dir():
            raise ValueError(f"run slot {spec.slot}: trusted_root {root} does not exist")
        return root
    top = spec.eval_entry.split(".")[0]
    found = importlib.util.find_spec(top)
    if found is None or not found.submodule_search_locations:
        raise ValueError(f"run slot {spec.slot}: package {top} (of {spec.eval_entry}) is not installed here")
    return Path(list(found.submodule_search_locations)[0]).resolve().parent


_IMPORT_LOCK = threading.Lock()
#: one staging at a time: a cold cache is generated once, not by every slot at once
_STAGE_LOCK = threading.Lock()


def import_trusted(module: str, trusted_root: Path):
    """Import `module` in this process from `trusted_root` (never from a workspace checkout).

    A package not importable yet (a --regime-path plugin) gets `trusted_root` appended to
    sys.path; one already imported from elsewhere is refused (it is not the trusted copy)."""
    top = module.split(".")[0]
    with _IMPORT_LOCK:
        if top not in sys.modules and importlib.util.find_spec(top) is None:
            if str(trusted_root) not in sys.path:
                sys.path.append(str(trusted_root))
            importlib.invalidate_caches()
        mod = importlib.import_module(module)
    where = Path(getattr(mod, "__file__", "") or "").resolve()
    if not where.is_relative_to(trusted_root):
        raise ValueError(f"{module} is imported from {where}, not from the trusted copy under {trusted_root}")
    return mod


def stage_inputs(spec: RunSpec, trusted_root: Path, config_path: Path, dest: Path,
                 log_path: Path | None = None) -> None:
    """Call the regime's stage function (trusted code, this process) to fill `dest`."""
    module, _, fn = spec.stage_entry.partition(":")
    func = getattr(import_trusted(module, trusted_root), fn, None)
    if not callable(func):
        raise ValueError(f"stage_entry {spec.stage_entry}: {module} has no function {fn}")
    dest.mkdir(parents=True, exist_ok=True)
    kwargs = {}
    if log_path is not None and "log" in inspect.signature(func).parameters:
        # its messages go to a file: printing would garble the agent's live view
        def log(*parts) -> None:
            with open(log_path, "a") as f:
                f.write(" ".join(str(p) for p in parts) + "\n")

        kwargs["log"] = log
    with _STAGE_LOCK:
        func(config_path, dest, **kwargs)


def _thread_env(threads: int) -> dict[str, str]:
    t = str(threads)
    return {"OMP_NUM_THREADS": t, "MKL_NUM_THREADS": t, "OPENBLAS_NUM_THREADS": t, "TORCH_NUM_THREADS": t,
            "MPLBACKEND": "Agg"}


def _gpu_env(spec: RunSpec, parent: dict[str, str]) -> dict[str, str]:
    if spec.gpu is not None:
        return {"CUDA_VISIBLE_DEVICES": spec.gpu}
    if "CUDA_VISIBLE_DEVICES" in parent:  # e.g. the GPU Ray assigned to this worker
        return {"CUDA_VISIBLE_DEVICES": parent["CUDA_VISIBLE_DEVICES"]}
    return {}


def build_env(spec: RunSpec, parent: dict[str, str] | None = None, private: Path | None = None) -> dict[str, str]:
    """The training's environment: the allow-list only, PYTHONPATH = the checkout, HOME and
    TMPDIR inside the private directory (`private`, default: a path under out_dir's parent
    is never used: the runner always passes its own), no cache root."""
    parent = os.environ if parent is None else parent
    env = {k: parent[k] for k in INHERITED_ENV if k in parent}
    env.setdefault("PATH", os.defpath)
    env.update(_thread_env(spec.threads))
    # only the checkout: the parent's PYTHONPATH could point at the installed package
    env["PYTHONPATH"] = str(Path(spec.code_dir).resolve())
    env["PYTHONDONTWRITEBYTECODE"] = "1"  # the checkout is read-only to the training
    if private is not None:
        env["HOME"] = str(private / "home")
        env["TMPDIR"] = str(private / "tmp")
    env.update(_gpu_env(spec, parent))
    env.update(spec.extra_env)
    return env


def project_root() -> Path:
    """The directory holding the `regimes` package this process runs (regimes.runtime and the
    built-in regimes): a plugin's evaluation imports regimes.runtime from here, not from whatever
    copy the interpreter would find."""
    import regimes

    return Path(regimes.__file__).resolve().parent.parent


def build_eval_env(spec: RunSpec, trusted_root: Path, parent: dict[str, str] | None = None) -> dict[str, str]:
    """The evaluation's environment: the allow-list plus the cache root; PYTHONPATH = the trusted
    root, then this process's own project root (for a plugin: regimes.runtime)."""
    parent = os.environ if parent is None else parent
    env = {k: parent[k] for k in EVAL_INHERITED_ENV if k in parent}
    env.setdefault("PATH", os.defpath)
    env.update(_thread_env(spec.threads))
    roots = [str(trusted_root)] + ([str(project_root())] if project_root() != trusted_root else [])
    env["PYTHONPATH"] = os.pathsep.join(roots)
    env.update(_gpu_env(spec, parent))
    env.update(spec.extra_env)  # e.g. GNN_AGENT_RUN, by which a resume finds a run's leftover processes
    return env


def _interpreter_paths() -> list[str]:
    """What the interpreter needs to start and import its packages (read + execute)."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix,
             os.path.realpath(sys.executable), os.path.dirname(os.path.realpath(sys.executable))}
    import sysconfig

    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(os.path.realpath(p))
    import site

    for p in site.getsitepackages():
        paths.add(os.path.realpath(p))
    return sorted(paths)


#: system paths every training may read: shared libraries, CPU topology, the loader cache
SYSTEM_READ = ("/usr/lib", "/usr/lib64", "/lib", "/lib64", "/usr/local/lib", "/usr/share/zoneinfo",
               "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/localtime", "/etc/passwd",
               "/etc/group", "/etc/nsswitch.conf", "/sys/devices/system/cpu", "/sys/fs/cgroup",
               "/proc/cpuinfo", "/proc/meminfo", "/proc/stat", "/proc/driver/nvidia",
               "/dev/urandom", "/dev/random")
#: devices a training may read, write and ioctl
SYSTEM_DEVICES = ("/dev/null", "/dev/zero", "/dev/full")
GPU_DEVICE_GLOBS = ("/dev/nvidia*", "/dev/nvidia-caps", "/dev/dri")
#: what the CUDA driver and runtime read besides the shared libraries (PCI topology, the toolkit)
GPU_READ_GLOBS = ("/sys", "/usr/local/cuda*", "/usr/share/nvidia", "/etc/nvidia", "/opt/nvidia")


def confine_policy(spec: RunSpec, code_dir: Path, private: Path, out_dir: Path) -> dict:
    """The launcher's policy (sandbox/confine.py): what the training may read and write."""
    import glob

    devices = list(SYSTEM_DEVICES)
    read = _interpreter_paths() + list(SYSTEM_READ) + [str(code_dir), str(private / "inputs"),
                                                       str(private / "config.yaml")]
    if spec.device != "cpu":
        for g in GPU_DEVICE_GLOBS:
            devices += glob.glob(g)
        for g in GPU_READ_GLOBS:
            read += glob.glob(g)
    return {"confine": spec.confine, "requested": spec.confine, "parent_pid": os.getpid(),
            "read": read, "write": [str(out_dir), str(private / "home"), str(private / "tmp")],
            "devices": devices, "report": str(private / "confinement.txt")}


def make_private_dir(slot: int) -> Path:
    """A fresh directory only this runner knows: inputs/, home/, tmp/ and the config copy."""
    private = Path(tempfile.mkdtemp(prefix=f"gnn-agent-s{slot:02d}-")).resolve()
    for sub in ("inputs", "home", "tmp"):
        (private / sub).mkdir(mode=0o700)
    return private


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


def _failure_reason(code: int, tail: list[str], memory_limit_mb: int | None, failure: dict | None = None) -> str:
    """One line saying why an entry exited non-zero; `failure` is its failure.json, when written."""
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
    if code == confine_mod.EXIT_CONFINE_FAILED:
        line = next((s.strip() for s in reversed(tail) if s.strip().startswith("confinement error:")), None)
        if line:
            return line
    if failure is not None:
        msg = " ".join(failure["message"].split())[:300]
        if failure["kind"] in ("config", "diverged"):
            return msg
        return f"exit code {code}: {msg}" if msg else f"exit code {code} ({failure['kind']})"
    for line in reversed(tail):
        s = line.strip()
        if s.startswith(("config error:", "training diverged:")):
            return s
    last = next((s.strip() for s in reversed(tail) if s.strip()), "")
    return f"exit code {code}" + (f": {last[:300]}" if last else " (no output on stderr)")


def _read_failure(out_dir: Path) -> dict | None:
    """OUT/failure.json as regimes.runtime writes it ({"kind", "message"}); the runtime module is
    not imported here (the runner must not depend on a science package)."""
    try:
        rec = json.loads((out_dir / "failure.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str) or not isinstance(rec.get("message"), str):
        return None
    return {"kind": rec["kind"], "message": rec["message"][:1000]}


def find_links(out_dir: Path) -> list[str]:
    """Symlinks and hard-linked files under out_dir (relative paths): a link left by the training
    could make the evaluation read a file the training itself may not (e.g. the truth)."""
    bad = []
    for dirpath, dirnames, filenames in os.walk(out_dir, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            import stat as stat_mod

            if stat_mod.S_ISLNK(st.st_mode) or (stat_mod.S_ISREG(st.st_mode) and st.st_nlink > 1):
                bad.append(str(p.relative_to(out_dir)))
    return sorted(bad)


#: the evaluation process's first words: import the (trusted) evaluation module - torch and
#: all - while the training runs, then wait for "go" on stdin and run it as __main__. Without
#: the head start every training paid a second interpreter + torch import (seconds) after it.
EVAL_BOOT = """
import importlib, os, runpy, sys, warnings
# die with the runner: a driver killed while this waits for 'go' must not leave it behind (importing
# torch can take seconds, and the closed stdin is only read after that)
try:
    import ctypes
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except Exception:
    pass
if os.getppid() == 1:
    sys.exit(0)  # the runner died before the line above
entry = sys.argv[1]
try:
    importlib.import_module(entry)
except BaseException:
    pass  # run_module below raises it again, with its traceback
if sys.stdin.readline().strip() != "go":
    sys.exit(0)  # the training failed: nothing to evaluate
warnings.filterwarnings("ignore", message=".*found in sys.modules", category=RuntimeWarning)
sys.argv = [entry] + sys.argv[2:]
code = 0
try:
    runpy.run_module(entry, run_name="__main__", alter_sys=True)
except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    if not isinstance(e.code, (int, type(None))):
        print(e.code, file=sys.stderr)
# skip the interpreter's teardown of torch (a second or more): exit handlers and stdio only
import atexit, os
atexit._run_exitfuncs()
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
"""


class _Proc:
    """One child process in its own group: output pumped to a capped log, stderr tail kept."""

    def __init__(self, cmd: list[str], env: dict[str, str], cwd: Path, log_path: Path, cap: int,
                 preexec: Callable[[], None] | None = None, stdin_pipe: bool = False):
        self.log = _CappedLog(log_path, cap)
        self.err_tail: collections.deque[str] = collections.deque(maxlen=TRACEBACK_LINES)
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                                     preexec_fn=preexec, close_fds=True)
        self.closed = False
        self.pumps = [threading.Thread(target=_pump, args=(self.proc.stdout, self.log, None), daemon=True),
                      threading.Thread(target=_pump, args=(self.proc.stderr, self.log, self.err_tail), daemon=True)]
        for t in self.pumps:
            t.start()

    def wait(self, deadline: float, grace_s: float, cancel: threading.Event | None,
             tick: Callable[[], None] | None = None) -> str | None:
        """Wait for exit; "killed" (cancel) or "timeout" after terminating the group, else None."""
        status: str | None = None
        try:
            while self.proc.poll() is None:
                if tick is not None:
                    tick()
                if cancel is not None and cancel.is_set():
                    status = "killed"
                    _terminate_group(self.proc, grace_s)
                    break
                if time.monotonic() > deadline:
                    status = "timeout"
                    _terminate_group(self.proc, grace_s)
                    break
                try:  # returns as soon as the process exits (a bare sleep cost up to POLL_S per process)
                    self.proc.wait(timeout=POLL_S)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if self.proc.poll() is None:  # an exception (e.g. KeyboardInterrupt from a Ray cancel) reached us
                _terminate_group(self.proc, 0)
            self._close()
        return status

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # children the process left behind in its group die with it
        _signal_group(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        for t in self.pumps:
            t.join(timeout=5)
        self.log.close()

    def go(self) -> None:
        """Tell a waiting EVAL_BOOT process to run (it may have died already: wait() tells)."""
        try:
            self.proc.stdin.write(b"go\n")
            self.proc.stdin.close()
        except (OSError, ValueError):
            pass

    def abort(self) -> None:
        """End the process group now (idempotent)."""
        if not self.closed:
            if self.proc.poll() is None:
                _terminate_group(self.proc, 0)
            self._close()

    @property
    def code(self) -> int | None:
        return self.proc.returncode

    def record(self, out_dir: Path, role: str) -> None:
        """Append {pid, pgid, start_time, role} to processes_file(out_dir) (a resume after a crash
        ends a run's leftover processes by it; start_time guards against pid reuse)."""
        pid = self.proc.pid
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            start = int(stat[stat.rfind(")") + 2:].split()[19])  # field 22 of /proc/PID/stat
        except (OSError, ValueError, IndexError):
            start = None
        try:
            with open(processes_file(out_dir), "a") as f:
                f.write(json.dumps({"pid": pid, "pgid": pid, "start_time": start, "role": role}) + "\n")
        except OSError:
            pass


def _tail_text(lines) -> str:
    return "\n".join(lines)


def run_training(spec: RunSpec, on_progress: Callable[[int, dict], None] | None = None,
                 cancel: threading.Event | None = None) -> RunResult:
    """Stage, train (confined) and evaluate one training; never raises for a failing training
    (bad launches such as a missing config raise ValueError)."""
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
    trusted_root = resolve_trusted_root(spec)
    if code_dir == trusted_root or trusted_root.is_relative_to(code_dir):
        raise ValueError(f"run slot {spec.slot}: the trusted root {trusted_root} is inside the code checkout "
                         f"{code_dir}; the evaluation must not run the workspace's code")
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in STALE_FILES:  # a re-run must not read the last attempt's files
        (out_dir / stale).unlink(missing_ok=True)
    processes_file(out_dir).unlink(missing_ok=True)
    timings: dict[str, float] = {}
    t0 = time.monotonic()
    deadline = t0 + spec.timeout_s
    private = make_private_dir(spec.slot)
    tail: list[str] = []
    code: int | None = None
    confinement = ""
    ev: _Proc | None = None

    def deliver(records: list[dict]) -> None:
        if on_progress is None:
            return
        for rec in records:
            try:
                on_progress(spec.slot, rec)
            except Exception:  # a broken view must not kill the training
                pass

    def result(st: str, reason: str, metrics: dict[str, float] | None = None) -> RunResult:
        return RunResult(slot=spec.slot, node_id=spec.node_id, status=st, exit_code=code, reason=reason,
                         traceback_tail=_tail_text(tail), metrics=metrics or {},
                         duration_s=round(time.monotonic() - t0, 3), out_dir=out_dir, confinement=confinement,
                         timings={k: round(v, 3) for k, v in timings.items()})

    try:
        # ----- 1. stage (trusted, this process) -----
        staged_config = private / "config.yaml"
        shutil.copyfile(config, staged_config)
        os.chmod(staged_config, 0o400)
        try:
            stage_inputs(spec, trusted_root, staged_config, private / "inputs", out_dir / "stage.log")
        except Exception as e:  # noqa: BLE001 - the stage function's failure fails this training only
            tail = traceback.format_exc().splitlines()[-TRACEBACK_LINES:]
            msg = " ".join(str(getattr(e, "message", "") or e).split())[:300]
            if msg.startswith("config error:"):
                return result("failed", msg)
            return result("failed", f"staging failed: {type(e).__name__}: {msg}")
        timings["stage_s"] = time.monotonic() - t0

        # ----- 2. train (workspace checkout, confined) -----
        cmd = [sys.executable, "-P", "-m", spec.train_entry, "--config", str(staged_config),
               "--inputs", str(private / "inputs"), "--out", str(out_dir), "--device", spec.device]
        cmd = confine_mod.launcher_command(confine_policy(spec, code_dir, private, out_dir), cmd)
        preexec = _limit_memory(spec.memory_limit_mb * 1024 * 1024) if spec.memory_limit_mb else None
        progress = _ProgressTail(out_dir / "progress.jsonl")
        # the evaluation starts now and imports its code while the training runs (EVAL_BOOT)
        eval_cmd = [sys.executable, "-P", "-c", EVAL_BOOT, spec.eval_entry, "--config", str(staged_config),
                    "--inputs", str(private / "inputs"), "--out", str(out_dir)]
        ev = _Proc(eval_cmd, build_eval_env(spec, trusted_root), out_dir, private / "eval.log", spec.log_cap_bytes,
                   stdin_pipe=True)
        ev.record(out_dir, "eval")
        protected = set(PROTECTED_FILES) | ({config.name} if config.parent == out_dir else set())
        snapshot = _snapshot(out_dir, protected)
        t_train = time.monotonic()
        proc = _Proc(cmd, build_env(spec, private=private), out_dir, out_dir / "train.log", spec.log_cap_bytes,
                     preexec)
        proc.record(out_dir, "launcher")
        status = proc.wait(deadline, spec.grace_s, cancel, tick=lambda: deliver(progress.poll()))
        timings["train_s"] = time.monotonic() - t_train
        tampered = _restore(out_dir, snapshot)
        deliver(progress.poll())
        code = proc.code
        tail = list(proc.err_tail)
        try:
            confinement = (private / "confinement.txt").read_text().strip()
        except OSError:
            confinement = ""
        if status == "killed":
            return result("killed", "cancelled: process group terminated")
        if status == "timeout":
            return result("timeout", f"wall-clock timeout after {spec.timeout_s:g} s: process group terminated")
        if code != 0:
            return result("failed", _failure_reason(code, tail, spec.memory_limit_mb, _read_failure(out_dir)))
        if tampered:
            return result("failed", f"the training changed {', '.join(tampered)} in its out dir (restored); "
                                    "those are the loop's records")
        last = progress.last
        if last is not None and isinstance(last.get("loss"), (int, float)) and not math.isfinite(last["loss"]):
            return result("failed", f"NaN loss at step {last.get('step')} (progress.jsonl)")
        links = find_links(out_dir)
        if links:
            for rel in links:
                (out_dir / rel).unlink(missing_ok=True)
            return result("failed", f"the training left links in its out dir ({', '.join(links[:5])}): removed; "
                                    "outputs must be plain files")
        for name in EVAL_OUTPUTS:  # only the evaluation writes these
            (out_dir / name).unlink(missing_ok=True)

        # ----- 3. evaluate (trusted code, own process group, started with the training) -----
        t_eval = time.monotonic()
        ev.go()
        status = ev.wait(max(deadline, t_eval + min(EVAL_MIN_S, spec.timeout_s)), spec.grace_s, cancel)
        timings["eval_s"] = time.monotonic() - t_eval
        code = ev.code
        tail = list(ev.err_tail)
        if status == "killed":
            return result("killed", "cancelled during evaluation: process group terminated")
        if status == "timeout":
            return result("timeout", f"wall-clock timeout after {spec.timeout_s:g} s (during evaluation): "
                                     "process group terminated")
        if code != 0:
            return result("failed", "evaluation: " + _failure_reason(code, tail, None, _read_failure(out_dir)))
        metrics, problem = _read_metrics(out_dir)
        if problem:
            return result("failed", problem, metrics)
        return result("ok", "ok", metrics)
    finally:
        if ev is not None:
            ev.abort()  # a failed or cancelled training: the waiting evaluation goes too
            if (private / "eval.log").is_file():
                shutil.copyfile(private / "eval.log", out_dir / "eval.log")
        shutil.rmtree(private, ignore_errors=True)
