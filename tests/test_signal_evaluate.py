"""Signal metrics (SCIENCE.md B4) can succeed and can fail."""

import numpy as np
import pytest
import torch

from regimes.signal import evaluate as E
from regimes.signal.config import GraphModelConfig, SimulationConfig
from regimes.signal.data import load_or_generate
from regimes.signal.model import SignalGNN


@pytest.fixture(scope="module")
def sparse_data(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GNN_AGENT_CACHE", str(tmp_path_factory.mktemp("cache")))
    sim = SimulationConfig(connectivity_type="sparse", n_neurons=40, n_frames=400)
    data, truth_path = load_or_generate(sim, log=lambda s: None)
    yield data, truth_path
    mp.undo()


def test_oracle_with_true_w_scores_perfectly(sparse_data):
    data, tp = sparse_data
    m = E.evaluate(E.oracle_from_truth(tp), data, tp).metrics
    assert m["connectivity_R2"] > 0.99 and m["support_auroc"] > 0.99
    assert m["connectivity_R2_unsaturated"] > 0.99 and 0 <= m["n_saturated_neurons"] < 40
    assert m["connectivity_slope"] == pytest.approx(1.0, abs=1e-3)
    assert m["test_R2"] > 0.99 and m["test_pearson"] > 0.99
    assert m["kinograph_SSIM"] > 0.99 and m["kinograph_Wasserstein"] < 1e-3
    assert m["cluster_accuracy"] == 1.0


def test_random_w_fails(sparse_data):
    data, tp = sparse_data
    w = torch.randn(40, 40, generator=torch.Generator().manual_seed(3)) / np.sqrt(40)
    m = E.evaluate(E.OracleView(w, 7.0), data, tp).metrics
    assert m["connectivity_R2"] < 0.1
    assert 0.3 < m["support_auroc"] < 0.7
    assert m["test_R2"] < 0.5


class _GaugedOracle(E.OracleView):
    """True dynamics written in another gauge: W columns / c_j, lin_edge * c_j."""

    def __init__(self, w, gain, c):
        super().__init__(w / c[None, :], gain)
        self.c = c

    def edge_curves(self, grid):
        return self.c[:, None] * self.gain * torch.tanh(grid)[None, :]

    def derivative(self, u):
        return -u + (self.c * self.gain * torch.tanh(u)) @ self.w.T


def test_gauge_correction_recovers_rescaled_columns(sparse_data):
    data, tp = sparse_data
    w = E.load_truth(tp)["W"]
    c = torch.exp(torch.randn(40, generator=torch.Generator().manual_seed(1)))
    m = E.evaluate(_GaugedOracle(w, 7.0, c), data, tp).metrics
    assert m["connectivity_R2"] > 0.99 and m["connectivity_R2_raw"] < 0.9
    assert m["test_R2"] > 0.99


def test_learned_view_of_model_holding_the_truth(sparse_data):
    data, tp = sparse_data
    model = SignalGNN(40, GraphModelConfig(lin_edge_mode="tanh"))
    with torch.no_grad():
        model.W.copy_(7.0 * E.load_truth(tp)["W"])
    m = E.evaluate(E.LearnedView(model), data, tp).metrics
    assert m["connectivity_R2"] > 0.99 and m["connectivity_slope"] == pytest.approx(1.0, abs=1e-3)


def test_low_rank_has_no_support_auroc(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path))
    sim = SimulationConfig(connectivity_type="low_rank", n_neurons=30, n_frames=200, connectivity_rank=5)
    data, tp = load_or_generate(sim, log=lambda s: None)
    ev = E.evaluate(E.oracle_from_truth(tp), data, tp)
    assert "support_auroc" not in ev.metrics and ev.metrics["connectivity_R2"] > 0.99
    text = E.format_analysis_log(ev)
    assert "support_auroc not defined" in text and "effective rank (99% var):" in text


def test_statistics_helpers():
    a = torch.randn(30, 50, generator=torch.Generator().manual_seed(0))
    assert E.ssim(a, a, data_range=2 * float(a.abs().max())) == pytest.approx(1.0)
    b = torch.randn(30, 50, generator=torch.Generator().manual_seed(1))
    assert abs(E.ssim(a, b, data_range=2 * float(a.abs().max()))) < 0.2
    assert E.mode_wasserstein(a.T, a.T) == pytest.approx(0.0, abs=1e-9)
    assert E.mode_wasserstein(a.T, 3 * a.T) > 1  # every mode three times too wide
    r2, slope, icpt = E.fit_r2(np.arange(10.0), 2 * np.arange(10.0) + 1)
    assert r2 == pytest.approx(1.0) and slope == pytest.approx(2.0) and icpt == pytest.approx(1.0)
    assert E.per_frame_r2(a, a) == pytest.approx(1.0)
    assert E.per_neuron_pearson(a, a) == pytest.approx(1.0)


def test_saturated_neurons_are_counted_and_excluded():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 6, generator=g)
    w.fill_diagonal_(0)
    u = torch.randn(500, 6, generator=g)
    u[:, 0] = 8.0 + 0.01 * u[:, 0]  # neuron 0 saturated: tanh(u_0) ~ constant
    learned = w.clone()
    learned[:, 0] = torch.randn(6, generator=g)  # its column is wrong
    learned.fill_diagonal_(0)
    m, _ = E.connectivity_metrics(E.OracleView(learned, 7.0), w, 7.0, (-3.0, 3.0), u)
    assert m["n_saturated_neurons"] == 1
    assert m["connectivity_R2_unsaturated"] > 0.99 > m["connectivity_R2"]
