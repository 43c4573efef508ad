"""Signal generator and dataset cache (SCIENCE.md B1): tiny simulations."""

import math

import pytest
import torch

from regimes.signal.config import SimulationConfig
from regimes.signal.data import TrainingData, cache_dir, load_inputs, load_or_generate
from regimes.signal.simulator import effective_rank, make_connectivity, spectral_radius


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _sim(kind, n=24, frames=150, **kw):
    return SimulationConfig(connectivity_type=kind, n_neurons=n, n_frames=frames, connectivity_rank=4, **kw)


@pytest.mark.parametrize("kind", ["sparse", "low_rank"])
def test_saved_derivative_is_the_generator_applied_to_stored_w(kind):
    sim = _sim(kind)
    data, truth_path = load_or_generate(sim, log=lambda s: None)
    truth = torch.load(truth_path, weights_only=True)
    w = truth["W"]
    inputs = load_inputs(data.inputs_path)
    u, du = inputs["u"], inputs["du"]
    assert u.shape == (2, 150, 24) and du.shape == u.shape
    recomputed = -u + 7.0 * torch.tanh(u) @ w.T
    assert torch.allclose(du, recomputed, rtol=1e-5, atol=1e-5)
    # Euler with delta_t 0.01 links consecutive frames
    assert torch.allclose(u[:, 1:], u[:, :-1] + 0.01 * du[:, :-1], atol=1e-5)
    # two runs start from different states
    assert not torch.allclose(u[0, 0], u[1, 0])
    assert torch.all(torch.diagonal(w) == 0)


def test_sparse_w_statistics():
    n = 300
    sim = SimulationConfig(connectivity_type="sparse", n_neurons=n, n_frames=10)
    w = make_connectivity(sim, torch.Generator().manual_seed(0))
    off = ~torch.eye(n, dtype=torch.bool)
    zero_frac = float((w[off] == 0).float().mean())
    assert 0.47 < zero_frac < 0.53
    assert torch.all(torch.diagonal(w) == 0)
    nz = w[off][w[off] != 0]
    assert abs(float(nz.std()) * math.sqrt(n) - 1.0) < 0.05
    rho = spectral_radius(w)
    assert 0.6 < rho < 0.8  # ~ sqrt(filling factor) for N(0, 1/n) entries


def test_low_rank_w_has_rank_structure():
    n, r = 60, 5
    sim = SimulationConfig(connectivity_type="low_rank", n_neurons=n, n_frames=10, connectivity_rank=r)
    w = make_connectivity(sim, torch.Generator().manual_seed(0))
    assert torch.all(torch.diagonal(w) == 0)
    s = torch.linalg.svdvals(w.double())
    # rank r plus a small diagonal correction: energy is concentrated in r modes
    assert float((s[:r] ** 2).sum() / (s**2).sum()) > 0.95


def test_generation_reports_spectral_radius_and_effective_ranks():
    logs = []
    data, truth_path = load_or_generate(_sim("sparse"), log=logs.append)
    assert len(logs) == 1
    assert "spectral radius:" in logs[0] and "effective rank (90% var):" in logs[0] and "effective rank (99% var):" in logs[0]
    assert 1 <= data.effective_rank_90 <= data.effective_rank_99 <= 24
    truth = torch.load(truth_path, weights_only=True)
    assert truth["spectral_radius"] == pytest.approx(spectral_radius(truth["W"]))
    # second call is a cache hit: nothing generated, nothing logged, no temp files left
    logs.clear()
    data2, _ = load_or_generate(_sim("sparse"), log=logs.append)
    assert logs == [] and torch.equal(data.u, data2.u)
    assert sorted(p.name for p in cache_dir(_sim("sparse")).iterdir()) == ["inputs.pt", "truth.pt"]
    # another seed is another cache entry with other data
    data3, _ = load_or_generate(_sim("sparse", seed=7), log=logs.append)
    assert len(logs) == 1 and not torch.equal(data.u, data3.u)


def test_effective_rank_counts_components():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 10, generator=g)
    coeff = torch.randn(500, 3, generator=g) * torch.tensor([10.0, 3.0, 1.0])
    r90, r99 = effective_rank(coeff @ basis)
    assert r90 <= r99 <= 3


def test_training_data_holds_no_ground_truth():
    data, truth_path = load_or_generate(_sim("sparse"), log=lambda s: None)
    assert isinstance(data, TrainingData)
    inputs = load_inputs(data.inputs_path)
    assert "W" not in inputs and not any("truth" in k or "spectral" in k for k in inputs)
    w = torch.load(truth_path, weights_only=True)["W"]
    tensors = [v for v in vars(data).values() if isinstance(v, torch.Tensor)]
    assert tensors and all(t.shape != w.shape for t in tensors)
    assert data.u.shape == (150, 24)  # run 0 only: the held-out run is not in training data
    assert data.inputs_path != truth_path and "truth" not in str(data.inputs_path)
