"""Generated metabolism data obey their equations; the cache keeps truth apart from training inputs."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from _metabolism_tiny import TINY_CYCLES, TINY_RANDOM, kinetics_cfg, stoich_cfg
from regimes.metabolism.config import SimulationConfig, parse_config
from regimes.metabolism.data import TrainingData, dataset_dir, load_or_generate
from regimes.metabolism.simulator import activity_rank, simulate


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _mlp(layers, x):
    for i, (W, b) in enumerate(layers):
        x = x @ W.T + b
        if i < len(layers) - 1:
            x = torch.tanh(x)
    return x


def _dcdt_from_truth(truth: dict, sim: dict, c: torch.Tensor) -> torch.Tensor:
    """dc/dt of one state c (n_met,), recomputed from the truth file with plain loops."""
    S = truth["S"]
    n_met, n_rxn = S.shape
    s_sub = truth["s_sub"]
    sub_edges = [(int(m), int(r), float(s)) for (m, r), s in zip(_sub_pairs(truth), s_sub)]
    v = torch.zeros(n_rxn, dtype=torch.float64)
    c = c.double()
    if truth["generator"] == "mass_action":
        for j in range(n_rxn):
            v[j] = float(truth["k"][j]) * math.prod(float(c[m]) ** s for m, r, s in sub_edges if r == j)
    else:
        msg_layers = [(W.double(), b.double()) for W, b in truth["msg_layers"]]
        rate_layers = [(W.double(), b.double()) for W, b in truth["rate_layers"]]
        for j in range(n_rxn):
            h = sum(_mlp(msg_layers, torch.tensor([float(c[m]), s], dtype=torch.float64)) for m, r, s in sub_edges if r == j)
            v[j] = float(truth["k"][j]) * F.softplus(_mlp(rate_layers, h))[0]
        if sim.get("flux_limiter"):
            dt = sim["delta_t"]
            consumed = torch.zeros(n_met, dtype=torch.float64)
            for m, r, s in sub_edges:
                consumed[m] += s * v[r] * dt
            ratio = torch.where(consumed > c, c / consumed.clamp_min(1e-30), torch.ones_like(c))
            for j in range(n_rxn):
                v[j] *= min([float(ratio[m]) for m, r, s in sub_edges if r == j] + [1.0])
    d = S.double() @ v
    if truth["homeostasis"]:
        t = truth["types"]
        d = d - truth["lambda"].double()[t] * (c - truth["baseline"].double()[t])
    return d


def _sub_pairs(truth):
    return truth["_sub_pairs"]


@pytest.mark.parametrize("sim", [TINY_CYCLES, TINY_RANDOM], ids=["cycles-mass_action", "random-mlp_rates"])
def test_saved_derivatives_follow_the_truth(sim):
    data, truth_path = load_or_generate(sim)
    truth = torch.load(truth_path, weights_only=True)
    raw = torch.load(truth_path.parent / "inputs.pt", weights_only=True)
    truth["_sub_pairs"] = list(zip(raw["met_sub"].tolist(), raw["rxn_sub"].tolist()))
    for run in (0, 1):
        for t in (0, 7, 60, sim["n_frames"] - 1):
            want = _dcdt_from_truth(truth, sim, data.conc[run, t])
            assert torch.allclose(data.deriv[run, t].double(), want, rtol=1e-4, atol=1e-5), (run, t)
    # Euler with clamp: the next frame is max(0, c + dt * dc/dt); never negative
    step = (data.conc[:, :-1] + sim["delta_t"] * data.deriv[:, :-1]).clamp_min(0)
    assert torch.allclose(data.conc[:, 1:], step, atol=1e-5)
    assert float(data.conc.min()) >= 0.0
    assert not torch.equal(data.conc[0, 0], data.conc[1, 0])  # two runs, different initial states


def test_random_network_structure():
    sim = SimulationConfig.model_validate({**TINY_RANDOM, "n_metabolites": 40, "n_reactions": 200, "n_frames": 10})
    net, gen, conc, deriv = simulate(sim)
    S = net.dense_S()
    assert torch.all(S.sum(0) == 0)  # every column sums to zero
    assert set(S.unique().tolist()) <= {-2.0, -1.0, 0.0, 1.0, 2.0}
    n_sub = (S < 0).sum(0)
    n_prod = (S > 0).sum(0)
    assert n_sub.min() >= 1 and n_sub.max() <= 3 and n_prod.min() >= 1 and n_prod.max() <= 3
    assert set(n_sub.tolist()) == {1, 2, 3}
    # substrate edges are exactly the negative entries, with |s| = -S
    assert torch.equal(S[net.met_sub, net.rxn_sub], -net.s_sub)
    assert len(net.met_sub) == int((S < 0).sum()) and len(net.met_all) == int((S != 0).sum())


def test_cycles_network_structure():
    sim = SimulationConfig.model_validate({**TINY_CYCLES, "n_metabolites": 10, "n_reactions": 16, "n_frames": 10})
    net, gen, conc, deriv = simulate(sim)
    S = net.dense_S()
    assert torch.all(S.sum(0) == 0)
    for j in range(16):
        col = S[:, j]
        assert sorted(col[col != 0].tolist()) == [-1.0, 1.0]  # m_i -> m_{i+1}: -1 and +1
        subs = net.met_sub[net.rxn_sub == j].tolist()
        assert len(subs) == 2 and set(subs) == set(torch.nonzero(col).flatten().tolist())  # both are substrates
        assert torch.all(net.s_sub[net.rxn_sub == j] == 1)
    cycles = []
    for c in range(16 // 3):  # reactions 3c..3c+2 form a 3-cycle a->b->c->a
        pairs = [(int(torch.nonzero(S[:, j] < 0)), int(torch.nonzero(S[:, j] > 0))) for j in range(3 * c, 3 * c + 3)]
        assert [p[1] for p in pairs] == [pairs[1][0], pairs[2][0], pairs[0][0]]
        cycles.append({p[0] for p in pairs})
    # fresh metabolites while at least 3 remain: the first 10 // 3 cycles are disjoint
    first = cycles[: 10 // 3]
    assert len(set().union(*first)) == 3 * len(first)


def test_activity_rank_counts_components():
    t = torch.linspace(0, 20, 500)
    x = torch.stack([torch.sin(t), torch.cos(2 * t), 0.01 * torch.sin(3 * t)] + [torch.zeros_like(t)] * 3, 1)
    r90, r99 = activity_rank(x)
    assert r90 == 2 and r99 == 2
    r90, r99 = activity_rank(x + 0.2 * torch.sin(5 * t)[:, None] * torch.tensor([0, 0, 0, 1, 0, 0.]))
    assert r99 == 3


def test_cache_reuses_files_and_keeps_truth_apart(tmp_path):
    data, truth_path = load_or_generate(TINY_CYCLES)
    d = dataset_dir(SimulationConfig.model_validate(TINY_CYCLES))
    assert truth_path == d / "truth.pt" and (d / "inputs.pt").is_file()
    mtime = (d / "inputs.pt").stat().st_mtime_ns
    data2, _ = load_or_generate(TINY_CYCLES)
    assert (d / "inputs.pt").stat().st_mtime_ns == mtime  # not regenerated
    assert torch.equal(data.conc, data2.conc)
    inputs = torch.load(d / "inputs.pt", weights_only=True)
    for forbidden in ("S", "k", "log_k", "types", "lambda", "baseline", "msg_layers", "s_all", "s_sub"):
        assert forbidden not in inputs
    assert data.s_all is None and data.s_sub is None
    given, _ = load_or_generate(TINY_CYCLES, given_stoichiometry=True)
    truth = torch.load(truth_path, weights_only=True)
    assert torch.equal(given.s_all, truth["s_all"])
    # a different simulation section is a different dataset
    other, _ = load_or_generate({**TINY_CYCLES, "seed": 4})
    assert not torch.equal(other.conc, data.conc)
    assert not list(d.glob(".*.tmp"))  # no temporary files left behind


def test_training_receives_no_ground_truth(monkeypatch, tmp_path):
    """Inspect exactly what train_phase1 is given, in S-learning and S-given modes."""
    from regimes.metabolism import train

    seen = {}
    real = train.train_phase1

    def spy(model, data, cfg, progress):
        seen["data"] = data
        seen["model_tensors"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return real(model, data, cfg, progress)

    monkeypatch.setattr(train, "train_phase1", spy)
    truth_names = {"S", "k", "log_k_true", "types", "type", "lam", "lambda", "baseline", "truth"}
    for cfg, given in ((stoich_cfg(), False), (kinetics_cfg(), True)):
        c = parse_config(cfg)
        train.run(c, tmp_path / c.graph_model.model, plots_on=False)
        data = seen["data"]
        assert isinstance(data, TrainingData)
        assert not truth_names & {f.name for f in fields(data)}
        truth = torch.load(dataset_dir(c.simulation) / "truth.pt", weights_only=True)
        assert (data.s_all is not None) == given  # true S only when S is frozen
        for v in [getattr(data, f.name) for f in fields(data)] + list(seen["model_tensors"].values()):
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                for key in ("log_k", "k", "lambda", "baseline"):
                    t = truth[key]
                    assert not (v.shape == t.shape and torch.allclose(v.float(), t.float())), key
                if v.numel() == truth["types"].numel():
                    assert not torch.equal(v, truth["types"].to(v.dtype))
        if not given:
            for v in seen["model_tensors"].values():
                assert not (v.shape == truth["s_all"].shape and torch.allclose(v, truth["s_all"]))
