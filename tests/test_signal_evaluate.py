"""Signal metrics (SCIENCE.md B4) succeed on the truth and give nothing to answers that learned
nothing: -W, a random W, zeros, an untrained model (sign-aware connectivity_R2)."""

import numpy as np
import pytest
import torch

from regimes.registry import get_regime
from regimes.signal import evaluate as E
from regimes.signal.config import GraphModelConfig, SimulationConfig
from regimes.signal.data import open_cache
from regimes.signal.model import SignalGNN
from regimes.signal.train import TrainResult, predictions

N = 40
SPARSE = get_regime("sparse_connectivity")


@pytest.fixture(scope="module")
def sparse(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("GNN_AGENT_CACHE", str(tmp_path_factory.mktemp("cache")))
    entry = open_cache(SimulationConfig(connectivity_type="sparse", n_neurons=N, n_frames=400), log=lambda s: None)
    yield entry.training_data(), entry.queries(), entry.truth(), entry.heldout()
    mp.undo()


def _eval(sparse, answer):
    data, queries, truth, heldout = sparse
    return E.evaluate(answer, data, queries, truth, heldout).metrics


def _oracle(sparse, w):
    data, queries, truth, _ = sparse
    return E.oracle_answer(w, float(truth["gain"]), queries, data.delta_t)


def test_oracle_with_true_w_scores_perfectly(sparse):
    m = _eval(sparse, _oracle(sparse, sparse[2]["W"]))
    assert m["connectivity_R2"] > 0.99 and m["connectivity_R2_fit"] > 0.99 and m["support_auroc"] > 0.99
    assert m["connectivity_R2_unsaturated"] > 0.99 and 0 <= m["n_saturated_neurons"] < N
    assert m["connectivity_slope"] == pytest.approx(1.0, abs=1e-3)
    assert m["test_R2"] > 0.99 and m["test_pearson"] > 0.99
    assert m["kinograph_SSIM"] > 0.99 and m["kinograph_Wasserstein"] < 1e-3
    assert m["cluster_accuracy"] == 1.0
    assert SPARSE.score(m) > 0.99 and SPARSE.classify(m) == "converged"


def test_negated_w_scores_badly_though_its_fit_r2_is_perfect(sparse):
    m = _eval(sparse, _oracle(sparse, -sparse[2]["W"]))
    assert m["connectivity_R2"] == pytest.approx(-3.0, abs=0.05)  # 1 - |2W|^2 / |W|^2
    assert m["connectivity_R2_unsaturated"] < -2.5
    assert m["connectivity_R2_fit"] > 0.99 and m["connectivity_slope"] == pytest.approx(-1.0, abs=1e-3)
    assert SPARSE.score(m) == 0.0 and SPARSE.classify(m) == "failed"
    assert get_regime("low_rank_connectivity").score(m) == 0.0


@pytest.mark.parametrize("name", ["random", "zeros", "shuffled"])
def test_data_free_w_scores_zero(sparse, name):
    w_true = sparse[2]["W"]
    g = torch.Generator().manual_seed(3)
    w = {"random": torch.randn(N, N, generator=g) / np.sqrt(N), "zeros": torch.zeros(N, N),
         # the true entries in a random arrangement: right distribution, wrong places
         "shuffled": w_true.flatten()[torch.randperm(N * N, generator=g)].view(N, N)}[name]
    m = _eval(sparse, _oracle(sparse, w))
    assert m["connectivity_R2"] < 0.02 and SPARSE.score(m) <= 0.02
    assert m["connectivity_R2_fit"] < 0.1
    if name != "zeros":
        assert 0.3 < m["support_auroc"] < 0.7 and m["test_R2"] < 0.5


def _untrained(sparse, seed=0):
    data, queries, _, _ = sparse
    torch.manual_seed(seed)
    model = SignalGNN(N)
    res = TrainResult(pred_losses=torch.zeros(0), total_losses=torch.zeros(0), n_steps=0, elapsed_s=0.0, cpu_s=0.0)
    return E.answer_from_predictions(predictions(model, data, queries, res))


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_model_scores_zero(sparse, seed):
    m = _eval(sparse, _untrained(sparse, seed))
    assert m["connectivity_R2"] <= 0.02 and SPARSE.score(m) <= 0.02 and SPARSE.classify(m) == "failed"


class _Gauged:
    """The true dynamics in another gauge: W columns / c_j, lin_edge * c_j (some c_j negative)."""

    @staticmethod
    def answer(sparse, c):
        data, queries, truth, _ = sparse
        gain = float(truth["gain"])
        base = E.oracle_answer(truth["W"] / c[None, :], gain, queries, data.delta_t)
        edge = c[:, None].double() * gain * torch.tanh(queries.grid.double())[None, :]
        return E.Answer(W=base.W, lin_edge=edge, lin_phi=base.lin_phi, rollout=base.rollout)


def test_gauge_correction_recovers_rescaled_and_sign_flipped_columns(sparse):
    g = torch.Generator().manual_seed(1)
    c = torch.exp(torch.randn(N, generator=g)) * torch.where(torch.rand(N, generator=g) < 0.5, -1.0, 1.0)
    m = _eval(sparse, _Gauged.answer(sparse, c))
    assert m["connectivity_R2"] > 0.99 and m["connectivity_R2_raw"] < 0.9


def test_learned_view_of_model_holding_the_truth(sparse):
    data, queries, truth, _ = sparse
    model = SignalGNN(N, GraphModelConfig(lin_edge_mode="tanh"))
    with torch.no_grad():
        model.W.copy_(7.0 * truth["W"])
    res = TrainResult(pred_losses=torch.ones(3), total_losses=torch.ones(3), n_steps=3, elapsed_s=1.0, cpu_s=1.0)
    m = _eval(sparse, E.answer_from_predictions(predictions(model, data, queries, res)))
    assert m["connectivity_R2"] > 0.99 and m["connectivity_slope"] == pytest.approx(1.0, abs=1e-3)
    assert m["final_loss"] == 1.0 and m["steps_per_second"] == pytest.approx(3.0)


def test_low_rank_has_no_support_auroc(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path))
    entry = open_cache(SimulationConfig(connectivity_type="low_rank", n_neurons=30, n_frames=200,
                                        connectivity_rank=5), log=lambda s: None)
    data, queries, truth = entry.training_data(), entry.queries(), entry.truth()
    ev = E.evaluate(E.oracle_answer(truth["W"], 7.0, queries, data.delta_t), data, queries, truth, entry.heldout())
    assert "support_auroc" not in ev.metrics and ev.metrics["connectivity_R2"] > 0.99
    text = "\n".join(E.format_analysis_log(ev))
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
    x = np.arange(10.0)
    assert E.identity_r2(x, x) == pytest.approx(1.0) and E.identity_r2(x, 2 * x + 1) < 0
    assert E.identity_r2(x, -x) == pytest.approx(1 - (4 * x**2).sum() / ((x - x.mean()) ** 2).sum())
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
    grid = torch.linspace(-3, 3, 50)
    answer = E.Answer(W=learned.double(), lin_edge=(7.0 * torch.tanh(grid)).expand(6, 50).double(),
                      lin_phi=(-grid).expand(6, 50).double(), rollout=torch.zeros(5, 6))
    m, _ = E.connectivity_metrics(answer, w, 7.0, grid, u)
    assert m["n_saturated_neurons"] == 1
    assert m["connectivity_R2_unsaturated"] > 0.99 > m["connectivity_R2"]
