"""benchmarks/signal_oracles.py: least squares recovers W from a lively system's data; W alone,
fitted by the recipe's optimizer with the true functions, approaches it; a missing system is one error."""

import json

import pytest

from regimes.signal.config import SimulationConfig
from regimes.signal.data import open_cache
from tests._bench import load_benchmark


def _mod():
    return load_benchmark("signal_oracles")


def test_oracles_on_a_tiny_system(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    open_cache(SimulationConfig(connectivity_type="sparse", n_neurons=16, n_frames=400, seed=5), log=lambda m: None)
    m = _mod()
    assert m.main(["--cache", str(tmp_path / "cache"), "--type", "sparse", "--seed", "5", "--steps", "3000",
                   "--lr-w", "1e-2"]) == 0
    out = {r["oracle"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert set(out) == {"identifiability", "least_squares", "w_only"}
    # this tiny system (test data secret) has 12 of 16 neurons saturated: a seed no recipe can converge on
    ident = out["identifiability"]
    assert ident["n_saturated_neurons"] == 12 and ident["system_degenerate"] == 1
    assert ident["connectivity_R2_ceiling"] < 0.5
    assert out["least_squares"]["connectivity_R2_unsaturated"] > 0.99  # noise-free data determine those columns
    w = out["w_only"]
    assert w["steps"] == 3000 and w["connectivity_R2_unsaturated"] > 0.7  # gradient descent finds them too
    assert w["connectivity_R2"] < ident["connectivity_R2_ceiling"]  # but not the saturated columns
    with pytest.raises(SystemExit, match="no low_rank system with seed 5"):
        m.main(["--cache", str(tmp_path / "cache"), "--type", "low_rank", "--seed", "5"])
