"""Signal generator, dataset cache and staging (SCIENCE.md B1, docs/contracts.md §2b): tiny simulations."""

import math
import os

import pytest
import torch
import yaml

from regimes import runtime
from regimes.signal import data as data_mod
from regimes.signal.config import SimulationConfig
from regimes.signal.data import cache_dir, load_staged, open_cache, stage
from regimes.signal.simulator import effective_rank, make_connectivity, spectral_radius


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _sim(kind, n=24, frames=150, **kw):
    return SimulationConfig(connectivity_type=kind, n_neurons=n, n_frames=frames, connectivity_rank=4, **kw)


def _config(path, sim: SimulationConfig):
    path.write_text(yaml.safe_dump({"simulation": sim.model_dump(mode="json")}))
    return path


@pytest.mark.parametrize("kind", ["sparse", "low_rank"])
def test_saved_derivative_is_the_generator_applied_to_stored_w(kind):
    entry = open_cache(_sim(kind), log=lambda s: None)
    w = entry.truth()["W"]
    run0 = torch.load(entry.directory / data_mod.RUN0, weights_only=True)
    run1 = torch.load(entry.directory / data_mod.RUN1, weights_only=True)
    for run in (run0, run1):
        u, du = run["u"], run["du"]
        assert u.shape == (150, 24) and du.shape == u.shape
        assert torch.allclose(du, -u + 7.0 * torch.tanh(u) @ w.T, rtol=1e-5, atol=1e-5)
        # Euler with delta_t 0.01 links consecutive frames
        assert torch.allclose(u[1:], u[:-1] + 0.01 * du[:-1], atol=1e-5)
    assert not torch.allclose(run0["u"][0], run1["u"][0])  # two runs from different states
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
    entry = open_cache(_sim("sparse"), log=logs.append)
    data = entry.training_data()
    assert len(logs) == 1
    assert "spectral radius:" in logs[0] and "effective rank (90% var):" in logs[0] and "effective rank (99% var):" in logs[0]
    assert 1 <= data.effective_rank_90 <= data.effective_rank_99 <= 24
    truth = entry.truth()
    assert truth["spectral_radius"] == pytest.approx(spectral_radius(truth["W"]))
    # second call is a cache hit: nothing generated, nothing logged, no temp files left
    logs.clear()
    data2 = open_cache(_sim("sparse"), log=logs.append).training_data()
    assert logs == [] and torch.equal(data.u, data2.u)
    assert sorted(p.name for p in cache_dir(_sim("sparse")).iterdir()) == ["queries.pt", "run0.pt", "run1.pt", "truth.pt"]
    # another seed is another cache entry with other data
    data3 = open_cache(_sim("sparse", seed=7), log=logs.append).training_data()
    assert len(logs) == 1 and not torch.equal(data.u, data3.u)


def test_cache_key_carries_the_format_version(monkeypatch):
    before = cache_dir(_sim("sparse"))
    monkeypatch.setattr(data_mod, "CACHE_FORMAT", data_mod.CACHE_FORMAT + 1)
    assert cache_dir(_sim("sparse")) != before


def test_effective_rank_counts_components():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 10, generator=g)
    coeff = torch.randn(500, 3, generator=g) * torch.tensor([10.0, 3.0, 1.0])
    r90, r99 = effective_rank(coeff @ basis)
    assert r90 <= r99 <= 3


def _tensors(blob: dict) -> list[torch.Tensor]:
    return [v for v in blob.values() if isinstance(v, torch.Tensor)]


def test_stage_writes_run0_and_queries_only(tmp_path):
    sim = _sim("sparse")
    dest = tmp_path / "inputs"
    stage(_config(tmp_path / "c.yaml", sim), dest)
    entry = open_cache(sim, log=lambda s: None)
    w, heldout, run0 = entry.truth()["W"], entry.heldout(), entry.training_data()

    assert sorted(p.name for p in dest.iterdir()) == ["inputs.pt", "queries.pt"]
    for f in dest.iterdir():
        st = os.lstat(f)
        assert not f.is_symlink() and st.st_nlink == 1  # copies: nothing leads back into the cache
        raw = f.read_bytes()
        assert str(entry.directory).encode() not in raw and str(tmp_path / "cache").encode() not in raw
        blob = torch.load(f, weights_only=True)
        assert not any(k in blob for k in ("W", "truth", "gain", "spectral_radius"))
        for t in _tensors(blob):
            assert t.shape != w.shape or not torch.allclose(t, w)
            # nothing of run 1 beyond its first frame (the rollout's start)
            if t.dim() == 2:
                assert not torch.allclose(t[1:3], heldout[1:3])
    staged = torch.load(dest / "inputs.pt", weights_only=True)
    assert staged["u"].shape == (150, 24) and torch.equal(staged["u"], run0.u)
    q = torch.load(dest / "queries.pt", weights_only=True)
    assert torch.equal(q["rollout_u0"], heldout[0]) and q["rollout_frames"] == 150
    lo, hi = (float(torch.quantile(run0.u.flatten().double(), p)) for p in (0.01, 0.99))
    assert q["grid"].shape == (data_mod.N_GRID,)
    assert float(q["grid"][0]) == pytest.approx(lo, abs=1e-5) and float(q["grid"][-1]) == pytest.approx(hi, abs=1e-5)
    assert float(q["grid"][-1]) < float(run0.u.max())  # quantiles, not min-max


def test_load_staged_round_trip_and_bad_inputs(tmp_path):
    sim = _sim("sparse")
    stage(_config(tmp_path / "c.yaml", sim), tmp_path / "in")
    data, queries = load_staged(tmp_path / "in")
    ref = open_cache(sim, log=lambda s: None)
    assert torch.equal(data.u, ref.training_data().u) and torch.equal(queries.grid, ref.queries().grid)
    assert data.n_neurons == 24 and queries.rollout_u0.shape == (24,)
    with pytest.raises(runtime.EntryError) as e:
        load_staged(tmp_path / "empty")
    assert e.value.kind == "inputs" and "does not hold staged signal inputs" in e.value.message


def test_stage_config_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"simulation": {"connectivity_type": "dense"}}))
    with pytest.raises(runtime.EntryError) as e:
        stage(bad, tmp_path / "in")
    assert e.value.kind == "config" and e.value.message.startswith("config error: simulation.connectivity_type")
    assert not (tmp_path / "in").exists()


def test_seed_and_simulator_alone_do_not_give_back_w(tmp_path, monkeypatch):
    """The route a training could take without reading a file: rerun the simulator with simulation.seed."""
    sim = _sim("sparse")
    w = open_cache(sim, log=lambda s: None).truth()["W"]
    regenerated = make_connectivity(sim, torch.Generator().manual_seed(sim.seed))
    off = ~torch.eye(sim.n_neurons, dtype=torch.bool)
    assert abs(float(torch.corrcoef(torch.stack([w[off], regenerated[off]]))[0, 1])) < 0.2
    # the same secret gives the same data; another secret other data in another cache entry
    assert torch.equal(make_connectivity(sim, data_mod.generators(sim, tmp_path / "cache")[0]), w)
    first = cache_dir(sim)
    monkeypatch.setenv("GNN_AGENT_DATA_SECRET", "ff" * 16)
    assert cache_dir(sim) != first
    assert not torch.equal(open_cache(sim, log=lambda s: None).truth()["W"], w)
