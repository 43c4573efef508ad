"""The stoichiometry defaults (issue 13), locked on the quick profile itself: real network sizes, the shipped
configs, a fixed data secret (so the same system every run). Slow, excluded by default.

Run with: .venv/bin/python -m pytest -m slow tests/test_metabolism_stoich_learning.py -s

What is locked: the data are of the learned model's family (limited reaction-frames < 5%, activity rank
>= 20), the default starts exactly at the data-free baseline (skill 0 at step 0), and the whole quick
training clearly beats it (skill bounds below), with an exact fraction above the data-free answers'
(both decoded per column the same way). The figures over 3 training seeds and 2 systems come
from `benchmarks/stoichiometry_quality.py`.
"""

from __future__ import annotations

import copy

import pytest
import yaml

from _metabolism_tiny import read_metrics, stage_train_evaluate
from regimes.metabolism.phase1 import CONFIG_DIR
from regimes.runtime import DATA_SECRET_ENV

#: a fixed data secret: seed 42 is then one system everywhere (a fresh cache would draw its own)
SECRET = "5eed0013" * 4
#: lower bounds on the quick-profile skill. Measured with SECRET and the shipped training seed: tied 0.681
#: (exact_frac 0.940, data-free 0.786, decoded with the scale tie left to the truth; 0.778 / 0.584 when the
#: learned column's length broke it), untied 0.446 (exact_frac 0.878; raw 0.540; with coeff_S_prior 0.003
#: and lr_S 1e-3; 0.390 before; with S_least_squares 0.01: 0.448, exact_frac 0.881); before the shape prior the training seeds 0-2 spread by 0.09 on another
#: system (untied 0.34-0.43; with it 0.49-0.50), so the bounds leave about that much room for
#: platform-level float differences. The untied quick goal (0.5) is not met.
MIN_SKILL = {"tied": 0.58, "untied": 0.35}


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_quick_stoichiometry_defaults_beat_the_data_free_answer(tmp_path, monkeypatch, variant):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_SECRET_ENV, SECRET)
    raw = yaml.safe_load((CONFIG_DIR / f"stoichiometry_{variant}_quick.yaml").read_text())
    init = copy.deepcopy(raw)
    init["training"]["n_epochs"] = 0  # the model at its start, evaluated the same way
    init["training"]["S_least_squares"] = 0.0  # (the finisher after the steps is part of the training, not the start)
    assert stage_train_evaluate(tmp_path, init, "init")[:2] == (0, 0)
    assert stage_train_evaluate(tmp_path, raw, "quick")[:2] == (0, 0)
    m0, m1 = read_metrics(tmp_path / "init"), read_metrics(tmp_path / "quick")
    print(f"\n{variant}: limited {m1['limited_fraction']:.4f}, rank99 {m1['activity_rank_99']:.0f}; "
          f"baseline (gauged) {m1['stoichiometry_R2_gauged_baseline']:.4f}; R2_gauged {m0['stoichiometry_R2_gauged']:.4f}"
          f" -> {m1['stoichiometry_R2_gauged']:.4f}; skill {m0['stoichiometry_skill']:.4f} -> {m1['stoichiometry_skill']:.4f}; "
          f"exact {m0['stoichiometry_exact_frac']:.4f} -> {m1['stoichiometry_exact_frac']:.4f} "
          f"(data-free {m1['stoichiometry_exact_frac_baseline']:.4f}; raw {m1['stoichiometry_exact_frac_raw']:.4f}, "
          f"data-free {m1['stoichiometry_exact_frac_raw_baseline']:.4f}); {m1['steps_per_second']:.0f} steps/s")
    assert m1["limited_fraction"] < 0.05
    assert m1["activity_rank_99"] >= 20
    assert m0["stoichiometry_skill"] == pytest.approx(0.0, abs=1e-9)  # starts at the data-free answer
    assert m1["stoichiometry_skill"] >= MIN_SKILL[variant]
    assert m1["stoichiometry_exact_frac"] > m1["stoichiometry_exact_frac_baseline"]
    assert m1["stoichiometry_sign_acc"] > 0.99
