"""Signal training: every B3 key has an effect, determinism, the entry's
outputs and exit codes (tiny data)."""

import json

import pytest
import torch
import yaml

from regimes.signal.config import parse_config
from regimes.signal.data import load_or_generate
from regimes.signal.model import SignalGNN
from regimes.signal.train import TrainingDiverged, iterations_per_epoch, main, train_model

SIM = {"connectivity_type": "sparse", "n_neurons": 16, "n_frames": 200}
BASE = {"n_epochs": 2, "data_augmentation_loop": 1, "batch_size": 8, "n_epochs_init": 1,
        "coeff_W_L1": 1e-3, "first_coeff_L1": 0.0, "learning_rate_start": 1e-3}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


_TRAINED: dict = {}


def _train_cached(**training):
    """Baseline trainings shared by the key tests (read-only use)."""
    key = tuple(sorted(training.items()))
    if key not in _TRAINED:
        _TRAINED[key] = _train(**training)
    return _TRAINED[key]


def _train(graph_model=None, **training):
    cfg = parse_config({"simulation": SIM, "graph_model": graph_model or {}, "training": {**BASE, **training}})
    data, _ = load_or_generate(cfg.simulation, log=lambda s: None)
    torch.manual_seed(cfg.training.seed)
    model = SignalGNN(data.n_neurons, cfg.graph_model)
    res = train_model(model, data, cfg.training)
    return model, res


def _state(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def test_iterations_per_epoch_rule():
    assert iterations_per_epoch(10000, 20, 8) == 5000
    assert iterations_per_epoch(200, 1, 8) == 5
    _, res = _train(data_augmentation_loop=2, n_epochs=3)
    assert res.n_steps == 3 * iterations_per_epoch(200, 2, 8)


@pytest.mark.parametrize("key,value", [
    ("learning_rate_W_start", 1e-2), ("learning_rate_start", 1e-2), ("coeff_W_L1", 1e-1),
    ("first_coeff_L1", 1e-1), ("coeff_edge_diff", 0.0), ("batch_size", 4), ("n_epochs", 3),
    ("n_epochs_init", 0), ("data_augmentation_loop", 2), ("seed", 7), ("recurrent_training", True),
])
def test_each_key_changes_training(key, value):
    base_model, base_res = _train_cached()
    model, res = _train(**{key: value})
    assert not torch.equal(_state(base_model), _state(model)) or not torch.equal(
        base_res.pred_losses[:5], res.pred_losses[:5]), f"{key} had no effect"


@pytest.mark.parametrize("key,value", [("time_step", 4), ("noise_recurrent_level", 0.05),
                                       ("recurrent_training_start_epoch", 1)])
def test_recurrent_keys_change_training(key, value):
    rec = {"recurrent_training": True, "time_step": 2}
    base_model, _ = _train_cached(**rec)
    model, _ = _train(**{**rec, key: value})
    assert not torch.equal(_state(base_model), _state(model)), f"{key} had no effect"


def test_single_type_freezes_embeddings_and_lr_embedding_acts_otherwise():
    model, _ = _train(training_single_type=True, learning_rate_embedding_start=1e-2)
    assert torch.equal(model.a.detach(), torch.ones_like(model.a))
    m1, _ = _train(training_single_type=False, learning_rate_embedding_start=1e-2)
    m2, _ = _train(training_single_type=False, learning_rate_embedding_start=1e-3)
    assert not torch.equal(m1.a.detach(), torch.ones_like(m1.a))
    assert not torch.equal(m1.a.detach(), m2.a.detach())


def test_l1_shrinks_w_and_diagonal_stays_out_of_the_model():
    weak, _ = _train(coeff_W_L1=0.0, n_epochs_init=0)
    strong, _ = _train(coeff_W_L1=1.0, n_epochs_init=0)
    assert strong.masked_W().abs().sum() < weak.masked_W().abs().sum()
    assert torch.all(torch.diagonal(strong.masked_W()) == 0)


def test_edge_diff_makes_lin_edge_increasing():
    grid = torch.linspace(-5, 5, 101).unsqueeze(1).expand(101, 16)
    model, _ = _train(coeff_edge_diff=1e4, n_epochs=4, learning_rate_start=1e-2)
    e = model.edge(grid).detach()[:, 0]
    assert float(torch.relu(e[:-1] - e[1:]).sum()) < 1e-3


def test_training_is_deterministic_and_needs_no_truth(tmp_path):
    m1, r1 = _train()
    cfg = parse_config({"simulation": SIM})
    _, truth_path = load_or_generate(cfg.simulation, log=lambda s: None)
    truth_path.unlink()  # training must not need the truth file
    m2, r2 = _train()
    assert torch.equal(_state(m1), _state(m2)) and torch.equal(r1.pred_losses, r2.pred_losses)


def _write_cfg(path, training=None, **sections):
    cfg = {"simulation": SIM, "graph_model": {}, "training": {**BASE, **(training or {})},
           "claude": {"n_epochs": 2, "data_augmentation_loop": 1, "n_iter_block": 4, "ucb_c": 1.414}}
    cfg.update(sections)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_entry_writes_outputs_and_is_deterministic(tmp_path):
    cfg = _write_cfg(tmp_path / "c.yaml")
    assert main(["--config", str(cfg), "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert main(["--config", str(cfg), "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    out = tmp_path / "a"
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    assert lines and set(lines[-1]) == {"step", "total", "loss", "elapsed_s"} and lines[-1]["step"] == lines[-1]["total"]
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("connectivity_R2", "connectivity_R2_raw", "connectivity_slope", "support_auroc", "test_R2",
              "test_pearson", "kinograph_R2", "kinograph_SSIM", "kinograph_Wasserstein", "cluster_accuracy",
              "final_loss", "spectral_radius", "effective_rank_90", "effective_rank_99",
              "training_time_min", "steps_per_second"):
        assert isinstance(metrics[k], (int, float)), k
    log = (out / "analysis.log").read_text()
    assert "spectral radius:" in log and "effective rank (99% var):" in log and "connectivity_R2:" in log
    assert "by construction" in log
    assert len(list((out / "plots").glob("*.png"))) == 6 and (out / "model.pt").is_file()
    other = json.loads((tmp_path / "b" / "metrics.json").read_text())
    timing = {"training_time_min", "steps_per_second"}
    assert {k: v for k, v in metrics.items() if k not in timing} == {k: v for k, v in other.items() if k not in timing}


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["training"].update(learning_rate_kk=1.0), "training.learning_rate_kk: unknown key"),
    (lambda c: c["training"].update(batch_size="big"), "training.batch_size"),
    (lambda c: c["simulation"].pop("connectivity_type"), "simulation.connectivity_type: missing"),
    (lambda c: c.update(extra_section={}), "extra_section: unknown key"),
    (lambda c: c["claude"].update(temperature=1), "claude.temperature: unknown key"),
    (lambda c: c["training"].update(time_step=500), "training.time_step: must be smaller"),
])
def test_config_errors_exit_2_with_one_line(tmp_path, capsys, mutate, needle):
    cfg = {"simulation": dict(SIM), "graph_model": {}, "training": dict(BASE), "claude": {"n_epochs": 2}}
    mutate(cfg)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    assert main(["--config", str(p), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("config error:")


def test_missing_config_path_exits_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_divergence_exits_3(tmp_path, capsys):
    cfg = _write_cfg(tmp_path / "c.yaml", training={"learning_rate_W_start": 1e30})
    assert main(["--config", str(cfg), "--out", str(tmp_path / "o")]) == 3
    err = capsys.readouterr().err
    assert "training diverged: loss is" in err and "at step" in err
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_diverged_exception_names_the_step():
    assert "loss is nan at step 12" in str(TrainingDiverged(12))
