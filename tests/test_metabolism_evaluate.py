"""The metabolism evaluation can succeed (oracle: true S, k, c^s, true lines) and fail (shuffled)."""

from __future__ import annotations

import pytest
import torch

from _metabolism_tiny import TINY_CYCLES, TINY_RANDOM
from regimes.metabolism.config import GraphModelConfig, SimulationConfig
from regimes.metabolism.data import load_or_generate
from regimes.metabolism.evaluate import Learned, compute_metrics, load_truth, write_outputs, EvalResult
from regimes.metabolism.simulator import Generator, build_network


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


GM = GraphModelConfig(model="kinetics", test_rollout_frames=80, eval_grid=30)


def _true_rollout(sim: dict):
    s = SimulationConfig.model_validate(sim)
    g = torch.Generator().manual_seed(s.seed)
    gen = Generator(s, build_network(s, g), g)

    def roll(c0, n):
        out, c = [], c0.unsqueeze(0)
        for _ in range(n):
            out.append(c[0])
            c = (c + s.delta_t * gen.dcdt(c)).clamp_min(0)
        return torch.stack(out)
    return roll


def _oracle(truth: dict, sim: dict, shuffle: bool = False) -> Learned:
    """True k, f = c^s, embeddings = 0.5 * type (+ tiny jitter), node = the true line of the type."""
    gperm = torch.Generator().manual_seed(0)
    lam, base = truth["lambda"], truth["baseline"]
    types = truth["types"]
    n = len(types)
    emb = torch.stack([types.float() * 0.5, torch.zeros(n)], 1) + 0.001 * torch.randn(n, 2, generator=gperm)
    log_k = truth["log_k"].clone()
    s_all = truth["s_all"].clone()

    def node(c, a):
        t = torch.round(a[..., 0] / 0.5).long().clamp(0, len(lam) - 1)
        return -lam[t] * (c - base[t])

    def f_sub(c, s):
        return c ** s

    roll = _true_rollout(sim)
    if shuffle:
        log_k = log_k[torch.randperm(len(log_k), generator=gperm)]
        s_all = s_all[torch.randperm(len(s_all), generator=gperm)]
        emb = emb[torch.randperm(n, generator=gperm)] + torch.randn(n, 2, generator=gperm)

        def node(c, a):  # noqa: F811 - flat, wrong lines
            return torch.zeros_like(c) + 0.5

        def f_sub(c, s):  # noqa: F811
            return torch.sqrt(c + 1) * (3 - s)

        def roll(c0, n_frames):  # noqa: F811 - stays at the initial state
            return c0.expand(n_frames, -1).clone() + torch.linspace(0, 1, n_frames)[:, None]
    return Learned(log_k=log_k, s_all=s_all, f_sub=f_sub, node_fn=node, embeddings=emb, rollout=roll)


def test_oracle_scores_perfectly_and_shuffled_scores_low(tmp_path):
    sim = {**TINY_CYCLES, "n_metabolites": 20, "n_reactions": 22}
    data, tp = load_or_generate(sim)
    truth = load_truth(tp)
    good = compute_metrics(_oracle(truth, sim), truth, data, GM, hist={"phase1": {"loss": [1.0, 0.5], "regul": [0, 0], "steps": 2}})
    m = good.metrics
    assert m["stoichiometry_R2"] > 0.99 and m["stoichiometry_sign_acc"] == 1.0
    assert m["rate_constants_R2"] > 0.99 and m["rate_constants_R2_fit"] > 0.99
    assert m["rate_constants_n_outliers"] == 0 and m["rate_constants_alpha"] == pytest.approx(1.0)
    assert m.get("rate_constants_R2_identifiable", 1.0) > 0.99
    assert m["MLP_sub_R2"] > 0.99
    for t in (0, 1):
        assert m[f"MLP_node_slope_ratio_{t}"] == pytest.approx(1.0, abs=0.05)
        assert m[f"MLP_node_offset_ratio_{t}"] == pytest.approx(1.0, abs=0.05)
    assert m["avg_slope_ratio"] == pytest.approx(1.0, abs=0.05)
    assert m["embedding_cluster_acc"] == 1.0 and m["embedding_n_clusters"] == 2 and m["embedding_silhouette"] > 0.9
    assert m["test_R2"] > 0.99 and m["test_pearson"] > 0.99
    assert m["final_loss"] == 0.5

    bad = compute_metrics(_oracle(truth, sim, shuffle=True), truth, data, GM).metrics
    assert bad["stoichiometry_R2"] < 0.3
    assert bad["rate_constants_R2"] < 0.3 and bad["rate_constants_R2_fit"] < 0.3
    assert bad["MLP_sub_R2"] < 0.5
    assert abs(bad["avg_slope_ratio"] - 1) > 0.5
    assert bad["embedding_cluster_acc"] < 0.8
    assert bad["test_R2"] < 0.5

    out = tmp_path / "o"
    out.mkdir()
    write_outputs(out, good)
    lines = (out / "analysis.log").read_text().splitlines()
    assert lines[0].startswith("final_loss: ")
    assert all(": " in ln for ln in lines if not ln.startswith("#"))


def test_reactions_sharing_substrates_are_counted():
    """Cycles that reuse metabolites can repeat a substrate pair: those k are not identifiable one by one."""
    sim = {**TINY_CYCLES, "n_metabolites": 6, "n_reactions": 30, "n_frames": 20}
    data, tp = load_or_generate(sim)
    truth = load_truth(tp)
    pairs = {}
    for j in range(30):
        pairs.setdefault(tuple(sorted(data.met_sub[data.rxn_sub == j].tolist())), []).append(j)
    n_shared = sum(len(g) for g in pairs.values() if len(g) > 1)
    assert n_shared > 0  # 6 metabolites, 30 reactions: pairs must repeat
    log_k = truth["log_k"].clone()
    shared = [j for g in pairs.values() if len(g) > 1 for j in g]
    log_k[shared] -= 2.0  # wrong only where the data cannot tell
    m = compute_metrics(Learned(log_k=log_k, f_sub=lambda c, s: c ** s), truth, data, GM).metrics
    assert m["rate_constants_n_shared_substrates"] == n_shared
    assert m["rate_constants_R2_identifiable"] > 0.999 and m["rate_constants_R2"] < 0.5


def test_gauge_correction_undoes_a_scaled_mlp_sub():
    """k * f^n_sub is invariant under f -> alpha f, k -> k / alpha^n_sub: the corrected R² sees through it."""
    sim = {**TINY_RANDOM, "n_frames": 20}
    data, tp = load_or_generate(sim)
    truth = load_truth(tp)
    alpha = 3.0
    lrn = Learned(log_k=truth["log_k"] - truth["n_sub"] * torch.log10(torch.tensor(alpha)),
                  f_sub=lambda c, s: alpha * c ** s)
    m = compute_metrics(lrn, truth, data, GM).metrics
    assert m["rate_constants_alpha"] == pytest.approx(alpha, rel=1e-5)
    assert m["rate_constants_R2"] > 0.999
    assert m["MLP_sub_R2"] < 0.5 and m["MLP_sub_R2_normalized"] > 0.999
    # only the metrics that apply: no S learned, no MLP_node, no rollout
    assert "stoichiometry_R2" not in m and "avg_slope_ratio" not in m and "test_R2" not in m
    # a global offset is forgiven by _shifted only
    lrn.log_k = truth["log_k"] + 0.5
    lrn.f_sub = lambda c, s: c ** s
    m = compute_metrics(lrn, truth, data, GM).metrics
    assert m["rate_constants_R2"] < 0.5 and m["rate_constants_R2_shifted"] > 0.999 and m["rate_constants_n_outliers"] == len(truth["log_k"])
