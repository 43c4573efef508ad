"""Generated metabolism data obey their equations; the cache keeps truth and run 1 apart from training
inputs, and the staged directory holds only run 0, the support and the queries."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F

from _metabolism_tiny import TINY_CYCLES, TINY_RANDOM, kinetics_cfg, stage_train_evaluate, stoich_cfg, write_config
from regimes.metabolism import config as mconfig
from regimes.metabolism.config import SimulationConfig, parse_config, simulation_hash
from regimes.metabolism.data import TrainingData, dataset_dir, load_heldout, load_or_generate, query_grid, stage
from regimes.metabolism.simulator import activity_rank, metabolite_types, simulate, stream_seeds


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
    held = load_heldout(sim)
    for conc, deriv in ((data.conc, data.deriv), (held["conc"], held["deriv"])):
        for t in (0, 7, 60, sim["n_frames"] - 1):
            want = _dcdt_from_truth(truth, sim, conc[t])
            assert torch.allclose(deriv[t].double(), want, rtol=1e-4, atol=1e-5), t
        # Euler with clamp: the next frame is max(0, c + dt * dc/dt); never negative
        step = (conc[:-1] + sim["delta_t"] * deriv[:-1]).clamp_min(0)
        assert torch.allclose(conc[1:], step, atol=1e-5)
        assert float(conc.min()) >= 0.0
    assert not torch.equal(data.conc[0], held["conc"][0])  # two runs, different initial states


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
    assert truth_path == d / "truth.pt" and (d / "inputs.pt").is_file() and (d / "heldout.pt").is_file()
    mtime = (d / "inputs.pt").stat().st_mtime_ns
    data2, _ = load_or_generate(TINY_CYCLES)
    assert (d / "inputs.pt").stat().st_mtime_ns == mtime  # not regenerated
    assert torch.equal(data.conc, data2.conc)
    inputs = torch.load(d / "inputs.pt", weights_only=True)
    for forbidden in ("S", "k", "log_k", "types", "lambda", "baseline", "msg_layers", "s_all", "s_sub"):
        assert forbidden not in inputs
    n = TINY_CYCLES["n_frames"]
    assert inputs["conc"].shape == (n, TINY_CYCLES["n_metabolites"])  # run 0 only: run 1 is heldout.pt
    assert data.conc.shape == data.deriv.shape == (n, TINY_CYCLES["n_metabolites"])
    assert data.s_all is None and data.s_sub is None
    given, _ = load_or_generate(TINY_CYCLES, given_stoichiometry=True)
    truth = torch.load(truth_path, weights_only=True)
    assert torch.equal(given.s_all, truth["s_all"])
    # a different simulation section is a different dataset
    other, _ = load_or_generate({**TINY_CYCLES, "seed": 4})
    assert not torch.equal(other.conc, data.conc)
    assert not list(d.glob(".*.tmp"))  # no temporary files left behind


def test_cache_key_carries_the_format_version(monkeypatch):
    """A layout change bumps DATA_FORMAT: the old cache directory is never read with the new meaning."""
    key = simulation_hash(TINY_CYCLES)
    monkeypatch.setattr(mconfig, "DATA_FORMAT", mconfig.DATA_FORMAT + 1)
    assert simulation_hash(TINY_CYCLES) != key


def test_types_are_a_seeded_permutation_not_index_blocks():
    types = metabolite_types(100, 2, 42)
    assert torch.equal(types, metabolite_types(100, 2, 42))  # reproducible from the seed
    assert not torch.equal(types, metabolite_types(100, 2, 43))
    assert torch.bincount(types).tolist() == [50, 50]
    blocks = torch.arange(100) // 50
    idx = torch.arange(100).float()
    # no index structure predicts the type: halves, parity, any threshold on the index
    assert 0.3 < float((types == blocks).float().mean()) < 0.7
    assert 0.3 < float((types == torch.arange(100) % 2).float().mean()) < 0.7
    for cut in range(10, 100, 10):
        assert 0.3 < float(((idx >= cut).long() == types).float().mean()) < 0.7 or cut in (10, 90)
    sim = SimulationConfig.model_validate({**TINY_CYCLES, "n_metabolites": 40, "n_frames": 10})
    _, gen, _, _ = simulate(sim)
    assert torch.equal(gen.types, metabolite_types(40, 2, stream_seeds(sim)["types"]))


def test_data_depend_on_the_secret_not_only_on_the_seed(monkeypatch):
    """simulation.seed and the simulator are visible to a training; the data secret is not: without it the
    same seed gives another network, other k, other types, other initial states."""
    sim = SimulationConfig.model_validate({**TINY_CYCLES, "n_metabolites": 40, "n_reactions": 40, "n_frames": 10})
    net_a, gen_a, conc_a, _ = simulate(sim)
    monkeypatch.setenv("GNN_AGENT_DATA_SECRET", "ff" * 16)
    net_b, gen_b, conc_b, _ = simulate(sim)
    assert not torch.equal(net_a.met_sub, net_b.met_sub) and not torch.equal(gen_a.log_k, gen_b.log_k)
    assert not torch.equal(gen_a.types, gen_b.types) and not torch.equal(conc_a[:, 0], conc_b[:, 0])


def _tensors(obj) -> list[torch.Tensor]:
    return [v for v in obj.values() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("builder,given", [(stoich_cfg, False), (kinetics_cfg, True)], ids=["stoichiometry", "kinetics"])
def test_stage_writes_no_truth_and_no_run_1(tmp_path, builder, given):
    """Inspect every staged file: run 0 and the support, the queries (run 1's first frame only), S only when
    frozen; no truth tensor, no other frame of run 1, no path into the cache."""
    cfg = builder()
    dest = tmp_path / "in"
    stage(write_config(tmp_path / "c.yaml", cfg), dest, log=lambda *a: None)
    assert sorted(p.name for p in dest.iterdir()) == ["inputs.pt", "manifest.json", "queries.pt"]
    inputs = torch.load(dest / "inputs.pt", weights_only=True)
    queries = torch.load(dest / "queries.pt", weights_only=True)
    manifest = (dest / "manifest.json").read_text()
    sim = SimulationConfig.model_validate(cfg["simulation"])
    d = dataset_dir(sim)
    assert str(d.parent) not in manifest and "truth" not in manifest
    truth = torch.load(d / "truth.pt", weights_only=True)
    held = load_heldout(sim)
    data, _ = load_or_generate(sim)
    assert torch.equal(inputs["conc"], data.conc) and torch.equal(inputs["deriv"], data.deriv)
    assert ("s_all" in inputs) == given and ("s_sub" in inputs) == given
    assert set(queries) == {"c_grid", "node_c_grid", "s_values", "rollout_c0", "rollout_frames", "node_frame_idx"}
    assert torch.equal(queries["rollout_c0"], held["conc"][0])
    assert torch.equal(queries["c_grid"], query_grid(data.conc, parse_config(cfg).graph_model.eval_grid))
    secret = [truth[k] for k in ("S", "log_k", "k", "types", "lambda", "baseline")]
    if not given:
        secret += [truth["s_all"], truth["s_sub"]]
    for v in _tensors(inputs) + _tensors(queries):
        for t in secret:
            assert not (v.shape == t.shape and torch.allclose(v.double(), t.double())), v.shape
        if v.is_floating_point() and v.dim() >= 1 and v.shape[-1] == sim.n_metabolites:
            rows = v.reshape(-1, sim.n_metabolites)
            for frame in held["conc"][1:]:  # no frame of run 1 but the rollout start
                assert not (rows == frame).all(1).any()
            for frame in held["deriv"]:
                assert not (rows == frame).all(1).any()


def test_query_grid_spans_the_quantiles_not_the_range():
    c = torch.cat([torch.linspace(0, 1, 995), torch.full((5,), 100.0)])  # 0.5 % far outliers
    g = query_grid(c, 5)
    assert len(g) == 5 and float(g[0]) == pytest.approx(0.01, abs=1e-3) and float(g[-1]) < 1.01


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
        assert stage_train_evaluate(tmp_path, cfg, c.graph_model.model)[:2] == (0, 0)
        data = seen["data"]
        assert isinstance(data, TrainingData)
        assert not truth_names & {f.name for f in fields(data)}
        truth = torch.load(dataset_dir(c.simulation) / "truth.pt", weights_only=True)
        held = load_heldout(c.simulation)
        assert data.conc.shape == held["conc"].shape and not torch.equal(data.conc, held["conc"])
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
