"""The subprocess runner: stage -> confined training -> trusted evaluation; environment scrub,
process-group timeout, memory limit, outcomes."""

import json
import math
import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from sandbox.runner import RunSpec, build_env, build_eval_env, processes_file, regime_entries, run_training

FIXTURE = Path(__file__).parent / "fixtures" / "sandbox" / "fakesci"
TRUSTED = FIXTURE.parent  # the trusted copy: fakesci.data (stage) and fakesci.evaluate run from here
ENTRY = "fakesci.train"
ENTRIES = dict(train_entry=ENTRY, eval_entry="fakesci.evaluate", stage_entry="fakesci.data:stage",
               trusted_root=TRUSTED)


@pytest.fixture()
def code_dir(tmp_path: Path) -> Path:
    """A workspace-like copy of the fake package (+ an import-free regimes/ to prove shadowing)."""
    code = tmp_path / "code"
    shutil.copytree(FIXTURE, code / "fakesci")
    (code / "regimes").mkdir()
    (code / "regimes" / "__init__.py").write_text("")
    return code


def _spec(tmp_path: Path, code_dir: Path, name: str = "run", **cfg) -> RunSpec:
    extra = {k: cfg.pop(k) for k in ("timeout_s", "grace_s", "memory_limit_mb", "threads", "gpu", "log_cap_bytes",
                                     "confine") if k in cfg}
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(json.dumps(cfg))
    return RunSpec(slot=1, node_id=7, config_path=conf, out_dir=tmp_path / name, code_dir=code_dir,
                   **ENTRIES, **extra)


def test_ok_run_reports_metrics_and_progress(tmp_path, code_dir):
    seen = []
    res = run_training(_spec(tmp_path, code_dir, steps=4), on_progress=lambda slot, rec: seen.append((slot, rec)))
    assert res.status == "ok", res.reason
    assert res.exit_code == 0 and res.metrics["value"] == 1.0 and res.metrics["final_loss"] == 0.25
    assert (res.slot, res.node_id) == (1, 7)
    assert [r["step"] for _, r in seen] == [1, 2, 3, 4] and all(s == 1 for s, _ in seen)
    assert (res.out_dir / "train.log").is_file() and (res.out_dir / "eval.log").is_file()
    assert set(res.timings) == {"stage_s", "train_s", "eval_s"}
    # the evaluation saw the staged inputs and the runner's copy of the config
    seen_by_eval = json.loads((res.out_dir / "eval_seen.json").read_text())
    assert seen_by_eval["inputs"] == ["inputs.json"] and seen_by_eval["config"] == {"steps": 4}


def test_environment_is_scrubbed_and_workspace_copy_shadows_installed(tmp_path, code_dir, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test-secret")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://localhost:1")
    monkeypatch.setenv("SOME_OTHER_VAR", "1")
    monkeypatch.setenv("PYTHONPATH", "/work/main")
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HOME", str(tmp_path / "realhome"))
    res = run_training(_spec(tmp_path, code_dir, mode="env", threads=3, gpu="2"))
    assert res.status == "ok", res.reason
    dump = json.loads((res.out_dir / "env.json").read_text())
    env = dump["environ"]
    allowed = {"PATH", "HOME", "PYTHONPATH", "LANG", "LC_ALL", "CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
               "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TORCH_NUM_THREADS", "TMPDIR", "MPLBACKEND",
               "PYTHONDONTWRITEBYTECODE"}
    # the interpreter may add LC_CTYPE when coercing the C locale; nothing else may appear
    extra = set(env) - allowed - {"LC_CTYPE"}
    assert not extra, extra
    assert "ANTHROPIC_API_KEY" not in env and "SOME_OTHER_VAR" not in env
    assert env["PYTHONPATH"] == str(code_dir.resolve())
    assert env["OMP_NUM_THREADS"] == "3" and env["CUDA_VISIBLE_DEVICES"] == "2" and env["MPLBACKEND"] == "Agg"
    # no cache root, and HOME/TMPDIR are private directories that are gone after the run
    assert "GNN_AGENT_CACHE" not in env
    assert env["HOME"] != str(tmp_path / "realhome") and not Path(env["HOME"]).exists()
    assert Path(env["TMPDIR"]).parent == Path(env["HOME"]).parent
    assert dump["inputs"] == ["inputs.json"] and Path(dump["config"]).parent == Path(env["HOME"]).parent
    # the workspace copy of the package is imported, not the installed project's regimes/
    assert Path(dump["regimes_file"]).resolve() == (code_dir / "regimes" / "__init__.py").resolve()
    assert Path(dump["train_file"]).resolve().is_relative_to(code_dir.resolve())
    assert Path(dump["cwd"]).resolve() == res.out_dir
    assert Path(dump["sys_path"][0]).resolve() == code_dir.resolve()  # not the cwd, not the project


def test_extra_env_refuses_credentials(tmp_path, code_dir):
    with pytest.raises(ValueError, match="MY_API_KEY looks like a credential"):
        RunSpec(slot=0, node_id=0, config_path=tmp_path / "c", out_dir=tmp_path, code_dir=code_dir,
                **ENTRIES, extra_env={"MY_API_KEY": "x"})
    with pytest.raises(ValueError, match="GNN_AGENT_CACHE is set by the runner"):
        RunSpec(slot=0, node_id=0, config_path=tmp_path / "c", out_dir=tmp_path, code_dir=code_dir,
                **ENTRIES, extra_env={"GNN_AGENT_CACHE": "/x"})
    spec = RunSpec(slot=0, node_id=0, config_path=tmp_path / "c", out_dir=tmp_path, code_dir=code_dir,
                   **ENTRIES, extra_env={"GNN_AGENT_DEBUG": "1"})
    env = build_env(spec, parent={"ANTHROPIC_API_KEY": "x", "HOME": "/h", "GNN_AGENT_CACHE": "/c"})
    assert env["GNN_AGENT_DEBUG"] == "1" and "HOME" not in env and "GNN_AGENT_CACHE" not in env
    ev = build_eval_env(spec, TRUSTED, parent={"ANTHROPIC_API_KEY": "x", "HOME": "/h", "GNN_AGENT_CACHE": "/c"})
    # the plugin's trusted root, then this project's root (regimes.runtime of the agent's own version)
    assert ev["PYTHONPATH"].split(os.pathsep) == [str(TRUSTED), str(Path(__file__).resolve().parent.parent)]
    assert ev["GNN_AGENT_CACHE"] == "/c" and "ANTHROPIC_API_KEY" not in ev


def _gone(pid_or_pgid: int, group: bool) -> bool:
    """True when no process (group) is left; killed orphans are reaped by init shortly after."""
    for _ in range(100):
        try:
            (os.killpg if group else os.kill)(pid_or_pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("ignore_term", [False, True])
def test_hanging_training_is_killed_with_its_children(tmp_path, code_dir, ignore_term):
    spec = _spec(tmp_path, code_dir, mode="hang", ignore_term=ignore_term, timeout_s=1.5, grace_s=0.5)
    res = run_training(spec)
    assert res.status == "timeout" and "timeout after 1.5 s" in res.reason
    child = int((res.out_dir / "child.pid").read_text())
    assert _gone(child, group=False)  # the grandchild died with the group


def test_no_process_of_the_group_is_left(tmp_path, code_dir):
    pids = []
    import subprocess
    real_popen = subprocess.Popen

    class Spy(real_popen):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            pids.append(self.pid)

    import sandbox.runner as runner_mod
    runner_mod.subprocess.Popen = Spy
    try:
        res = run_training(_spec(tmp_path, code_dir, mode="hang", timeout_s=1.0, grace_s=0.3))
    finally:
        runner_mod.subprocess.Popen = real_popen
    assert res.status == "timeout"
    assert len(pids) == 2  # the launcher of the training and the waiting evaluation
    assert all(_gone(p, group=True) for p in pids)  # os.killpg(pgid, 0) raises ProcessLookupError
    records = [json.loads(l) for l in processes_file(res.out_dir).read_text().splitlines()]
    assert sorted(r["role"] for r in records) == ["eval", "launcher"] and {r["pid"] for r in records} == set(pids)
    assert all(isinstance(r["start_time"], int) for r in records)


def test_cancel_terminates_the_group(tmp_path, code_dir):
    cancel = threading.Event()
    threading.Timer(0.8, cancel.set).start()
    res = run_training(_spec(tmp_path, code_dir, mode="hang", timeout_s=60, grace_s=0.5), cancel=cancel)
    assert res.status == "killed" and "cancelled" in res.reason
    assert _gone(int((res.out_dir / "child.pid").read_text()), group=False)


def test_memory_limit_fails_cleanly(tmp_path, code_dir):
    res = run_training(_spec(tmp_path, code_dir, mode="alloc", alloc_mb=2048, memory_limit_mb=400))
    assert res.status == "failed"
    assert "out of memory" in res.reason and "400 MB" in res.reason
    assert "MemoryError" in res.traceback_tail
    # without the limit the same allocation (smaller) succeeds: the limit made the difference
    ok = run_training(_spec(tmp_path, code_dir, name="ok", mode="alloc", alloc_mb=128))
    assert ok.status == "ok", ok.reason


def test_nan_loss_is_failed_with_reason(tmp_path, code_dir):
    res = run_training(_spec(tmp_path, code_dir, mode="nan"))
    assert res.status == "failed" and res.exit_code == 3
    assert res.reason == "training diverged: loss is nan at step 3"
    res2 = run_training(_spec(tmp_path, code_dir, name="m", mode="nan_metric"))
    assert res2.status == "failed" and res2.exit_code == 0
    assert res2.reason.startswith("NaN loss: metric final_loss")
    assert math.isnan(res2.metrics["final_loss"]) and res2.metrics["value"] == 1.0


@pytest.mark.parametrize("mode,expect", [
    ("fail", "exit code 1: RuntimeError: boom in the fake training"),
    ("config_error", "config error: training.learning_rate_kk: unknown key"),
    ("failure_json", "config error: training.x: bad"),
    ("no_metrics", "exit 0 but metrics.json is missing"),
    ("bad_metrics", "metrics.json is not valid JSON"),
    ("no_predictions", "evaluation: exit code 4: predictions: predictions.pt is missing"),
    ("stage_fail", "staging failed: RuntimeError: no dataset for this config"),
    ("stage_config_error", "config error: simulation.n: must be > 0"),
])
def test_failures_say_why(tmp_path, code_dir, mode, expect):
    res = run_training(_spec(tmp_path, code_dir, mode=mode))
    assert res.status == "failed"
    assert res.reason.startswith(expect), res.reason
    if mode == "fail":
        assert "Traceback" in res.traceback_tail and "boom" in res.traceback_tail


def test_output_is_capped_keeping_head_and_tail(tmp_path, code_dir):
    res = run_training(_spec(tmp_path, code_dir, mode="spam", lines=5000, log_cap_bytes=8192))
    assert res.status == "ok", res.reason
    log = (res.out_dir / "train.log").read_text()
    assert len(log) < 8192 + 200
    assert "line 000000" in log and "line 004999" in log and "line 002500" not in log
    assert "bytes of output truncated" in log


def test_bad_launch_is_a_clear_error(tmp_path, code_dir):
    spec = RunSpec(slot=0, node_id=0, config_path=tmp_path / "missing.yaml", out_dir=tmp_path / "o",
                   code_dir=code_dir, **ENTRIES)
    with pytest.raises(ValueError, match="missing.yaml does not exist"):
        run_training(spec)
    (tmp_path / "c.yaml").write_text("{}")
    cuda = spec.model_copy(update={"config_path": tmp_path / "c.yaml", "device": "cuda", "memory_limit_mb": 4000})
    with pytest.raises(ValueError, match="memory_limit_mb .* works only with device cpu, not cuda"):
        run_training(cuda)
    with pytest.raises(ValueError, match="not a dotted module name"):
        RunSpec(slot=0, node_id=0, config_path=tmp_path, out_dir=tmp_path, code_dir=code_dir,
                **{**ENTRIES, "train_entry": "a b"})
    with pytest.raises(ValueError, match="not 'module:function'"):
        RunSpec(slot=0, node_id=0, config_path=tmp_path, out_dir=tmp_path, code_dir=code_dir,
                **{**ENTRIES, "stage_entry": "fakesci.data"})
    with pytest.raises(ValueError, match="inside the code checkout"):
        run_training(spec.model_copy(update={"config_path": tmp_path / "c.yaml", "trusted_root": code_dir}))


@pytest.mark.slow
def test_real_metabolism_entry_runs_from_a_workspace_checkout(tmp_path, monkeypatch):
    """End to end on the real package: workspace -> checkout -> runner; an edit in the
    checkout's commit (not in the installed copy) is what runs."""
    import sys as _sys

    import yaml

    _sys.path.insert(0, str(Path(__file__).parent))
    try:
        from _metabolism_tiny import kinetics_cfg
        from regimes.rate_constants import REGIME as regime
    except ImportError as e:  # pragma: no cover
        pytest.skip(f"metabolism package or its tiny configs not available: {e}")
    from sandbox.workspace import Workspace

    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    ws = Workspace.create(tmp_path / "workspace", regime)
    train = "regimes/metabolism/train.py"
    old = ws.read("root", train)
    marker = "    t = cfg.training\n    dev = data.conc.device\n    gen = torch.Generator().manual_seed(t.seed + 1)\n"
    assert old.count(marker) == 1
    broken = ws.commit_edit(ws.root_commit, train, old.replace(marker, marker + "    raise RuntimeError('the "
                                                                             "workspace copy ran')\n"), "probe")
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump(kinetics_cfg()))
    results = {}
    for name, commit in (("root", ws.root_commit), ("probe", broken)):
        code = ws.checkout(commit, tmp_path / name / "code")
        results[name] = run_training(RunSpec(slot=0, node_id=1, config_path=conf, out_dir=tmp_path / name,
                                             code_dir=code, train_entry=regime.train_entry,
                                             **regime_entries(regime), timeout_s=300))
    assert results["root"].status == "ok", results["root"].reason
    assert regime.primary_metric in results["root"].metrics
    assert results["probe"].status == "failed"
    assert "RuntimeError: the workspace copy ran" in results["probe"].reason


def test_only_the_evaluation_writes_the_score(tmp_path, code_dir):
    """A metrics.json the training writes itself is removed before the evaluation runs."""
    res = run_training(_spec(tmp_path, code_dir, mode="write_metrics"))
    assert res.status == "ok", res.reason
    assert res.metrics == {"value": 1.0, "final_loss": 0.25}


def test_stale_outputs_of_an_earlier_attempt_are_removed(tmp_path, code_dir):
    spec = _spec(tmp_path, code_dir, mode="no_predictions")
    spec.out_dir.mkdir(parents=True)
    for name in ("metrics.json", "predictions.pt", "failure.json", "progress.jsonl"):
        (spec.out_dir / name).write_text('{"value": 5.0, "final_loss": 0.0}')
    res = run_training(spec)
    assert res.status == "failed" and not (spec.out_dir / "predictions.pt").exists()
    assert not (spec.out_dir / "metrics.json").exists()


def test_evaluation_timeout_and_cancel_terminate_it(tmp_path, code_dir, monkeypatch):
    import sandbox.runner as runner_mod

    monkeypatch.setattr(runner_mod, "EVAL_MIN_S", 1.0)
    res = run_training(_spec(tmp_path, code_dir, mode="eval_hang", timeout_s=1.5, grace_s=0.2))
    assert res.status == "timeout" and "during evaluation" in res.reason
    cancel = threading.Event()
    threading.Timer(1.5, cancel.set).start()
    res = run_training(_spec(tmp_path, code_dir, name="c", mode="eval_hang", timeout_s=60, grace_s=0.2),
                       cancel=cancel)
    assert res.status == "killed" and "during evaluation" in res.reason


def test_confinement_is_reported(tmp_path, code_dir):
    from sandbox import confine

    res = run_training(_spec(tmp_path, code_dir))
    assert res.confinement == confine.describe(True)
    off = run_training(_spec(tmp_path, code_dir, name="off", confine=False))
    assert off.status == "ok" and off.confinement == confine.OFF_LABEL


def test_scaffolded_plugin_trains_and_evaluates_through_the_runner(tmp_path, monkeypatch):
    """A --regime-path plugin (the new-regime template): staged from the plugin dir, trained confined
    from a workspace checkout, evaluated with the plugin dir + this project's regimes.runtime."""
    import yaml

    from regimes.registry import get_regime
    from regimes.scaffold import scaffold_regime
    from sandbox.workspace import Workspace

    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    scaffold_regime("plug_reg", tmp_path / "plugins")
    regime = get_regime("plug_reg", [tmp_path / "plugins"])
    ws = Workspace.create(tmp_path / "workspace", regime)
    code = ws.checkout(ws.root_commit, tmp_path / "code")
    conf = tmp_path / "config.yaml"
    conf.write_text(yaml.safe_dump(regime.default_config(None, "quick")))
    res = run_training(RunSpec(slot=0, node_id=1, config_path=conf, out_dir=tmp_path / "out", code_dir=code,
                               train_entry=regime.train_entry, **regime_entries(regime), timeout_s=300))
    assert res.status == "ok", (res.reason, res.traceback_tail)
    assert regime.primary_metric in res.metrics
