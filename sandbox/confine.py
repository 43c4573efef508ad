"""OS confinement of one training process (docs/contracts.md §2b, §4).

The runner does not exec the training directly; it runs this file as a small
launcher::

    python -I -S sandbox/confine.py POLICY_JSON -- python -P -m <entry> ...

The launcher (standard library only, so it starts in a few milliseconds):

1. dies with the runner (PR_SET_PDEATHSIG), and refuses to start when the
   runner is already gone;
2. when `confine` is set, moves into new user, PID and network namespaces
   (the training then has no network interface at all and no capability in
   the host's user namespace) and forks an *init* that is PID 1 there; when
   that init exits, the kernel kills every process left in the namespace, so
   a ``setsid`` grandchild cannot outlive the training. Without namespaces
   the launcher is a child subreaper and kills every orphan it inherits;
3. forks the training, which applies Landlock before ``execve``: read (and
   execute) only the paths in `read`, read/write only the paths in `write`
   (no symlinks, no cross-directory links), no TCP bind or connect, no
   abstract unix sockets or signals outside its domain, and - through
   Landlock's ptrace scoping - no access to other processes' /proc entries.
   PR_SET_NO_NEW_PRIVS comes first (Landlock needs it);
4. exits with the training's status (re-raising a fatal signal).

Which confinement was applied is written to `report` (one line) before exec;
`describe()` gives the same line from a probe, for run.yaml and the header.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import struct
import sys

# ----- kernel constants (include/uapi/linux/landlock.h, sched.h, prctl.h) -----
SYS_LANDLOCK_CREATE_RULESET = 444  # same number on x86_64 and aarch64
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1
LANDLOCK_RULE_NET_PORT = 2

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

#: every filesystem right a given ABI knows (a ruleset may only name those)
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1}
FS_FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
READ_RIGHTS = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
#: a writable tree: everything except symlinks, device nodes and cross-directory links (REFER):
#: a link in the out dir could point the evaluation at a file the training cannot read
WRITE_RIGHTS = (READ_RIGHTS | FS_WRITE_FILE | FS_REMOVE_DIR | FS_REMOVE_FILE | FS_MAKE_DIR | FS_MAKE_REG
                | FS_MAKE_SOCK | FS_MAKE_FIFO | FS_TRUNCATE)
DEVICE_RIGHTS = FS_READ_FILE | FS_WRITE_FILE | FS_IOCTL_DEV  # /dev/null, GPUs

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

NONE_LABEL = "none: process separation only"
OFF_LABEL = "off (--no-confine): process separation only"
NS_ONLY_LABEL = "pid/net namespaces only (no Landlock: files are not confined)"
EXIT_CONFINE_FAILED = 126  # the training never started: confinement could not be applied

_libc = None


def _lib():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _check(rc: int, what: str) -> int:
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is missing or disabled."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        rc = _lib().syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), None, ctypes.c_size_t(0),
                            ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    except (OSError, AttributeError):
        return 0
    return max(0, int(rc))


def _prctl(option: int, arg: int) -> None:
    _check(_lib().prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0)), f"prctl({option})")


def _unshare(flags: int) -> None:
    _check(_lib().unshare(ctypes.c_int(flags)), "unshare")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def enter_namespaces() -> bool:
    """New user + PID + network namespaces for the children of the caller; False when refused."""
    uid, gid = os.geteuid(), os.getegid()
    try:
        _unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET)
    except OSError:
        return False
    # the same ids inside: files keep their owners; no capability survives in the host namespace
    try:
        _write("/proc/self/setgroups", "deny")
    except OSError:
        pass
    _write("/proc/self/uid_map", f"{uid} {uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {gid} 1\n")
    return True


_probe_cache: dict[str, object] = {}


def namespaces_available() -> bool:
    """Whether this process may create the namespaces (tried in a throw-away child)."""
    if "ns" not in _probe_cache:
        ok = False
        if sys.platform.startswith("linux"):
            try:
                pid = os.fork()
            except OSError:
                pid = -1
            if pid == 0:  # child: try, report through the exit code, never return
                try:
                    code = 0 if enter_namespaces() else 1
                except BaseException:
                    code = 2
                os._exit(code)
            if pid > 0:
                _, status = os.waitpid(pid, 0)
                ok = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        _probe_cache["ns"] = ok
    return bool(_probe_cache["ns"])


def describe(confine: bool = True) -> str:
    """The confinement a training gets here: "landlock ABI N" (+ namespaces) or "none: ..."."""
    if not confine:
        return OFF_LABEL
    return _label(landlock_abi(), namespaces_available())


def _label(abi: int, ns: bool) -> str:
    if abi >= 1:
        return f"landlock ABI {abi}" + (" + pid/net namespaces" if ns else "")
    return NS_ONLY_LABEL if ns else NONE_LABEL


# ----- Landlock -----

def _ruleset(abi: int) -> tuple[int, int]:
    """(ruleset fd, handled fs rights)."""
    fs = _FS_BY_ABI.get(abi, (1 << 16) - 1)
    net = (NET_BIND_TCP | NET_CONNECT_TCP) if abi >= 4 else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    if abi >= 6:
        attr = struct.pack("=QQQ", fs, net, scoped)
    elif abi >= 4:
        attr = struct.pack("=QQ", fs, net)
    else:
        attr = struct.pack("=Q", fs)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = _check(_lib().syscall(ctypes.c_long(SYS_LANDLOCK_CREATE_RULESET), buf, ctypes.c_size_t(len(attr)),
                               ctypes.c_uint32(0)), "landlock_create_ruleset")
    return int(fd), fs


def _add_path(ruleset: int, handled: int, path: str, rights: int) -> bool:
    """Allow `rights` beneath `path` (a missing path is skipped: not every machine has /lib64)."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        if not os.path.isdir(path):
            rights &= FS_FILE_RIGHTS
        rights &= handled
        if not rights:
            return False
        attr = struct.pack("=Qi", rights, fd)  # struct landlock_path_beneath_attr is packed
        buf = ctypes.create_string_buffer(attr, len(attr))
        _check(_lib().syscall(ctypes.c_long(SYS_LANDLOCK_ADD_RULE), ctypes.c_int(ruleset),
                              ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), buf, ctypes.c_uint32(0)),
               f"landlock_add_rule({path})")
        return True
    finally:
        os.close(fd)


def apply_landlock(read: list[str], write: list[str], devices: list[str]) -> int:
    """Restrict the calling process (and every later child) for good; returns the ABI used."""
    abi = landlock_abi()
    if abi < 1:
        raise OSError(errno.ENOSYS, "Landlock is not available")
    ruleset, handled = _ruleset(abi)
    try:
        for p in read:
            _add_path(ruleset, handled, p, READ_RIGHTS)
        for p in devices:
            _add_path(ruleset, handled, p, DEVICE_RIGHTS)
        for p in write:
            _add_path(ruleset, handled, p, WRITE_RIGHTS)
        # no TCP port rule at all: every bind and connect is refused (ABI >= 4)
        _prctl(PR_SET_NO_NEW_PRIVS, 1)
        _check(_lib().syscall(ctypes.c_long(SYS_LANDLOCK_RESTRICT_SELF), ctypes.c_int(ruleset), ctypes.c_uint32(0)),
               "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return abi


def own_proc_dir() -> str:
    """/proc/<pid> of the caller, resolved now (a rule on /proc/self would follow the launcher)."""
    return os.path.realpath("/proc/self")


# ----- the launcher -----

def _exit_like(status: int) -> None:
    """Leave with the same outcome as a child's wait status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1)


def _children() -> list[int]:
    """Pids whose parent is this process (Linux /proc scan: works without CONFIG_PROC_CHILDREN)."""
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == me:
            out.append(int(name))
    return out


def _kill_descendants() -> None:
    """Kill and reap every process left below the caller (a subreaper inherits all orphans)."""
    for _ in range(1000):
        kids = _children()
        if not kids:
            break
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break


def _exec_training(policy: dict, cmd: list[str], report_fd: int | None) -> None:
    """In the training's own process: die with the parent, confine, exec. Never returns."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        label = NONE_LABEL
        if policy.get("confine"):
            abi = landlock_abi() if policy.get("landlock", True) else 0  # "landlock": False = tests
            if abi >= 1:  # without Landlock (old kernel, LSM off) the training still runs, and says so
                read = list(policy.get("read", [])) + [own_proc_dir()]
                apply_landlock(read, list(policy.get("write", [])), list(policy.get("devices", [])))
            else:
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
            label = _label(abi, bool(policy.get("_ns")))
        elif not policy.get("requested", True):
            label = OFF_LABEL
        if report_fd is not None:
            os.write(report_fd, (label + "\n").encode())
            os.close(report_fd)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.execve(cmd[0], cmd, os.environ)
    except BaseException as e:  # noqa: BLE001 - say why the training never started
        try:
            os.write(2, f"confinement error: {e}\n".encode())
        finally:
            os._exit(EXIT_CONFINE_FAILED)


def launch(policy: dict, cmd: list[str]) -> None:
    """The launcher's body (see the module docstring). Never returns."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    parent = policy.get("parent_pid")
    if parent and os.getppid() != parent:
        os._exit(EXIT_CONFINE_FAILED)  # the runner died before we could tie ourselves to it
    report_fd = None
    if policy.get("report"):
        report_fd = os.open(policy["report"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    ns = bool(policy.get("confine")) and policy.get("namespaces", True) and enter_namespaces()
    policy["_ns"] = ns
    status_r, status_w = os.pipe()
    alive_r, alive_w = os.pipe()  # EOF on alive_r: the launcher is gone
    child = os.fork()
    if child == 0:
        os.close(status_r)
        os.close(alive_w)
        if not ns:
            os.close(alive_r)
            _exec_training(policy, cmd, report_fd)
        # PID 1 of the new namespace: when it exits, the kernel kills everything left in it
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        import select
        if select.select([alive_r], [], [], 0)[0]:  # getppid() is 0 across namespaces: ask the pipe
            os._exit(EXIT_CONFINE_FAILED)
        os.close(alive_r)
        training = os.fork()
        if training == 0:
            os.close(status_w)
            _exec_training(policy, cmd, report_fd)
        if report_fd is not None:
            os.close(report_fd)

        def forward(sig, _frame):
            try:
                os.kill(training, sig)
            except ProcessLookupError:
                pass

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, forward)
        while True:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                os._exit(1)
            except InterruptedError:
                continue
            if pid == training:
                os.write(status_w, struct.pack("=i", status))
                os._exit(0)
    # the launcher
    os.close(status_w)
    os.close(alive_r)
    if report_fd is not None:
        os.close(report_fd)
    if not ns:
        _prctl(PR_SET_CHILD_SUBREAPER, 1)  # setsid orphans come back to us, and die below

    def forward_outer(sig, _frame):
        try:
            os.kill(child, sig)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward_outer)
    status = None
    while status is None:
        try:
            pid, st = os.waitpid(child, 0)
        except InterruptedError:
            continue
        if pid == child:
            status = st
    if ns:
        data = os.read(status_r, 4)
        if len(data) == 4:
            status = struct.unpack("=i", data)[0]
    else:
        _kill_descendants()
    _exit_like(status)


def launcher_command(policy: dict, cmd: list[str], python: str | None = None) -> list[str]:
    """The argv that runs `cmd` under this launcher."""
    return [python or sys.executable, "-I", "-S", os.path.abspath(__file__), json.dumps(policy), "--", *cmd]


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.stderr.write("usage: confine.py POLICY_JSON -- COMMAND...\n")
        os._exit(2)
    launch(json.loads(argv[0]), argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
