"""Shipped signal configs and the benchmark plug-in."""

import pytest
import torch

from regimes.signal import bench
from regimes.signal.config import CONFIG_DIR, default_config, parse_config
from regimes.signal.model import SignalGNN
from regimes.signal.train import iterations_per_epoch


@pytest.mark.parametrize("kind", ["sparse", "low_rank"])
@pytest.mark.parametrize("variant", ["n100", "n200"])
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_default_configs_are_complete_and_use_seed_values(kind, variant, profile):
    raw = default_config(kind, variant, profile)
    assert set(raw) == {"simulation", "graph_model", "training", "claude"}
    cfg = parse_config(raw)
    assert cfg.simulation.connectivity_type == kind and cfg.simulation.n_neurons == int(variant[1:])
    assert (cfg.simulation.n_frames, cfg.simulation.delta_t, cfg.simulation.gain) == (10000, 0.01, 7.0)
    t = cfg.training
    assert (t.learning_rate_W_start, t.learning_rate_start, t.learning_rate_embedding_start) == (3e-3, 1e-4, 2.5e-4)
    assert (t.coeff_W_L1, t.coeff_edge_diff, t.n_epochs_init, t.first_coeff_L1, t.batch_size) == (1e-5, 10000, 2, 0, 8)
    assert t.training_single_type and not t.recurrent_training
    assert cfg.claude.ucb_c == 1.414 and cfg.claude.n_iter_block
    assert t.n_epochs <= cfg.claude.n_epochs and t.data_augmentation_loop <= cfg.claude.data_augmentation_loop
    # every file's listed keys equal the model's full key set (nothing left implicit)
    for section in ("simulation", "graph_model", "training"):
        assert set(raw[section]) == set(getattr(cfg, section).model_dump()), section


def test_quick_profile_is_smaller_than_full():
    q, f = (parse_config(default_config("sparse", "n100", p)).training for p in ("quick", "full"))
    steps = lambda t: t.n_epochs * iterations_per_epoch(10000, t.data_augmentation_loop, t.batch_size)  # noqa: E731
    assert steps(q) < steps(f)
    assert len(list(CONFIG_DIR.glob("*.yaml"))) == 8


def test_unknown_default_config_names_the_choices():
    with pytest.raises(ValueError, match="available"):
        default_config("sparse", "n300", "quick")


def test_naive_reference_computes_the_same_model():
    torch.manual_seed(0)
    fast = SignalGNN(12)
    naive = bench.NaiveSignalGNN(12)
    naive.load_state_dict(fast.state_dict(), strict=False)
    u = torch.randn(3, 12)
    assert torch.allclose(fast(u), naive(u), atol=1e-5)


def test_bench_plugin_interface(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path))
    items = bench.benchmarks()
    names = [n for n, _ in items]
    assert len(set(names)) == len(names) and all(n.startswith("signal/") for n in names)
    setup = dict(items)["signal/train_step sparse n100 b8"]
    step, unit = setup("cpu")
    assert unit == "step"
    w0 = step.model.W.detach().clone()
    step()  # one real gradient step
    assert not torch.equal(w0, step.model.W.detach())
    assert bench.benchmarks_naive()
