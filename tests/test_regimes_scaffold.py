"""`scaffold_regime` writes a plugin the registry finds, whose config validates and which stages, trains
(as in a workspace: only the package and regimes/runtime.py) and evaluates."""

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from regimes.registry import get_regime, list_regimes
from regimes.scaffold import ScaffoldError, scaffold_regime
from regimes.validation import validate_config, validate_config_change

ROOT = Path(__file__).resolve().parents[1]


def _env(pythonpath: str, cache: Path) -> dict:
    # the data secret travels like the cache root (the runner gives it to the trusted processes)
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "GNN_AGENT_DATA_SECRET")}
    env.update(PYTHONPATH=pythonpath, GNN_AGENT_CACHE=str(cache), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return env


def _entry(module: str, cfg: Path, inputs: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", module, "--config", str(cfg), "--inputs", str(inputs),
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=120)


def test_scaffolded_plugin_is_found_validates_stages_trains_and_evaluates(tmp_path, monkeypatch):
    plugins = tmp_path / "plugins"
    dest = scaffold_regime("lin_net", plugins)
    assert dest == plugins / "lin_net" and (dest / "regime.py").is_file() and (dest / "README.md").is_file()
    assert "toyregime" not in (dest / "train.py").read_text()

    regime = get_regime("lin_net", [plugins])
    assert (regime.train_entry, regime.eval_entry, regime.stage_entry) == (
        "lin_net.train", "lin_net.evaluate", "lin_net.data:stage")
    assert regime.package_dir == dest
    assert [e.path for e in regime.editable] == ["lin_net/train.py", "lin_net/model.py"]
    assert "lin_net" in [r.name for r in list_regimes([plugins])]
    for profile in ("quick", "full"):
        assert validate_config(regime, regime.default_config(None, profile)) == []
    cfg = regime.default_config(None, "quick")
    new = json.loads(json.dumps(cfg))
    new["training"]["learning_rate"] = 5.0
    assert [v.kind for v in validate_config_change(regime, cfg, new)] == ["range"]
    cfg["training"].update(learning_rate=3e-2, n_epochs=3)  # enough to learn W (600 steps, ~3 s)

    # 1. stage (trusted, in this process, as the runner calls it): run 0 and the queries only
    cache = tmp_path / "cache"
    monkeypatch.setenv("GNN_AGENT_CACHE", str(cache))
    monkeypatch.syspath_prepend(str(plugins))
    cfg_path = tmp_path / "slot.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    inputs = tmp_path / "inputs"
    stage_mod = importlib.import_module("lin_net.data")
    stage_mod.stage(cfg_path, inputs)
    assert sorted(p.name for p in inputs.iterdir()) == ["inputs.pt", "queries.pt"]
    w_true = stage_mod.load_truth(stage_mod.SimulationConfig(**cfg["simulation"]))
    for f in inputs.iterdir():
        blob = torch.load(f, weights_only=True)
        assert "W" not in blob and not any(isinstance(v, torch.Tensor) and v.shape == w_true.shape
                                           for v in blob.values()), f.name

    # 2. train, as in a workspace: the package copy + regimes/{__init__,runtime}.py only
    ws = tmp_path / "ws"
    shutil.copytree(dest, ws / "lin_net")
    (ws / "regimes").mkdir()
    for f in ("__init__.py", "runtime.py"):
        shutil.copy(ROOT / "regimes" / f, ws / "regimes" / f)
    out = tmp_path / "out"
    proc = _entry("lin_net.train", cfg_path, inputs, out, _env(str(ws), tmp_path / "no-cache"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (out / "model.pt").is_file() and (out / "predictions.pt").is_file()
    assert not (out / "metrics.json").exists() and not (tmp_path / "no-cache").exists()
    last = json.loads((out / "progress.jsonl").read_text().splitlines()[-1])
    assert set(last) == {"step", "total", "loss", "elapsed_s"} and last["step"] == last["total"]

    # 3. evaluate (trusted: the installed plugin and gnn-agent)
    env = _env(f"{plugins}{os.pathsep}{ROOT}", cache)
    proc = _entry("lin_net.evaluate", cfg_path, inputs, out, env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"connectivity_R2", "connectivity_R2_fit", "test_R2", "test_pearson", "final_loss"}
    assert metrics["connectivity_R2"] > 0.9 and regime.score(metrics) == pytest.approx(
        min(1.0, max(0.0, metrics["connectivity_R2"])))
    assert "connectivity_R2: " in (out / "analysis.log").read_text()
    assert (out / "plots" / "W_scatter.png").is_file()

    # a negated W scores below zero (identity R2), though its fit R2 is the trained one's
    pred = torch.load(out / "predictions.pt", weights_only=True)
    pred["W"] = -pred["W"]
    torch.save(pred, out / "predictions.pt")
    assert _entry("lin_net.evaluate", cfg_path, inputs, out, env).returncode == 0
    negated = json.loads((out / "metrics.json").read_text())
    assert negated["connectivity_R2"] < 0 and regime.score(negated) == 0.0
    assert negated["connectivity_R2_fit"] == pytest.approx(metrics["connectivity_R2_fit"])

    # malformed predictions: exit 4 and failure.json
    pred["W"] = pred["W"][:3]
    torch.save(pred, out / "predictions.pt")
    proc = _entry("lin_net.evaluate", cfg_path, inputs, out, env)
    assert proc.returncode == 4 and json.loads((out / "failure.json").read_text())["kind"] == "predictions"

    # a broken config: exit 2 with one line naming the key, and failure.json
    cfg["training"]["learning_rte"] = 1
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = _entry("lin_net.train", cfg_path, inputs, out, _env(str(ws), tmp_path / "no-cache"))
    assert proc.returncode == 2 and proc.stderr.strip() == "config error: training.learning_rte: unknown key"
    assert json.loads((out / "failure.json").read_text())["kind"] == "config"


@pytest.mark.parametrize("name,match", [("homeostasis", "collides"), ("Bad-Name", "lower-case"),
                                        ("json", "importable module"), ("class", "lower-case"),
                                        ("regimes", "collides")])
def test_bad_names_rejected(tmp_path, name, match):
    with pytest.raises(ScaffoldError, match=match):
        scaffold_regime(name, tmp_path)


def test_existing_directory_not_overwritten(tmp_path):
    (tmp_path / "mine").mkdir()
    with pytest.raises(ScaffoldError, match="already exists"):
        scaffold_regime("mine", tmp_path)
