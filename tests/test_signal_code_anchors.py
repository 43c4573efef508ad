"""The exact-text anchors code strategies rely on exist once and, when
edited as the seed document's priorities suggest, still train."""

import sys
import types
from pathlib import Path

import pytest
import torch

import regimes.signal.model as model_mod
import regimes.signal.train as train_mod
from regimes.signal.config import parse_config
from regimes.signal.data import open_cache

PKG = Path(model_mod.__file__).parent

W_INIT = ("torch.randn(n_neurons, n_neurons))", "torch.randn(n_neurons, n_neurons) / math.sqrt(n_neurons))")
CLIP = ("loss.backward()\n", "loss.backward()\n            torch.nn.utils.clip_grad_norm_(model.W, max_norm=1.0)\n")
PROX = ("optimizer.step()\n", "optimizer.step()\n            with torch.no_grad():\n"
        "                model.W.copy_(torch.sign(model.W) * torch.clamp(model.W.abs() - coeff_L1 * cfg.learning_rate_W_start, min=0))\n")
COSINE = ("scheduler = None", "scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)")


def _variant(name: str, path: Path, edits) -> types.ModuleType:
    src = path.read_text()
    for old, new in edits:
        assert src.count(old) == 1, f"anchor {old!r} is not unique in {path.name}"
        src = src.replace(old, new)
    mod = types.ModuleType(name)
    sys.modules[name] = mod  # dataclasses look their module up
    exec(compile(src, str(path), "exec"), mod.__dict__)
    return mod


@pytest.fixture
def data(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path))
    cfg = parse_config({"simulation": {"connectivity_type": "sparse", "n_neurons": 16, "n_frames": 200},
                        "training": {"n_epochs": 2, "data_augmentation_loop": 1, "n_epochs_init": 1}})
    return cfg, open_cache(cfg.simulation, log=lambda s: None).training_data()


def test_w_init_anchor_scales_the_init(data):
    cfg, d = data
    variant = _variant("signal_model_variant", PKG / "model.py", [W_INIT])
    torch.manual_seed(0)
    w = variant.SignalGNN(400).W.detach()
    assert abs(float(w.std()) * 20 - 1) < 0.05  # 1/sqrt(400) = 1/20
    sys.modules.pop("signal_model_variant")


def test_training_anchors_apply_and_still_train(data):
    cfg, d = data
    variant = _variant("signal_train_variant", PKG / "train.py", [CLIP, PROX, COSINE])
    try:
        torch.manual_seed(0)
        m1 = model_mod.SignalGNN(16)
        r1 = variant.train_model(m1, d, cfg.training)
        torch.manual_seed(0)
        m2 = model_mod.SignalGNN(16)
        train_mod.train_model(m2, d, cfg.training)
    finally:
        sys.modules.pop("signal_train_variant")
    assert torch.isfinite(r1.pred_losses).all() and r1.n_steps == 10
    assert not torch.equal(m1.W, m2.W)
