"""The stoichiometry datasets (issue 13): segmented runs, generator weight gain, limited fraction,
sign initialisation of the learned S, and the keys that go with them (tiny data)."""

from __future__ import annotations

import json

import pytest
import torch

from _metabolism_tiny import TINY_CYCLES, TINY_RANDOM, read_metrics, stage_train_evaluate, stoich_cfg
from regimes.metabolism import evaluate, train
from regimes.metabolism.config import ConfigError, SimulationConfig, parse_config
from regimes.metabolism.data import dataset_dir, load_heldout, load_or_generate, make_queries
from regimes.metabolism.model import build_model
from regimes.metabolism.simulator import Generator, build_network, simulate
from regimes.runtime import ProgressWriter

SEGMENTED = {**TINY_RANDOM, "flux_limiter": False, "delta_t": 0.1, "segment_frames": 20, "generator_weight_gain": 3.0}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def test_segments_restart_from_fresh_states_and_follow_euler_inside():
    sim = SimulationConfig.model_validate(SEGMENTED)
    net, gen, conc, deriv = simulate(sim)
    seg, n = 20, sim.n_frames
    step = (conc[:, :-1] + sim.delta_t * deriv[:, :-1]).clamp_min(0)
    inside = torch.tensor([(t + 1) % seg != 0 for t in range(n - 1)])
    assert torch.allclose(conc[:, 1:][:, inside], step[:, inside], atol=1e-5)
    # at every segment start the state is a fresh draw in [c_init_min, c_init_max], not the Euler step
    starts = torch.arange(seg, n, seg)
    assert not torch.allclose(conc[:, starts], step[:, starts - 1], atol=1e-3)
    assert float(conc[:, starts].min()) >= sim.c_init_min and float(conc[:, starts].max()) <= sim.c_init_max
    # deriv is the generator's exact dc/dt at every frame, restarts included
    assert torch.allclose(deriv[0], gen.dcdt(conc[0]), rtol=1e-5, atol=1e-6)


def test_unsegmented_runs_are_unchanged_by_the_segment_code():
    # segment_frames = n_frames draws the initial state once, exactly like no segments at all
    a = simulate(SimulationConfig.model_validate(TINY_RANDOM))[2]
    b = simulate(SimulationConfig.model_validate({**TINY_RANDOM, "segment_frames": TINY_RANDOM["n_frames"]}))[2]
    assert torch.equal(a, b)


def test_window_starts_never_cross_a_segment():
    data, _ = load_or_generate(SEGMENTED)
    assert data.segment_frames == 20
    assert len(data.window_starts(0)) == data.n_frames
    w = data.window_starts(5)
    assert len(w) == (data.n_frames // 20) * 15
    assert torch.all(w % 20 + 5 < 20)
    plain, _ = load_or_generate(TINY_RANDOM)
    assert torch.equal(plain.window_starts(3), torch.arange(plain.n_frames - 3))


def test_recurrent_training_stays_inside_segments(monkeypatch):
    seen = []
    cfg = parse_config({**stoich_cfg(recurrent_training=True, time_step=4), "simulation": dict(SEGMENTED)})
    data, _ = load_or_generate(cfg.simulation)
    starts = data.window_starts(4)
    monkeypatch.setattr(type(data), "window_starts", lambda self, span: seen.append(span) or starts)
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, False)
    train.train_phase1(model, data, cfg, ProgressWriter(None, 0))
    assert seen == [4]  # the sampled windows are those of data.window_starts(time_step)


def test_weight_gain_scales_the_generator_mlps():
    def layers(gain):
        sim = SimulationConfig.model_validate({**TINY_RANDOM, "generator_weight_gain": gain})
        g = torch.Generator().manual_seed(1)
        gen = Generator(sim, build_network(sim, g), g, 0)
        return gen.msg_layers + gen.rate_layers

    for (w1, b1), (w3, b3) in zip(layers(1.0), layers(3.0)):
        assert torch.allclose(3.0 * w1, w3) and torch.allclose(3.0 * b1, b3)


def test_limited_fraction_is_reported(tmp_path):
    load_or_generate(TINY_RANDOM)  # dt = 1 with the limiter on: many reaction-frames limited
    info = json.loads((dataset_dir(SimulationConfig.model_validate(TINY_RANDOM)) / "info.json").read_text())
    assert info["limited_fraction"] > 0.05
    load_or_generate(SEGMENTED)
    info2 = json.loads((dataset_dir(SimulationConfig.model_validate(SEGMENTED)) / "info.json").read_text())
    assert info2["limited_fraction"] < 0.05
    assert {"activity_rank_90", "activity_rank_99"} <= set(info2)
    rc = stage_train_evaluate(tmp_path, {**stoich_cfg(), "simulation": dict(SEGMENTED)}, "seg")
    assert rc[:2] == (0, 0)
    m = read_metrics(rc[2])
    assert m["limited_fraction"] == pytest.approx(info2["limited_fraction"])
    assert -1.0 <= m["test_pearson"] <= 1.0  # the per-segment rollouts went through predictions and evaluation
    log = (rc[2] / "analysis.log").read_text()
    assert "limited_fraction:" in log and "activity_rank_99:" in log and "trajectory segments of run 1" in log


def test_sign_init_starts_at_the_sign_answer():
    cfg = parse_config({**stoich_cfg("untied"), "simulation": dict(SEGMENTED)})
    cfg.graph_model.init_S, cfg.graph_model.init_S_std = "sign", 0.0
    data, truth_path = load_or_generate(cfg.simulation)
    model = build_model(cfg.graph_model, data, False)
    truth = torch.load(truth_path, weights_only=True)
    assert torch.equal(model.sto_all.detach(), torch.sign(truth["s_all"]))
    assert torch.equal(model.sto_sub.detach(), torch.ones_like(model.sto_sub))
    cfg.graph_model.init_S_std = 0.1  # the std is the noise around the sign
    noisy = build_model(cfg.graph_model, data, False).sto_all.detach()
    assert 0.02 < float((noisy - torch.sign(truth["s_all"])).std()) < 0.2


def test_test_rollout_is_scored_per_segment():
    cfg = parse_config({**stoich_cfg(), "simulation": dict(SEGMENTED)})
    data, truth_path = load_or_generate(cfg.simulation)
    held = load_heldout(cfg.simulation)
    truth = evaluate.load_truth(truth_path)
    seg = data.segment_frames
    n_seg = min(cfg.graph_model.test_rollout_frames, data.n_frames) // seg
    q = make_queries(cfg, {"conc": data.conc, "segment_frames": seg}, held)
    # the queries ask for one rollout from the first frame of each of run 1's first segments
    assert q["rollout_frames"] == seg and torch.equal(q["rollout_c0"], held["conc"][0:n_seg * seg:seg])
    assert evaluate.rollout_shape(cfg.graph_model.test_rollout_frames, data.n_frames, seg, data.n_met) == \
        (n_seg, seg, data.n_met)
    exact = held["conc"][:n_seg * seg].reshape(n_seg, seg, -1).clone()
    res = evaluate.compute_metrics(evaluate.Learned(rollout=exact), truth, data, held["conc"], cfg.graph_model)
    assert res.metrics["test_R2"] == pytest.approx(1.0)
    # a rollout that stays at each segment's first state scores nothing, even though the restarts
    # alone would explain most of the variance of the concatenated series
    still = exact[:, :1].expand(-1, seg, -1).clone()
    res0 = evaluate.compute_metrics(evaluate.Learned(rollout=still), truth, data, held["conc"], cfg.graph_model)
    assert res0.metrics["test_R2"] <= 0.0
    plain = evaluate.series_scores(evaluate._np(held["conc"][:n_seg * seg]), evaluate._np(still.reshape(n_seg * seg, -1)))
    assert plain[0] > 0.5  # what the restarts alone would have earned on the concatenation
    # the trained model answers the same queries with the same shape
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, False)
    p = train.predictions(model, data, q, {}, {})
    assert tuple(p["rollout"].shape) == (n_seg, seg, data.n_met)
    assert torch.equal(p["rollout"][:, 0], q["rollout_c0"])


@pytest.mark.parametrize("sim, key", [({**TINY_CYCLES, "generator_weight_gain": 2.0}, "generator_weight_gain"),
                                      ({**TINY_RANDOM, "segment_frames": 7}, "segment_frames")])
def test_simulation_keys_that_cannot_act_are_rejected(sim, key):
    with pytest.raises(ConfigError, match=f"simulation.{key}"):
        parse_config({**stoich_cfg(), "simulation": sim})


def test_two_phase_without_an_L1_difference_is_rejected():
    with pytest.raises(ConfigError, match="training.n_epochs_init: has no effect"):
        parse_config(stoich_cfg(n_epochs_init=1))
    parse_config(stoich_cfg(n_epochs_init=1, first_coeff_L1=0.1))


def test_sign_init_with_a_frozen_S_is_rejected():
    from _metabolism_tiny import kinetics_cfg
    raw = kinetics_cfg()
    raw["graph_model"]["init_S"] = "sign"
    with pytest.raises(ConfigError, match="graph_model.init_S"):
        parse_config(raw)


def test_balanced_init_is_the_mass_balance_answer():
    cfg = parse_config({**stoich_cfg(), "simulation": dict(SEGMENTED)})
    cfg.graph_model.init_S, cfg.graph_model.init_S_std = "balanced", 0.0
    data, truth_path = load_or_generate(cfg.simulation)
    s = build_model(cfg.graph_model, data, False).sto_all.detach()
    truth = torch.load(truth_path, weights_only=True)["s_all"]
    assert torch.equal(torch.sign(s), torch.sign(truth))
    assert torch.all(s[truth < 0] == -1.0)
    cols = torch.zeros(data.n_rxn).index_add_(0, data.rxn_all, s)
    assert torch.allclose(cols, torch.zeros_like(cols), atol=1e-6)  # every column sums to zero
    # a one-substrate reaction with coefficient 1 has one product with coefficient 1: exact
    n_sub = torch.bincount(data.rxn_sub, minlength=data.n_rxn)
    one = (n_sub == 1) & (torch.bincount(data.rxn_all, minlength=data.n_rxn) == 2)
    e = one[data.rxn_all] & (truth > 0) & (truth.abs() == 1)
    assert torch.all(s[e] == 1.0)
