"""A new simulation.seed is a new system (issue 15): another W, generated once and cached, staged
outside the training; each dataset reports its identifiability and degenerate systems are flagged."""

import json

import pytest
import torch

from regimes.signal.config import SimulationConfig
from regimes.signal.data import open_cache
from regimes.signal.simulator import SATURATION_STD, identifiability
from tests._signal_tiny import run_chain, write_config


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _sim(seed, kind="sparse"):
    return SimulationConfig(connectivity_type=kind, n_neurons=24, n_frames=150, connectivity_rank=4, seed=seed)


def test_each_seed_is_another_system_generated_once():
    logs = []
    a, b = open_cache(_sim(42), log=logs.append), open_cache(_sim(43), log=logs.append)
    assert a.directory != b.directory and not torch.equal(a.truth()["W"], b.truth()["W"])
    again = open_cache(_sim(43), log=logs.append)  # a cache hit: not generated again
    assert again.directory == b.directory and len(logs) == 2
    assert "seed 42" in logs[0] and "seed 43" in logs[1] and "saturated neurons:" in logs[0]


def test_identifiability_flags_a_system_near_a_fixed_point():
    g = torch.Generator().manual_seed(0)
    lively = torch.randn(500, 20, generator=g)  # tanh(u) varies on every neuron, many modes
    ident = identifiability(lively)
    assert ident["n_saturated_neurons"] == 0 and ident["system_degenerate"] == 0 and ident["effective_rank_90"] > 10
    stuck = lively * 0.01 + 3.0  # every neuron pinned near +3: tanh(u) ~ constant
    stuck[:, :5] = lively[:, :5]  # five neurons still move
    ident = identifiability(stuck)
    assert torch.tanh(stuck[:, 5:]).std(0).max() < SATURATION_STD
    assert ident["n_saturated_neurons"] == 15 and ident["system_degenerate"] == 1
    assert "15 of 20 neurons saturated" in ident["degenerate_reason"]


def test_evaluation_reports_the_systems_identifiability(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", simulation={"seed": 7})
    rc_train, rc_eval, _, out = run_chain(cfg, tmp_path)
    assert (rc_train, rc_eval) == (0, 0)
    m = json.loads((out / "metrics.json").read_text())
    assert m["system_degenerate"] in (0, 1) and "n_saturated_neurons" in m and "effective_rank_90" in m
    log = (out / "analysis.log").read_text()
    assert "saturated neurons (tanh(u) std < 0.2):" in log and "  system: " in log
    if m["system_degenerate"]:
        assert "degenerate system (near a fixed point" in log


def test_only_the_system_seed_of_the_simulation_may_change():
    import copy

    from regimes.registry import get_regime
    from regimes.validation import validate_config_change

    for name in ("sparse_connectivity", "low_rank_connectivity", "stoichiometry", "rate_constants"):
        r = get_regime(name)
        old = r.default_config()
        new = copy.deepcopy(old)
        new["simulation"]["seed"] = old["simulation"]["seed"] + 1
        assert validate_config_change(r, old, new) == [], name
        other = next(k for k in old["simulation"] if k != "seed")
        bad = copy.deepcopy(new)
        bad["simulation"][other] = "changed"
        assert [v.kind for v in validate_config_change(r, old, bad)] == ["frozen"], name
    h = get_regime("homeostasis")
    old = h.default_config()
    new = copy.deepcopy(old)
    new["simulation"]["seed"] = old["simulation"]["seed"] + 1
    assert [v.kind for v in validate_config_change(h, old, new)] == ["frozen"]  # the phase-1 checkpoint fixes it
