"""The quick rate_constants profile learns (real sizes: slow, excluded by default).

Run with: .venv/bin/python -m pytest -m slow tests/test_metabolism_learning.py
"""

from __future__ import annotations

import copy

import pytest
import yaml

from _metabolism_tiny import read_metrics, stage_train_evaluate
from regimes.metabolism.phase1 import CONFIG_DIR


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_rate_constants_profile_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    raw = yaml.safe_load((CONFIG_DIR / "rate_constants_quick.yaml").read_text())
    init = copy.deepcopy(raw)
    init["training"]["n_epochs"] = 0  # the model at initialisation, evaluated the same way
    assert stage_train_evaluate(tmp_path, init, "init")[:2] == (0, 0)
    assert stage_train_evaluate(tmp_path, raw, "quick")[:2] == (0, 0)
    m0, m1 = read_metrics(tmp_path / "init"), read_metrics(tmp_path / "quick")
    print(f"\nrate_constants_R2 init={m0['rate_constants_R2']:.4f} quick={m1['rate_constants_R2']:.4f}; "
          f"fit {m0['rate_constants_R2_fit']:.3f} -> {m1['rate_constants_R2_fit']:.3f}; "
          f"outliers {m0['rate_constants_n_outliers']:.0f} -> {m1['rate_constants_n_outliers']:.0f}; "
          f"training {m1['training_time_min']:.2f} min")
    assert m1["rate_constants_R2"] > m0["rate_constants_R2"] + 5.0
    assert m1["rate_constants_R2_fit"] > m0["rate_constants_R2_fit"] + 0.2
    assert m1["rate_constants_n_outliers"] < m0["rate_constants_n_outliers"] / 4
    assert m1["final_loss"] < 0.05
