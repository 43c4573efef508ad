"""One driver per run directory, and no training outliving its run.

`DriverLock`: `agent run` / `agent resume` hold an exclusive `flock` on
RUN_DIR/driver.lock for their whole life. The kernel releases it when the
process dies (even by SIGKILL), so a crashed driver never blocks a resume,
and two drivers can never move the same run. The file holds the holder's pid
(for the refusal message); it is never deleted (deleting a lock file races
with a process about to lock it).

`end_trainings`: every process the runner starts for a training carries
GNN_AGENT_RUN=<abs run dir> in its environment (RunSpec.extra_env), and so do
their children, including ones that left the process group with setsid.
After a driver died (SIGKILL, power cut of the terminal), its trainings may
still run; `agent resume` ends every process of this user whose
/proc/<pid>/environ carries this run's tag, plus those listed in a slot's
processes.jsonl (pid + start time, written by the runner when it records
them) before it relaunches anything, so a slot is never trained twice at once.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from pathlib import Path
from typing import Callable

LOCK_FILE = "driver.lock"
#: environment variable naming the run a training process belongs to
RUN_ENV = "GNN_AGENT_RUN"


class RunLocked(RuntimeError):
    """Another process drives this run directory (one-line message naming its pid)."""

    def __init__(self, run_dir: Path, pid: int | None):
        self.run_dir, self.pid = Path(run_dir), pid
        who = f"pid {pid}" if pid else "another process (pid not recorded yet)"
        super().__init__(f"run {run_dir} is already driven by {who} (it holds {LOCK_FILE})")


class DriverLock:
    """An exclusive, non-blocking flock on RUN_DIR/driver.lock."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "DriverLock":
        import fcntl

        # O_CLOEXEC: trainings (exec'd children) must not inherit the lock and keep it after we die
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunLocked(self.path.parent, lock_holder_pid(self.path.parent)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)  # closing the only descriptor releases the flock
            finally:
                self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "DriverLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder_pid(run_dir: Path) -> int | None:
    """The pid written in RUN_DIR/driver.lock (whether or not it still holds it)."""
    try:
        return int((Path(run_dir) / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def lock_held(run_dir: Path) -> int | None:
    """The holder's pid (0 when unknown) if RUN_DIR is driven right now, else None. Takes no lock."""
    import fcntl

    p = Path(run_dir) / LOCK_FILE
    try:
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return lock_holder_pid(run_dir) or 0
    finally:
        os.close(fd)  # also drops the shared lock if we got it
    return None


# ----------------------------------------------------------------------------- leftover trainings

def run_env(run_dir: Path) -> dict[str, str]:
    """The environment entry that tags a training process as belonging to `run_dir`."""
    return {RUN_ENV: str(Path(run_dir).resolve())}


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks since boot), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:  # the command name (field 2) may hold spaces and ')': split after the last ')'
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def _state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2:].split()[0]
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return _state(pid) not in ("Z", "X")  # a zombie is dead; only its parent's wait is missing


def _ancestors() -> set[int]:
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return out


def find_trainings(run_dir: Path) -> list[int]:
    """Pids of live processes that belong to `run_dir`'s trainings (never this process or its ancestors)."""
    run_dir = Path(run_dir).resolve()
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    tag = f"{RUN_ENV}={run_dir}".encode()
    me, uid = _ancestors(), os.getuid()
    found: set[int] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid in me:
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            env = (entry / "environ").read_bytes()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if tag in env.split(b"\0"):
            found.add(pid)
    # the runner's own records (pid + start time, so a reused pid is never hit)
    for rec_path in run_dir.glob("iterations/iter_*/slot_*/processes.jsonl"):
        try:
            lines = rec_path.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            try:
                rec = json.loads(line)
                pid, start = int(rec["pid"]), rec.get("start_time")
            except (ValueError, KeyError, TypeError):
                continue  # a torn or foreign line
            if pid in me or pid <= 1:
                continue
            if start is not None and _start_time(pid) != int(start):
                continue
            if pid_alive(pid):
                found.add(pid)
    return sorted(p for p in found if pid_alive(p))


def _signal_all(pids: list[int], sig: int) -> None:
    # their process groups too: a child that cleared its environment but stayed in the group
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:
                os.killpg(pid, sig)
        except OSError:
            pass
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    t0 = time.monotonic()
    while True:
        pids = [p for p in pids if pid_alive(p)]
        if not pids or time.monotonic() - t0 >= seconds:
            return pids
        time.sleep(0.05)


def end_trainings(run_dir: Path, grace_s: float = 5.0, log: Callable[[str], None] | None = None) -> list[int]:
    """SIGTERM every leftover process of `run_dir`'s trainings, SIGKILL what is left after `grace_s`.

    Returns the pids ended; raises RuntimeError naming any that survive SIGKILL."""
    ended: list[int] = []
    for _round in range(3):  # a process forked while we signalled is found by the next round
        pids = [p for p in find_trainings(run_dir) if p not in ended]
        if not pids:
            break
        if log is not None:
            log(f"ending {len(pids)} process(es) of this run's trainings still running: "
                + ", ".join(str(p) for p in pids))
        _signal_all(pids, signal.SIGTERM)
        left = _wait_gone(pids, grace_s)
        if left:
            _signal_all(left, signal.SIGKILL)
            left = _wait_gone(left, 5.0)
        if left:
            raise RuntimeError(f"process(es) {', '.join(map(str, left))} of run {run_dir} survive SIGKILL")
        ended += pids
    return ended


__all__ = ["DriverLock", "RunLocked", "lock_held", "lock_holder_pid", "run_env", "find_trainings",
           "end_trainings", "RUN_ENV", "LOCK_FILE"]
