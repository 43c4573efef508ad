"""Signal training: every B3 key has an effect, determinism, memory flat in steps, and the
stage -> train -> evaluate entries (outputs, predictions, exit codes, failure.json) on tiny data."""

import gc
import json
import shutil
import warnings

import pytest
import torch
import yaml

from _signal_tiny import BASE, SIM, run_chain, write_config
from regimes import runtime
from regimes.signal import evaluate as evaluate_mod
from regimes.signal import train as train_mod
from regimes.signal.config import parse_config
from regimes.signal.data import open_cache, stage
from regimes.signal.model import SignalGNN
from regimes.signal.train import iterations_per_epoch, main, train_model


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
    data = open_cache(cfg.simulation, log=lambda s: None).training_data()
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


def test_memory_is_flat_in_the_number_of_steps(monkeypatch):
    """No per-step tensor survives its step (a list of per-step losses grew RSS ~55 KB per step)."""
    counts = []

    def progress(step, total, loss, elapsed):
        if step not in (3, total):  # two heap scans: early and at the end
            return
        gc.collect()
        with warnings.catch_warnings():  # isinstance on some lazy torch module proxies warns
            warnings.simplefilter("ignore")
            counts.append(sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor)))

    monkeypatch.setattr(train_mod, "PROGRESS_EVERY_S", 0.0)  # report (and count) at every step
    cfg = parse_config({"simulation": SIM, "training": {**BASE, "n_epochs": 8}})
    data = open_cache(cfg.simulation, log=lambda s: None).training_data()
    res = train_model(SignalGNN(data.n_neurons), data, cfg.training, progress=progress)
    assert res.n_steps == 40 and len(counts) == 2
    assert counts[1] - counts[0] <= 2, counts  # the old per-step lists: +74 here


def test_training_is_deterministic_and_needs_only_its_inputs(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    stage(cfg, tmp_path / "in")
    shutil.rmtree(tmp_path / "cache")  # training must need nothing of the cache (truth, run 1)
    for out in ("a", "b"):
        assert main(["--config", str(cfg), "--inputs", str(tmp_path / "in"), "--out", str(tmp_path / out)]) == 0
    assert not (tmp_path / "cache").exists()
    pa, pb = (torch.load(tmp_path / o / "predictions.pt", weights_only=True) for o in ("a", "b"))
    for k in ("W", "lin_edge", "lin_phi", "rollout", "pred_losses"):
        assert torch.equal(pa[k], pb[k]), k


def test_entries_write_outputs_and_are_deterministic(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    assert run_chain(cfg, tmp_path / "a", plots=True)[:2] == (0, 0)
    assert run_chain(cfg, tmp_path / "b")[:2] == (0, 0)
    out = tmp_path / "a" / "out"
    lines = [json.loads(x) for x in (out / "progress.jsonl").read_text().splitlines()]
    assert lines and set(lines[-1]) == {"step", "total", "loss", "elapsed_s"} and lines[-1]["step"] == lines[-1]["total"]
    metrics = json.loads((out / "metrics.json").read_text())
    for k in ("connectivity_R2", "connectivity_R2_fit", "connectivity_R2_raw", "connectivity_slope",
              "support_auroc", "test_R2", "test_pearson", "kinograph_R2", "kinograph_SSIM",
              "kinograph_Wasserstein", "cluster_accuracy", "final_loss", "spectral_radius", "effective_rank_90",
              "effective_rank_99", "training_time_min", "steps_per_second"):
        assert isinstance(metrics[k], (int, float)), k
    log = (out / "analysis.log").read_text()
    assert "spectral radius:" in log and "effective rank (99% var):" in log and "connectivity_R2:" in log
    assert "by construction" in log and "identity R2" in log
    assert len(list((out / "plots").glob("*.png"))) == 6 and (out / "model.pt").is_file()
    other = json.loads((tmp_path / "b" / "out" / "metrics.json").read_text())
    timing = {"training_time_min", "steps_per_second"}
    assert {k: v for k, v in metrics.items() if k not in timing} == {k: v for k, v in other.items() if k not in timing}


def test_predictions_round_trip(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    rc, _, inputs, out = run_chain(cfg, tmp_path)
    assert rc == 0
    n, steps = SIM["n_neurons"], 2 * iterations_per_epoch(SIM["n_frames"], 1, 8)
    raw = runtime.load_predictions(out / "predictions.pt", evaluate_mod.required_shapes(n, 200, SIM["n_frames"]))
    model = SignalGNN(n)
    model.load_state_dict(torch.load(out / "model.pt", weights_only=True))
    assert torch.equal(raw["W"], model.masked_W().detach()) and torch.all(torch.diagonal(raw["W"]) == 0)
    assert raw["embeddings"].shape == (n, 2) and raw["n_steps"] == steps and raw["pred_losses"].shape == (steps,)
    grid = torch.load(inputs / "queries.pt", weights_only=True)["grid"]
    with torch.no_grad():
        assert torch.allclose(raw["lin_edge"], model.edge(grid[:, None].expand(200, n)).T)
    u0 = torch.load(inputs / "queries.pt", weights_only=True)["rollout_u0"]
    assert torch.equal(raw["rollout"][0], u0)
    answer = evaluate_mod.answer_from_predictions(raw)
    assert answer.n_steps == steps and torch.equal(answer.W, raw["W"].double())


class _NotData:
    pass


@pytest.fixture(scope="module")
def trained_once(tmp_path_factory):
    """One staged and trained tiny run (its own cache), shared by the malformed-predictions cases."""
    root = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    mp.setenv("GNN_AGENT_CACHE", str(root / "cache"))
    cfg = write_config(root / "c.yaml")
    rc, rc_eval, inputs, out = run_chain(cfg, root)
    assert (rc, rc_eval) == (0, 0)
    yield cfg, inputs, out
    mp.undo()


@pytest.mark.parametrize("mutate,needle", [
    (lambda p: p.pop("lin_edge"), "predictions: lin_edge is missing"),
    (lambda p: p.update(W=p["W"][:, :3]), "predictions: W has shape"),
    (lambda p: p.update(rollout=p["rollout"][:10]), "predictions: rollout has shape"),
    (lambda p: p["lin_phi"].__setitem__((0, 0), float("nan")), "predictions: lin_phi holds nan or inf"),
    (lambda p: p.update(n_steps="many"), "predictions: n_steps must be a finite number"),
    (lambda p: p.update(pred_losses=p["pred_losses"][:1]), "the loss histories must hold n_steps"),
    (lambda p: p.update(extra=_NotData()), "cannot be read safely"),
])
def test_malformed_predictions_exit_4_with_failure_json(trained_once, tmp_path, capsys, mutate, needle):
    cfg, inputs, good = trained_once
    out = tmp_path / "out"
    shutil.copytree(good, out)
    pred = torch.load(out / "predictions.pt", weights_only=True)
    mutate(pred)
    torch.save(pred, out / "predictions.pt")
    capsys.readouterr()
    assert evaluate_mod.main(["--config", str(cfg), "--inputs", str(inputs), "--out", str(out), "--no-plots"]) == 4
    failure = json.loads((out / "failure.json").read_text())
    assert failure["kind"] == "predictions" and needle in failure["message"], failure
    assert needle in capsys.readouterr().err
    (out / "predictions.pt").unlink()
    assert evaluate_mod.main(["--config", str(cfg), "--inputs", str(inputs), "--out", str(out), "--no-plots"]) == 4
    assert "predictions.pt is missing" in json.loads((out / "failure.json").read_text())["message"]


@pytest.mark.parametrize("mutate,needle", [
    (lambda c: c["training"].update(learning_rate_kk=1.0), "training.learning_rate_kk: unknown key"),
    (lambda c: c["training"].update(batch_size="big"), "training.batch_size"),
    (lambda c: c["simulation"].pop("connectivity_type"), "simulation.connectivity_type: missing"),
    (lambda c: c.update(extra_section={}), "extra_section: unknown key"),
    (lambda c: c["claude"].update(temperature=1), "claude.temperature: unknown key"),
    (lambda c: c["training"].update(time_step=500), "training.time_step: must be smaller"),
])
def test_config_errors_exit_2_with_one_line(tmp_path, capsys, mutate, needle):
    stage(write_config(tmp_path / "good.yaml"), tmp_path / "in")
    cfg = {"simulation": dict(SIM), "graph_model": {}, "training": dict(BASE), "claude": {"n_epochs": 2}}
    mutate(cfg)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()
    assert main(["--config", str(p), "--inputs", str(tmp_path / "in"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err and err.startswith("config error:")
    assert json.loads((tmp_path / "o" / "failure.json").read_text())["kind"] == "config"


def test_missing_config_path_exits_2(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml"), "--inputs", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "nope.yaml: config file not found" in capsys.readouterr().err


def test_missing_inputs_exit_5(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml")
    assert main(["--config", str(cfg), "--inputs", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 5
    assert json.loads((tmp_path / "o" / "failure.json").read_text())["kind"] == "inputs"


def test_divergence_exits_3(tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", training={"learning_rate_W_start": 1e30})
    rc, _, _, out = run_chain(cfg, tmp_path)
    assert rc == 3
    err = capsys.readouterr().err
    assert "training diverged: loss is" in err and "at step" in err
    assert json.loads((out / "failure.json").read_text())["kind"] == "diverged"
    assert not (out / "predictions.pt").exists() and not (out / "metrics.json").exists()
