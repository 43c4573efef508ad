"""sandbox/confine.py: the launcher's exit status, its process reaping (with and without
namespaces), death with its parent, and Landlock's ptrace scoping of /proc."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sandbox import confine
from sandbox.runner import SYSTEM_DEVICES, SYSTEM_READ, _interpreter_paths

HAVE_LANDLOCK = confine.landlock_abi() >= 1
needs_landlock = pytest.mark.skipif(not HAVE_LANDLOCK, reason="no Landlock on this kernel")


def _policy(tmp_path: Path, confined: bool = True, namespaces: bool = True, read_extra=()) -> dict:
    return {"confine": confined, "requested": confined, "namespaces": namespaces, "parent_pid": os.getpid(),
            "read": _interpreter_paths() + list(SYSTEM_READ) + list(read_extra), "write": [str(tmp_path)],
            "devices": list(SYSTEM_DEVICES), "report": str(tmp_path / "report.txt")}


def _run(policy: dict, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = confine.launcher_command(policy, [sys.executable, "-I", "-c", code])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, start_new_session=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (ProcessLookupError, OSError):
        return False


def _wait_dead(pid: int, s: float = 5.0) -> bool:
    t0 = time.time()
    while _alive(pid) and time.time() - t0 < s:
        time.sleep(0.05)
    return not _alive(pid)


def test_describe_names_the_confinement():
    assert confine.describe(False) == confine.OFF_LABEL
    label = confine.describe(True)
    if HAVE_LANDLOCK:
        assert label.startswith(f"landlock ABI {confine.landlock_abi()}")
    else:
        assert label == confine.NONE_LABEL


@pytest.mark.parametrize("confined", [True, False])
def test_exit_status_is_the_trainings(tmp_path, confined):
    assert _run(_policy(tmp_path, confined), "import sys; sys.exit(7)").returncode == 7
    res = _run(_policy(tmp_path, confined), "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert res.returncode == -signal.SIGSEGV
    assert (tmp_path / "report.txt").read_text().strip() == (confine.describe(True) if confined
                                                             else confine.OFF_LABEL)


@pytest.mark.parametrize("namespaces", [True, False])
def test_setsid_grandchildren_die_with_the_training(tmp_path, namespaces):
    """PID 1 of a namespace (kernel kills the rest) or, without namespaces, the launcher as subreaper."""
    pid_file = tmp_path / "gc.pid"
    code = ("import os, subprocess, sys, time\n"
            f"c = \"import os,time; open({str(pid_file)!r}+'.t','w').write(os.readlink('/proc/self')); "
            f"os.replace({str(pid_file)!r}+'.t', {str(pid_file)!r}); time.sleep(60)\"\n"
            "subprocess.Popen([sys.executable, '-c', c], start_new_session=True)\n"
            f"while not os.path.exists({str(pid_file)!r}): time.sleep(0.01)\n")
    res = _run(_policy(tmp_path, confined=HAVE_LANDLOCK, namespaces=namespaces), code)
    assert res.returncode == 0, res.stderr
    assert _wait_dead(int(pid_file.read_text())), "the setsid grandchild outlived the training"


def test_training_dies_with_the_runner(tmp_path):
    """PR_SET_PDEATHSIG: SIGKILL the process that started the launcher; the training goes too."""
    pid_file = tmp_path / "t.pid"
    inner = (f"import os,time; open({str(pid_file)!r}+'.t','w').write(os.readlink('/proc/self')); "
             f"os.replace({str(pid_file)!r}+'.t', {str(pid_file)!r}); time.sleep(60)")
    parent = ("import json, subprocess, sys, time\n"
              "from sandbox import confine\n"
              f"pol = json.loads({json.dumps(json.dumps(_policy(tmp_path)))})\n"
              "import os; pol['parent_pid'] = os.getpid()\n"
              f"subprocess.Popen(confine.launcher_command(pol, [sys.executable, '-c', {inner!r}]))\n"
              "time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", parent], cwd=Path(__file__).resolve().parent.parent)
    try:
        t0 = time.time()
        while not pid_file.exists() and time.time() - t0 < 30:
            time.sleep(0.05)
        training = int(pid_file.read_text())
        assert _alive(training)
        p.kill()
        p.wait()
        assert _wait_dead(training), "the training outlived the runner"
    finally:
        if p.poll() is None:
            p.kill()


@needs_landlock
def test_other_processes_proc_entries_are_unreadable_even_when_proc_is_granted(tmp_path):
    """Landlock's ptrace scoping alone (the policy grants all of /proc) denies /proc/<parent>/environ."""
    code = (f"import os\nfor f in ('environ', 'mem', 'maps'):\n"
            f"    try: open('/proc/{os.getpid()}/' + f, 'rb').read(10); print('READ', f)\n"
            f"    except OSError as e: print('DENIED', f, e.errno)\n"
            f"print('SELF', len(open('/proc/self/status').read()) > 0)\n")
    res = _run(_policy(tmp_path, read_extra=["/proc"]), code)
    assert res.returncode == 0, res.stderr
    assert "READ" not in res.stdout and res.stdout.count("DENIED") == 3, res.stdout
    assert "SELF True" in res.stdout
    # the same without confinement reads them (the check above is the confinement's doing)
    res = _run(_policy(tmp_path, confined=False), code)
    assert "READ environ" in res.stdout, res.stdout


@needs_landlock
def test_confinement_error_fails_before_exec(tmp_path):
    bad = _policy(tmp_path)
    bad["read"] = []  # not even the interpreter: exec must fail, with a clear line
    res = _run(bad, "print('should not run')")
    assert res.returncode == confine.EXIT_CONFINE_FAILED
    assert "confinement error:" in res.stderr and "should not run" not in res.stdout


def test_policy_grants_only_what_the_training_needs(tmp_path):
    from sandbox.runner import RunSpec, confine_policy

    spec = RunSpec(slot=0, node_id=0, config_path=tmp_path / "c.yaml", out_dir=tmp_path / "out", code_dir=tmp_path,
                   train_entry="p.train", eval_entry="p.evaluate", stage_entry="p.data:stage")
    pol = confine_policy(spec, tmp_path / "code", tmp_path / "priv", tmp_path / "out")
    assert pol["write"] == [str(tmp_path / "out"), str(tmp_path / "priv" / "home"), str(tmp_path / "priv" / "tmp")]
    assert str(tmp_path / "code") in pol["read"] and str(tmp_path / "priv" / "inputs") in pol["read"]
    assert str(tmp_path / "priv") not in pol["read"]  # not the private dir as a whole
    home = os.path.expanduser("~")
    assert home not in pol["read"] and "/" not in pol["read"] and "/proc" not in pol["read"]
    assert not any(p.startswith("/dev/nvidia") for p in pol["devices"]) and "/sys" not in pol["read"]
    gpu = confine_policy(spec.model_copy(update={"device": "cuda"}), tmp_path / "code", tmp_path / "priv",
                         tmp_path / "out")
    assert "/sys" in gpu["read"]  # the CUDA driver reads the PCI topology


def test_without_landlock_the_training_still_runs_and_says_so(tmp_path):
    pol = _policy(tmp_path)
    pol["landlock"] = False  # as on a kernel without Landlock
    res = _run(pol, f"print(open({str(Path(__file__))!r}).read()[:3])")  # unconfined files: readable
    assert res.returncode == 0, res.stderr
    expected = confine.NS_ONLY_LABEL if confine.namespaces_available() else confine.NONE_LABEL
    assert (tmp_path / "report.txt").read_text().strip() == expected
