"""The rate_constants default recipe learns: the quick profile at real size, and the same recipe at
reduced scale (slow, excluded by default).

Run with: .venv/bin/python -m pytest -m slow tests/test_metabolism_learning.py
"""

from __future__ import annotations

import copy

import pytest
import yaml

from _metabolism_tiny import read_metrics, stage_train_evaluate
from regimes.metabolism.phase1 import CONFIG_DIR, default_phase1_config
from regimes.runtime import DATA_SECRET_ENV

#: a fixed data secret, so these figures are reproducible (a fresh cache root draws a new dataset);
#: the figures quoted in prompts/regimes/rate_constants.md were measured with it
SECRET = "a9195116da321300f4afc13ce2a56055"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_rate_constants_profile_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_SECRET_ENV, SECRET)
    raw = yaml.safe_load((CONFIG_DIR / "rate_constants_quick.yaml").read_text())
    init = copy.deepcopy(raw)
    init["training"]["n_epochs"] = 0  # the model at initialisation, evaluated the same way
    assert stage_train_evaluate(tmp_path, init, "init")[:2] == (0, 0)
    assert stage_train_evaluate(tmp_path, raw, "quick")[:2] == (0, 0)
    m0, m1 = read_metrics(tmp_path / "init"), read_metrics(tmp_path / "quick")
    print(f"\nrate_constants_R2 init={m0['rate_constants_R2']:.4f} quick={m1['rate_constants_R2']:.4f}; "
          f"identifiable {m0['rate_constants_R2_identifiable']:.3f} -> {m1['rate_constants_R2_identifiable']:.3f}; "
          f"outliers {m0['rate_constants_n_outliers']:.0f} -> {m1['rate_constants_n_outliers']:.0f}; "
          f"test_R2_short {m1['test_R2_short']:.3f}; training {m1['training_time_min']:.2f} min")
    # the quick goals (identifiable R2 and the dynamics figure >= 0.8), locked
    assert m1["rate_constants_R2_identifiable"] >= 0.8
    assert m1["test_R2_short"] >= 0.8
    # "init" is zero gradient steps but not zero data: k_least_squares fits k in closed form for the untrained
    # MLP_sub (c x softplus, already mass-action-like), 0.68 / identifiable 0.75 with SECRET; the steps add the rest
    assert m1["rate_constants_R2"] > m0["rate_constants_R2"] + 0.2
    assert m1["rate_constants_R2_identifiable"] > m0["rate_constants_R2_identifiable"] + 0.2
    # what stays off is the reactions no data decide (shared substrate sets, never active): 4 with SECRET (init 12)
    assert m1["rate_constants_n_outliers"] <= 5 and m1["rate_constants_n_outliers"] < m0["rate_constants_n_outliers"] / 2
    assert m1["final_loss"] < 0.01


#: the recipe's figures at reduced scale (measured: see the test's docstring), with a margin
#: (measured with SECRET: identifiable 0.990, all 0.586, test_R2_short 0.979; the seed's recipe -32 / -32 / -5.8)
REDUCED = {"identifiable": 0.95, "all": 0.45, "test_short": 0.9}


def _reduced(raw: dict, **training) -> dict:
    """The default recipe at reduced scale: a third of the network and of the steps."""
    cfg = copy.deepcopy(raw)
    cfg["simulation"].update(n_metabolites=40, n_reactions=102)
    cfg["training"].update(data_augmentation_loop=cfg["training"]["data_augmentation_loop"] // 3, **training)
    cfg.pop("claude", None)
    return cfg


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two trainings; ~10 min each at load 20 on 2 cores
def test_default_recipe_at_reduced_scale_recovers_k(tmp_path, monkeypatch):
    """Locks the quick recipe's figures at reduced scale (40 metabolites, 102 reactions, 7,200 steps: two
    trainings of about a minute each on a free core): the recipe recovers
    the identifiable k and the short-horizon dynamics, and each of its parts is needed (the seed's
    recipe, init log k in [-2, 1], coeff_k_center 5, constant lr, the softplus MLP_sub, no k solve, is far below)."""
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_SECRET_ENV, SECRET)
    raw = yaml.safe_load((CONFIG_DIR / "rate_constants_quick.yaml").read_text())
    new = _reduced(raw)
    seed_recipe = _reduced(raw, coeff_k_center=5.0, coeff_k_prior=0.0, coeff_MLP_sub_zero=0.0, lr_schedule="constant",
                           k_least_squares=False)
    seed_recipe["graph_model"].update(init_log_k_max=1.0, mlp_sub_form="softplus")
    assert stage_train_evaluate(tmp_path, new, "new")[:2] == (0, 0)
    assert stage_train_evaluate(tmp_path, seed_recipe, "seed")[:2] == (0, 0)
    m, s = read_metrics(tmp_path / "new"), read_metrics(tmp_path / "seed")
    keys = ("rate_constants_R2_identifiable", "rate_constants_R2", "rate_constants_n_outliers", "test_R2_short")
    print("\n" + "\n".join(f"{k}: recipe {m[k]:.3f}  seed recipe {s[k]:.3f}" for k in keys))
    assert m["rate_constants_R2_identifiable"] >= REDUCED["identifiable"]
    assert m["rate_constants_R2"] >= REDUCED["all"]
    assert m["test_R2_short"] >= REDUCED["test_short"]
    assert s["rate_constants_R2_identifiable"] < m["rate_constants_R2_identifiable"] - 0.3


#: homeostasis at reduced scale, default phase 2 on the default phase 1 (without the k prior, a third of its
#: 900), measured with SECRET: phase 1 identifiable 1.0000, test_R2_short 1.000; phase 2 slope ratios
#: 1.17 / 0.96, MLP_node_function_R2 0.948, embedding accuracy 0.85 with the embeddings started at std 0.1 and
#: lr_emb 1e-3; 1.17 / 0.96, 0.921, 0.975 with the defaults since (std 0.01, lr_emb 3e-3) (the rate_constants default as phase 1
#: read 1.12 / 0.97, 0.930, 0.875 here; at quick size, seed 42, the default now reads 1.00 / 0.99, 0.995,
#: 0.99). At a third of the steps the k-prior-free phase 1 has not converged its split yet (at quick size it
#: has). The bounds keep a margin around that (the fast path's float32 kernels differ by CPU vendor); the
#: constant-lr default of an earlier session read 1.41 / 0.99 on the pooled grid here, and the phase-1
#: default before it 0.10 / 0.08
REDUCED_HOMEO = {"ratio_lo": 0.8, "ratio_hi": 1.3, "node_fn": 0.8, "emb": 0.8}
#: the 32-step rollout (slot 2) at the same scale, measured with SECRET: the defaults (auto: window weights and
#: every-step loss, lr_emb x 8) 1.298 / 0.914, function R2 0.880, embeddings 0.825; the seed's loop there 1.467 /
#: 0.864, 0.754, 0.50 (embeddings at chance), which these bounds reject on all three
REDUCED_HOMEO_T32 = {"ratio_lo": 0.8, "ratio_hi": 1.4, "node_fn": 0.8, "emb": 0.7}


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize("rollout", [4, 32])
def test_homeostasis_default_recovers_at_reduced_scale(tmp_path, monkeypatch, rollout):
    """Locks the quick homeostasis goal at reduced scale (40 metabolites, 102 reactions): homeostasis's
    default phase 1 (phase1.default_phase1_config, a third of its steps), then the homeostasis default
    (slot 0: 4-step rollout) on it, as prepare() and the runner do: every type's slope ratio in 0.8-1.2, MLP_node_function_R2 >= 0.8 and
    embedding accuracy >= 0.9, with no type label anywhere in training (at this scale type 0's ratio runs
    a little high and the embeddings a little low: see REDUCED_HOMEO)."""
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(DATA_SECRET_ENV, SECRET)
    sim = yaml.safe_load((CONFIG_DIR / "rate_constants_quick.yaml").read_text())["simulation"]
    p1 = _reduced({"simulation": sim, **default_phase1_config("quick")})  # what prepare() trains
    assert stage_train_evaluate(tmp_path, p1, "phase1")[:2] == (0, 0)
    m1 = read_metrics(tmp_path / "phase1")
    h = yaml.safe_load((CONFIG_DIR / "homeostasis_quick.yaml").read_text())
    h.pop("claude", None)
    h["simulation"] = p1["simulation"]
    h["training"]["phase1_checkpoint"] = str(tmp_path / "phase1" / "model.pt")
    h["training"]["homeostasis_time_step"] = rollout  # slot 0 and slot 2 of the regime (auto: the long-rollout recipe)
    assert stage_train_evaluate(tmp_path, h, "phase2")[:2] == (0, 0)
    m = read_metrics(tmp_path / "phase2")
    keys = ("MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1", "MLP_node_function_R2", "embedding_cluster_acc",
            "frozen_params_changed")
    print(f"\nT = {rollout}; phase 1: identifiable {m1['rate_constants_R2_identifiable']:.4f} test_R2_short {m1['test_R2_short']:.3f}\n"
          + "  ".join(f"{k}={m[k]:.3f}" for k in keys))
    assert m["frozen_params_changed"] == 0.0
    bounds = REDUCED_HOMEO if rollout == 4 else REDUCED_HOMEO_T32
    for t in (0, 1):
        assert bounds["ratio_lo"] <= m[f"MLP_node_slope_ratio_{t}"] <= bounds["ratio_hi"]
    assert m["MLP_node_function_R2"] >= bounds["node_fn"]
    assert m["embedding_cluster_acc"] >= bounds["emb"]
