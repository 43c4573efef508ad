"""Phase 2's long-rollout keys (issue 12): homeostasis_loss, homeostasis_window_weights,
homeostasis_embedding_lr_scaling (tiny data)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from _metabolism_tiny import kinetics_cfg
from regimes.metabolism import train
from regimes.metabolism.config import ConfigError, parse_config
from regimes.metabolism.data import load_or_generate
from regimes.metabolism.model import build_model
from regimes.metabolism.train import iterations_per_epoch
from regimes.runtime import ProgressWriter


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _setup(**training):
    cfg = parse_config(kinetics_cfg(homeostasis_training=True, **training))
    data, _ = load_or_generate(cfg.simulation, given_stoichiometry=True)
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, True)
    return cfg, data, model


def _phase2(**training):
    cfg, data, model = _setup(**training)
    hist = train.train_phase2(model, data, cfg, ProgressWriter(None, 0))
    return model, hist


def _params(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _seed_loop(model, data, cfg) -> list[float]:
    """The seed's phase-2 loop as it was before the long-rollout keys (end-state loss, no weights)."""
    t = cfg.training
    node_params, gen = train.phase2_start(model, t)  # the start is shared; the loop below is the seed's own
    conc0, ynorm2, dt, B, T = data.conc, data.ynorm ** 2, data.delta_t, t.batch_size, t.homeostasis_time_step
    steps = max(1, iterations_per_epoch(data.n_frames, t.data_augmentation_loop, B) // T)
    opt = train.make_optimizer(model, [{"params": node_params, "lr": t.learning_rate_node_homeostasis},
                                       {"params": [model.a], "lr": t.learning_rate_embedding_homeostasis}])
    out = []
    for _ in range(t.n_epochs * steps):
        idx = torch.randint(0, data.n_frames - T, (B,), generator=gen)
        x = conc0[idx]
        for _s in range(T):
            x = (x + dt * model(x)).clamp_min(0.0)
        loss = ((x - conc0[idx + T]) ** 2).mean() / ((dt * T) ** 2 * ynorm2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(loss.item())
    return out


def test_neutral_keys_reproduce_the_seeds_loss():
    """end_state + uniform + constant (the pydantic defaults) is the seed's loop, step for step."""
    cfg, data, model = _setup(homeostasis_time_step=3)
    ref = _seed_loop(model, data, cfg)
    _, hist = _phase2(homeostasis_time_step=3)
    assert hist["loss"].tolist() == pytest.approx(ref, rel=1e-6, abs=0)


def test_every_step_equals_end_state_at_T1_and_differs_beyond():
    m_end, h_end = _phase2(homeostasis_time_step=1)
    m_all, h_all = _phase2(homeostasis_time_step=1, homeostasis_loss="every_step")
    assert torch.equal(h_end["loss"], h_all["loss"]) and torch.equal(_params(m_end), _params(m_all))
    _, h_end3 = _phase2(homeostasis_time_step=3)
    _, h_all3 = _phase2(homeostasis_time_step=3, homeostasis_loss="every_step")
    assert not torch.equal(h_end3["loss"], h_all3["loss"])


@pytest.mark.parametrize("weights", ["uniform", "median_cap"])
def test_every_step_loss_is_the_weighted_mean_of_the_per_step_losses(weights):
    """The first step's loss (MLP_node starts at zero output) recomputed by hand from the first batch."""
    T = 3
    cfg, data, model = _setup(homeostasis_time_step=T, homeostasis_loss="every_step", homeostasis_window_weights=weights)
    t, dt, ynorm2 = cfg.training, data.delta_t, data.ynorm ** 2
    w = train.RolloutWeights(model, data.conc, dt, weights).table(T)
    idx = torch.randint(0, data.n_frames - T, (t.batch_size,), generator=torch.Generator().manual_seed(t.seed + 3))
    with torch.no_grad():
        x, per = data.conc[idx], []
        for s in range(1, T + 1):
            x = (x + dt * model.reaction(x)).clamp_min(0.0)
            per.append(float((((x - data.conc[idx + s]) ** 2).mean(1) * w[idx, s - 1]).mean() / ((dt * s) ** 2 * ynorm2)))
    _, hist = _phase2(homeostasis_time_step=T, homeostasis_loss="every_step", homeostasis_window_weights=weights)
    assert float(hist["loss"][0]) == pytest.approx(sum(per) / T, rel=1e-5)


def test_median_cap_weights_bound_every_window_at_the_median_one():
    cfg, data, model = _setup()
    T = 5
    rw = train.RolloutWeights(model, data.conc, data.delta_t, "median_cap")
    w = rw.table(T)
    n = data.n_frames - T
    assert w.shape == (n, T) and float(w[:, 0].max()) == 1.0 and float(w.min()) > 0.0
    # the reaction-only rollout's error, recomputed: weight x max(error, median error) = s^2 x median at step 1
    with torch.no_grad():
        x, d = data.conc[:n], []
        for s in range(1, T + 1):
            x = (x + data.delta_t * model.reaction(x)).clamp_min(0.0)
            d.append(((x - data.conc[s:n + s]) ** 2).mean(1))
    d = torch.stack(d, 1)
    med = d.median(0).values
    assert torch.allclose(w * torch.maximum(d, med), torch.arange(1, T + 1) ** 2 * med[0], rtol=1e-5)
    # at least half the windows keep the full weight of their step
    assert ((w == w.max(0).values).float().mean(0) >= 0.5).all()
    # computed from the frozen reactions only: a non-zero MLP_node does not change it
    with torch.no_grad():
        model.mlp_node[-1].bias.fill_(0.3)
    assert torch.equal(train.RolloutWeights(model, data.conc, data.delta_t, "median_cap").table(T), w)
    idx = torch.tensor([0, 3])
    assert torch.equal(rw(idx, T), w[idx])


def test_median_cap_acts_in_training():
    _, h = _phase2(homeostasis_time_step=3)
    _, hw = _phase2(homeostasis_time_step=3, homeostasis_window_weights="median_cap")
    assert not torch.equal(h["loss"], hw["loss"]) and torch.isfinite(hw["loss"]).all()


def test_embedding_lr_scaling():
    t = parse_config(kinetics_cfg(homeostasis_training=True, homeostasis_time_step=16,
                                  learning_rate_embedding_homeostasis=3e-3,
                                  homeostasis_embedding_lr_scaling="rollout_length")).training
    assert train.embedding_lr_homeostasis(t) == pytest.approx(3e-3 * 16 / 4)
    t4 = t.model_copy(update={"homeostasis_time_step": 4})
    assert train.embedding_lr_homeostasis(t4) == pytest.approx(3e-3)  # slot 0 unchanged
    tc = t.model_copy(update={"homeostasis_embedding_lr_scaling": "constant"})
    assert train.embedding_lr_homeostasis(tc) == pytest.approx(3e-3)
    # and it acts: at T = 2 the scaled run (lr / 2) trains other embeddings than the constant one
    m_c, _ = _phase2(homeostasis_time_step=2)
    m_s, _ = _phase2(homeostasis_time_step=2, homeostasis_embedding_lr_scaling="rollout_length")
    assert not torch.equal(m_c.a, m_s.a)


@pytest.mark.parametrize("key,value", [("homeostasis_loss", "every_step"), ("homeostasis_window_weights", "median_cap"),
                                       ("homeostasis_embedding_lr_scaling", "rollout_length")])
def test_keys_need_homeostasis_training(key, value):
    with pytest.raises(ConfigError, match=f"training.{key}: only acts with homeostasis_training"):
        parse_config(kinetics_cfg(**{key: value}))
    with pytest.raises(ConfigError, match=f"training.{key}"):
        parse_config(kinetics_cfg(homeostasis_training=True, **{key: "bogus"}))


def test_auto_is_the_seeds_loss_up_to_short_rollout_and_the_long_recipe_beyond():
    t = parse_config(kinetics_cfg(homeostasis_training=True, homeostasis_loss="auto",
                                  homeostasis_window_weights="auto")).training
    for T, want in ((1, ("end_state", "uniform")), (train.SHORT_ROLLOUT, ("end_state", "uniform")),
                    (train.SHORT_ROLLOUT + 1, ("every_step", "median_cap")), (32, ("every_step", "median_cap"))):
        assert train.phase2_recipe(t.model_copy(update={"homeostasis_time_step": T})) == want
    explicit = t.model_copy(update={"homeostasis_loss": "every_step", "homeostasis_window_weights": "uniform"})
    assert train.phase2_recipe(explicit) == ("every_step", "uniform")  # a set value is never overridden
    # and it acts as resolved: auto at T = 3 (<= SHORT_ROLLOUT) trains the seed's loop step for step
    cfg, data, model = _setup(homeostasis_time_step=3)
    ref = _seed_loop(model, data, cfg)
    _, hist = _phase2(homeostasis_time_step=3, homeostasis_loss="auto", homeostasis_window_weights="auto")
    assert hist["loss"].tolist() == pytest.approx(ref, rel=1e-6, abs=0)


def test_phase2_windows_stay_inside_one_trajectory_segment(monkeypatch):
    """With simulation.segment_frames the run restarts from a fresh state: no rollout window may cross it,
    and the weights' median is over the windows phase 2 can draw."""
    cfg, data, model = _setup(homeostasis_time_step=3)
    seg = 10
    data = dataclasses.replace(data, segment_frames=seg)
    drawn = []
    real = train.RolloutWeights.__call__

    def spy(self, idx, T):
        drawn.append(idx.clone())
        return real(self, idx, T)

    monkeypatch.setattr(train.RolloutWeights, "__call__", spy)
    train.train_phase2(model, data, cfg, ProgressWriter(None, 0))
    idx = torch.cat(drawn)
    assert len(idx) > 0 and bool(((idx % seg) + 3 < seg).all())
    w = train.RolloutWeights(model, data.conc, data.delta_t, "median_cap", seg).table(3)
    inside = (torch.arange(len(w)) % seg) + 3 < seg
    assert float(w[inside][:, 0].max()) == 1.0  # capped at the median of the drawable windows
