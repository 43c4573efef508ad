"""Walk injected kill points over a run: creation, every file write of the loop, every git call,
every checkpoint. Used by tests/test_reliability_killpoints.py (run as a subprocess so that it forks
from a process with no threads).

    python -m tests._killwalk WORK_DIR [--stride N] [--double N] [--iterations N]

A reference run counts its operations (open for writing, os.open with O_CREAT/O_WRONLY/O_RDWR,
rename/replace, mkdir, unlink, subprocess exec, LangGraph checkpoint put): N points. For each k
the run is started in a forked child that dies by os._exit(137) (no handler, no finally: like
SIGKILL) just before operation k; appends to nodes.jsonl and analysis.md are also cut halfway
(a torn write). Then a second child recovers as a user would (`agent resume` when the run
directory exists, else `agent run` again) and the result must equal the reference: the same nodes
(config, parent, score, mutation, observation, next, ...), analysis.md, memory.md, instructions.md,
ucb_scores.txt, block snapshots, workspace tags, status done, no torn line, no half-built run
directory left. `--double N`: every N-th point also kills the recovery once, at a spread of its
own points, before the final recovery. Prints one JSON line: points, tried, unrecoverable.
"""

from __future__ import annotations

import argparse
import builtins
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.run import RunOptions, resume_run, start_run  # noqa: E402
from sandbox.runner import RunResult  # noqa: E402
from rundir.io import load_yaml  # noqa: E402

PLUGINS = ROOT / "tests" / "fixtures" / "toy_regime" / "plugins"

_real_open, _real_os_open = builtins.open, os.open
_real = {name: getattr(os, name) for name in ("replace", "rename", "mkdir", "unlink")}
_real_exec = subprocess.Popen._execute_child


class Hook:
    """Counts operations; dies at operation `kill_at` (`torn`: halfway through an append)."""

    def __init__(self, kill_at: int | None = None, torn: bool = False):
        self.n, self.kill_at, self.torn = 0, kill_at, torn
        self.ops: list[str] = []
        self.paused = 0

    def point(self, what: str) -> bool:
        """True: the caller must tear this write (write half, then die)."""
        if self.paused:
            return False
        k = self.n
        self.n += 1
        self.ops.append(what)
        if self.kill_at is not None and k == self.kill_at:
            if self.torn and what.startswith("open a ") and what.endswith(("nodes.jsonl", "analysis.md")):
                return True
            os._exit(137)
        return False


class _TornFile:
    def __init__(self, f):
        self._f = f

    def write(self, data):
        half = data[: max(1, len(data) // 2)]
        self._f.write(half)
        self._f.flush()
        os._exit(137)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


def install(hook: Hook) -> None:
    def _open(file, mode="r", *a, **kw):
        if isinstance(file, (str, os.PathLike)) and any(c in mode for c in "wax+"):
            tear = hook.point(f"open {mode[0]} {_name(file)}")
            f = _real_open(file, mode, *a, **kw)
            return _TornFile(f) if tear else f
        return _real_open(file, mode, *a, **kw)

    def _os_open(path, flags, *a, **kw):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            hook.point(f"os.open {_name(path)}")
        return _real_os_open(path, flags, *a, **kw)

    def wrap(name):
        real = _real[name]

        def f(*a, **kw):
            hook.point(f"{name} {_name(a[0]) if a else ''}")
            return real(*a, **kw)
        return f

    def _exec(self, args, *a, **kw):
        hook.point("exec " + " ".join(map(str, list(args)[:3])) if isinstance(args, (list, tuple)) else f"exec {args}")
        return _real_exec(self, args, *a, **kw)

    builtins.open = _open
    io.open = _open
    os.open = _os_open
    for name in _real:
        setattr(os, name, wrap(name))
    subprocess.Popen._execute_child = _exec
    from langgraph.checkpoint.sqlite import SqliteSaver

    for meth in ("put", "put_writes"):
        real = getattr(SqliteSaver, meth)

        def f(self, *a, _real=real, _m=meth, **kw):
            hook.point(f"checkpoint {_m}")
            return _real(self, *a, **kw)
        setattr(SqliteSaver, meth, f)


def _name(p) -> str:
    p = str(p)
    return p.rsplit("/run/", 1)[-1] if "/run/" in p else p.rsplit("/", 1)[-1]


class FakeExecutor:
    """Trainings in-process: the toy's score from the config; metrics.json like a real training.
    Its writes are the training's, not the agent's: no kill points inside."""

    def __init__(self, hook: Hook | None):
        self.hook = hook

    def run_batch(self, specs, on_progress=None, cancel=None):
        import math

        if self.hook is not None:
            self.hook.paused += 1
        try:
            out = []
            for sp in specs:
                t = load_yaml(sp.config_path)["training"]
                lr = float(t["learning_rate"])
                q = math.exp(-((math.log10(lr) - math.log10(0.01)) ** 2) / 0.5)
                q *= max(0.0, 1 - 0.03 * abs(float(t["coeff_reg"]) - 2.0)) * (1 - 0.02 * abs(math.log2(t["batch_size"] / 8)))
                q *= 1 - 1 / (2 + int(t["n_epochs"]) * int(t["data_augmentation_loop"]))
                m = {"fit_R2": q, "test_pearson": min(1.0, q + 0.1), "test_R2": q * 0.9, "final_loss": 1 - q}
                Path(sp.out_dir).mkdir(parents=True, exist_ok=True)
                (Path(sp.out_dir) / "metrics.json").write_text(json.dumps(m))
                out.append(RunResult(slot=sp.slot, node_id=sp.node_id, status="ok", exit_code=0, reason="ok",
                                     traceback_tail="", metrics=m, duration_s=0.01, out_dir=sp.out_dir))
            return out
        finally:
            if self.hook is not None:
                self.hook.paused -= 1

    def shutdown(self):
        pass


def _opts(run_dir: Path, iterations: int) -> RunOptions:
    return RunOptions(regime="toy", regime_path=[PLUGINS], slots=2, iterations=iterations, policy="heuristic",
                      run_dir=run_dir, seed=0)


def _child(fn) -> int:
    """Run fn() in a forked child; its exit status (137: killed at the point)."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 — report, exit non-zero
            try:
                sys.stderr.write(f"child error: {type(e).__name__}: {e}\n")
            finally:
                code = 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _go(run_dir: Path, iterations: int, hook: Hook | None, ops_out: Path | None = None):
    def fn():
        if hook is not None:
            install(hook)
        ex = FakeExecutor(hook)
        try:
            if (run_dir / "run.yaml").is_file():
                resume_run(run_dir, executor=ex)
            else:
                start_run(_opts(run_dir, iterations), executor=ex)
        finally:
            if ops_out is not None and hook is not None:
                hook.paused += 1
                with _real_open(ops_out, "w") as f:
                    json.dump(hook.ops, f)
    return fn


def summary(run_dir: Path) -> dict:
    """What must be the same after any kill and recovery (no times, no commit shas)."""
    out: dict = {}
    lines = (run_dir / "nodes.jsonl").read_text().splitlines()
    recs = [json.loads(ln) for ln in lines]
    for r in recs:
        for k in ("finished_at", "duration_s", "commit", "out_dir"):
            r.pop(k, None)
        if r.get("status") == "ok":
            r.pop("reason", None)  # "ok" or "collected on resume"
        for cc in r.get("code_changes", []):
            cc.pop("commit", None)
    out["nodes"] = recs
    for name in ("analysis.md", "memory.md", "instructions.md", "ucb_scores.txt"):
        out[name] = (run_dir / name).read_text()
    out["blocks"] = {str(p.relative_to(run_dir)): p.read_text() for p in sorted((run_dir / "blocks").rglob("*.md"))} \
        if (run_dir / "blocks").is_dir() else {}
    st = json.loads((run_dir / "status.json").read_text())
    out["status"] = (st["phase"], st["iterations_done"])
    tags = subprocess.run(["git", "-C", str(run_dir / "workspace"), "tag", "-l"], capture_output=True, text=True).stdout
    out["tags"] = sorted(tags.split())
    out["leftover_creations"] = sorted(p.name for p in run_dir.parent.glob(".creating-*"))
    return out


def _diff(a: dict, b: dict) -> str:
    for k in a:
        if a[k] != b.get(k):
            return k
    return ""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("work", type=Path)
    ap.add_argument("--stride", type=int, default=1, help="walk every N-th point")
    ap.add_argument("--double", type=int, default=0, help="every N-th point also kills the recovery")
    ap.add_argument("--iterations", type=int, default=6)
    a = ap.parse_args()
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    ref_dir, run_dir = work / "ref" / "run", work / "walk" / "run"
    ref_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    ops_path = work / "ops.json"
    code = _child(_go(ref_dir, a.iterations, Hook(), ops_path))
    if code != 0:
        print(json.dumps({"error": f"reference run failed ({code})"}))
        return 1
    ops = json.loads(ops_path.read_text())
    ref = summary(ref_dir)
    tried, bad, recovered_kinds = 0, [], set()

    def reset():
        shutil.rmtree(run_dir.parent)
        run_dir.parent.mkdir()

    # every stride-th point, plus the first point of each kind: a sample that hits every kind even
    # when another part (e.g. the runner) adds file operations and shifts the stride
    firsts = {}
    for i, op in enumerate(ops):
        firsts.setdefault(op.split()[0], i)
    for k in sorted(set(range(0, len(ops), a.stride)) | set(firsts.values())):
        variants = [False] + ([True] if ops[k].startswith("open a ") and ops[k].endswith(("nodes.jsonl", "analysis.md"))
                              else [])
        for torn in variants:
            reset()
            tried += 1
            c1 = _child(_go(run_dir, a.iterations, Hook(kill_at=k, torn=torn)))
            if c1 != 137:
                bad.append({"point": k, "op": ops[k], "torn": torn, "problem": f"kill not reached (exit {c1})"})
                continue
            if a.double and k % a.double == 0:
                # a second kill during the recovery, at a point spread over its operations
                count = Hook()
                probe = work / "probe"
                if probe.exists():
                    shutil.rmtree(probe)
                shutil.copytree(run_dir.parent, probe, symlinks=True)
                _child(_go(probe / "run", a.iterations, count, work / "ops2.json"))
                m = len(json.loads((work / "ops2.json").read_text()))
                shutil.rmtree(probe)
                j = (k * 7919) % max(1, m)
                tried += 1
                c2 = _child(_go(run_dir, a.iterations, Hook(kill_at=j)))
                if c2 not in (0, 137):
                    bad.append({"point": k, "op": ops[k], "torn": torn, "second_point": j,
                                "problem": f"recovery failed (exit {c2})"})
                    continue
            c3 = _child(_go(run_dir, a.iterations, None))
            if c3 != 0:
                bad.append({"point": k, "op": ops[k], "torn": torn, "problem": f"recovery failed (exit {c3})"})
                continue
            got = summary(run_dir)
            if got != ref:
                bad.append({"point": k, "op": ops[k], "torn": torn, "problem": f"differs in {_diff(ref, got)}"})
            recovered_kinds.add(ops[k].split()[0])
        # progress (stderr): a walk cut short still says how far it got
        print(f"point {k}/{len(ops)} {ops[k]!r}: tried {tried}, unrecoverable {len(bad)}", file=sys.stderr, flush=True)
    print(json.dumps({"points": len(ops), "tried": tried, "unrecoverable": bad,
                      "kinds": sorted(recovered_kinds)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
