"""`scaffold_regime` writes a plugin the registry finds, whose config validates and whose entry trains."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from regimes.registry import get_regime, list_regimes
from regimes.scaffold import ScaffoldError, scaffold_regime
from regimes.validation import validate_config, validate_config_change

ROOT = Path(__file__).resolve().parents[1]


def test_scaffolded_plugin_is_found_validates_and_trains(tmp_path):
    plugins = tmp_path / "plugins"
    dest = scaffold_regime("lin_net", plugins)
    assert dest == plugins / "lin_net" and (dest / "regime.py").is_file() and (dest / "README.md").is_file()
    assert "toyregime" not in (dest / "train.py").read_text()

    regime = get_regime("lin_net", [plugins])
    assert regime.train_entry == "lin_net.train" and regime.package_dir == dest
    assert [e.path for e in regime.editable] == ["lin_net/train.py", "lin_net/model.py"]
    assert "lin_net" in [r.name for r in list_regimes([plugins])]
    for profile in ("quick", "full"):
        assert validate_config(regime, regime.default_config(None, profile)) == []
    cfg = regime.default_config(None, "quick")
    new = json.loads(json.dumps(cfg))
    new["training"]["learning_rate"] = 5.0
    assert [v.kind for v in validate_config_change(regime, cfg, new)] == ["range"]

    cfg_path = tmp_path / "slot.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env.update(PYTHONPATH=f"{plugins}{os.pathsep}{ROOT}", GNN_AGENT_CACHE=str(tmp_path / "cache"),
               MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "lin_net.train", "--config", str(cfg_path), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) >= {"connectivity_R2", "test_R2", "test_pearson", "final_loss"}
    assert 0.0 <= metrics["connectivity_R2"] <= 1.0 and regime.score(metrics) == pytest.approx(
        min(1.0, max(0.0, metrics["connectivity_R2"])))
    lines = (out / "progress.jsonl").read_text().splitlines()
    last = json.loads(lines[-1])
    assert set(last) == {"step", "total", "loss", "elapsed_s"} and last["step"] == last["total"]
    assert "connectivity_R2: " in (out / "analysis.log").read_text()
    assert (out / "plots" / "W_scatter.png").is_file() and (out / "model.pt").is_file()

    # a broken config: exit 2 with one line naming the key
    cfg["training"]["learning_rte"] = 1
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "lin_net.train", "--config", str(cfg_path), "--out", str(out)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip() == "config error: training.learning_rte: unknown key"


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
