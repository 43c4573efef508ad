"""Slow: every built-in code strategy, applied to a copy of its science package, still trains
(a tiny dataset, a few steps) through the contract of docs/contracts.md §2b: stage (trusted, in
this process), train (the edited workspace copy: the package and regimes/{__init__,runtime}.py
only), evaluate (the installed code) to metrics.json. Run with `pytest -m slow`."""

import copy
import importlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regimes.registry import get_regime

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tiny(regime_name: str, variant=None) -> dict:
    cfg = copy.deepcopy(get_regime(regime_name).default_config(variant, "full"))
    sim = cfg["simulation"]
    if "n_metabolites" in sim:
        sim.update(n_metabolites=12, n_reactions=12, n_frames=120)
        cfg["graph_model"]["test_rollout_frames"] = 50
    else:
        sim.update(n_neurons=12, n_frames=200, connectivity_rank=4)
    cfg["training"].update(n_epochs=1, data_augmentation_loop=4, batch_size=8)
    return cfg


def _env(pythonpath: Path, cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "GNN_AGENT_DATA_SECRET")}
    env.update(PYTHONPATH=str(pythonpath), GNN_AGENT_CACHE=str(cache), MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    return env


def _run(regime, workspace: Path, cfg: dict, out: Path, cache: Path, monkeypatch) -> tuple:
    """stage -> train (workspace) -> evaluate (installed): the two CompletedProcess."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    inputs = out.parent / f"{out.name}_inputs"
    module, _, fn = regime.stage_entry.partition(":")
    monkeypatch.setenv("GNN_AGENT_CACHE", str(cache))
    getattr(importlib.import_module(module), fn)(cfg_path, inputs)
    args = ["--config", str(cfg_path), "--inputs", str(inputs), "--out", str(out)]
    train = subprocess.run([sys.executable, "-P", "-m", regime.train_entry, *args, "--device", "cpu"],
                           env=_env(workspace, out.parent / "no-cache"), capture_output=True, text=True, timeout=600)
    if train.returncode != 0:
        return train, None
    evaluate = subprocess.run([sys.executable, "-P", "-m", regime.eval_entry, *args, "--no-plots"],
                              env=_env(ROOT, cache), capture_output=True, text=True, timeout=600)
    return train, evaluate


def _workspace(tmp: Path, regime, strategy) -> Path:
    ws = tmp / f"ws_{regime.name}_{strategy.name.replace('/', '_')}"
    (ws / "regimes").mkdir(parents=True)
    for name in ("__init__.py", "runtime.py"):  # what a run's workspace holds besides the package
        shutil.copy(ROOT / "regimes" / name, ws / "regimes" / name)
    shutil.copytree(regime.package_dir, ws / Path(*regime.package.split(".")),
                    ignore=shutil.ignore_patterns("__pycache__"))
    f = ws / strategy.file
    f.write_text(f.read_text().replace(strategy.old, strategy.new))
    return ws


CASES = [(n, s.name) for n in ("stoichiometry", "rate_constants", "homeostasis", "sparse_connectivity",
                                "low_rank_connectivity")
         for s in get_regime(n).code_strategies]


@pytest.mark.parametrize("regime_name,strategy_name", CASES)
def test_strategy_trains(tmp_path_factory, monkeypatch, regime_name, strategy_name):
    regime = get_regime(regime_name)
    strategy = next(s for s in regime.code_strategies if s.name == strategy_name)
    tmp = tmp_path_factory.mktemp("strategy")
    cache = tmp_path_factory.getbasetemp() / "cache"
    try:
        cfg = _tiny(regime_name)
    except FileNotFoundError as e:
        pytest.skip(f"science config not written yet: {e}")
    if regime_name == "homeostasis":
        from regimes.metabolism.phase1 import ensure_phase1_checkpoint
        from regimes.homeostasis import phase1_config

        p1 = phase1_config(cfg, "full")
        p1["training"].update(n_epochs=1, data_augmentation_loop=4, batch_size=8)
        p1["graph_model"] = cfg["graph_model"]
        path, _ = ensure_phase1_checkpoint(cfg["simulation"], p1, "cpu", cache, log=lambda *_: None)
        cfg["training"]["phase1_checkpoint"] = str(path)
    ws = _workspace(tmp, regime, strategy)
    train, evaluate = _run(regime, ws, cfg, tmp / "out", cache, monkeypatch)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp / "out" / "predictions.pt").is_file() and not (tmp / "no-cache").exists()
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    assert (tmp / "out" / "metrics.json").is_file()
