"""Training entry (reads only the staged inputs) and training keys of the metabolism package (tiny data)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _metabolism_tiny import kinetics_cfg, read_metrics, stage_train_evaluate, stoich_cfg, write_config
from regimes import runtime
from regimes.metabolism import data as mdata
from regimes.metabolism import train
from regimes.metabolism.config import parse_config
from regimes.metabolism.data import load_or_generate
from regimes.metabolism.model import build_model
from regimes.runtime import ProgressWriter

ROOT = Path(__file__).resolve().parents[1]
TIMING = {"training_time_min", "steps_per_second"}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _write(tmp_path: Path, cfg: dict, name: str = "c.yaml") -> Path:
    return write_config(tmp_path / name, cfg)


def _phase1(cfg_dict: dict):
    cfg = parse_config(cfg_dict)
    data, _ = load_or_generate(cfg.simulation, given_stoichiometry=cfg.training.freeze_stoichiometry)
    torch.manual_seed(cfg.training.seed)
    model = build_model(cfg.graph_model, data, cfg.training.freeze_stoichiometry)
    hist = train.train_phase1(model, data, cfg, ProgressWriter(None, 0))
    return model, hist


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _differs(a, b) -> bool:
    (ma, ha), (mb, hb) = a, b
    pa, pb = _flat(ma), _flat(mb)
    return not torch.equal(ha["loss"], hb["loss"]) or pa.shape != pb.shape or not torch.equal(pa, pb)


# (config builder, key, value): each must change the trained parameters or the loss history
KEY_CASES = [
    (kinetics_cfg, "learning_rate_start", 1e-2),  # falls back to the embedding lr here
    (kinetics_cfg, "learning_rate_k", 1e-2),
    (kinetics_cfg, "learning_rate_sub", 1e-2),
    (kinetics_cfg, "learning_rate_node", 1e-2),
    (kinetics_cfg, "learning_rate_embedding", 1e-2),
    (kinetics_cfg, "coeff_MLP_sub_diff", 1e3),
    (kinetics_cfg, "coeff_MLP_sub_norm", 10.0),
    (kinetics_cfg, "coeff_MLP_node_L1", 10.0),
    (kinetics_cfg, "coeff_k_center", 20.0),
    (kinetics_cfg, "coeff_k_prior", 1.0),
    (kinetics_cfg, "coeff_MLP_sub_zero", 10.0),
    (kinetics_cfg, "lr_schedule", "cosine"),
    (kinetics_cfg, "k_least_squares", True),
    (kinetics_cfg, "batch_size", 8),
    (kinetics_cfg, "n_epochs", 2),
    (kinetics_cfg, "data_augmentation_loop", 3),
    (kinetics_cfg, "seed", 1),
    (stoich_cfg, "learning_rate_S_start", 1e-2),
    (stoich_cfg, "learning_rate_k", 1e-2),
    (stoich_cfg, "coeff_S_L1", 0.5),
    (stoich_cfg, "coeff_S_L2", 0.5),
    (stoich_cfg, "coeff_S_integer", 0.5),
    (stoich_cfg, "coeff_mass_conservation", 0.5),
    (stoich_cfg, "coeff_S_prior", 0.5),
]


@pytest.mark.parametrize("builder,key,value", KEY_CASES, ids=[f"{b.__name__[:4]}-{k}" for b, k, _ in KEY_CASES])
def test_training_key_has_an_effect(builder, key, value):
    base = _phase1(builder())
    changed = _phase1(builder(**{key: value}))
    assert _differs(base, changed), f"training.{key}={value} changed nothing"


@pytest.mark.parametrize("extra", [{"recurrent_training": True, "time_step": 3},
                                   {"time_step": 5}, {"noise_recurrent_level": 0.05}],
                         ids=["recurrent_training", "time_step", "noise_recurrent_level"])
def test_recurrent_keys_have_an_effect(extra):
    base = {"recurrent_training": True, "time_step": 3} if "recurrent_training" not in extra else {}
    a = _phase1(kinetics_cfg(**base))
    b = _phase1(kinetics_cfg(**{**base, **extra}))
    assert _differs(a, b)


def test_two_phase_L1_schedule():
    base = dict(coeff_S_L1=0.5, n_epochs=2)
    a = _phase1(stoich_cfg(**base))
    b = _phase1(stoich_cfg(**base, n_epochs_init=1))  # epoch 0 uses first_coeff_L1 = 0
    c = _phase1(stoich_cfg(**base, n_epochs_init=1, first_coeff_L1=2.0))
    assert _differs(a, b) and _differs(b, c)
    assert b[1]["regul"][0] == 0.0 and a[1]["regul"][0] > 0 and c[1]["regul"][0] > a[1]["regul"][0]


def test_S_shape_prior_holds_columns_at_the_data_free_direction_whatever_their_scale():
    """coeff_S_prior pulls each column's direction to the balanced data-free answer and nothing else: its
    gradient is orthogonal to the column (the scale gauge), and a strong prior keeps the learned columns
    closer in direction to that answer than no prior does."""
    from regimes.metabolism.model import data_free_S

    def mean_cos(model, data):
        s0 = data_free_S("balanced", data)
        s = model.sto_all.detach()
        rxn = data.rxn_all

        def col(x):
            return torch.zeros(data.n_rxn).index_add_(0, rxn, x)
        return float((col(s * s0) / (col(s * s) * col(s0 * s0)).sqrt()).mean())

    cfg = dict(learning_rate_S_start=3e-2, n_epochs=2)
    free, _ = _phase1(stoich_cfg("untied", **cfg))
    held, hist = _phase1(stoich_cfg("untied", coeff_S_prior=5.0, **cfg))
    data, _ = load_or_generate(stoich_cfg()["simulation"])
    assert mean_cos(held, data) > mean_cos(free, data) + 0.01
    assert hist["regul"][-1] < hist["regul"][0]
    # the penalty is scale-free: zero at the target at any column scale, and its gradient has no
    # component along a column
    s0 = data_free_S("balanced", data)
    scale = torch.rand(data.n_rxn, generator=torch.Generator().manual_seed(1))[data.rxn_all] + 0.5
    assert float(train.S_shape_prior(s0 * scale, s0, data.rxn_all, data.n_rxn)) == pytest.approx(0.0, abs=1e-6)
    s = (s0 + 0.3 * torch.randn(len(s0), generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    train.S_shape_prior(s, s0, data.rxn_all, data.n_rxn).backward()
    along = torch.zeros(data.n_rxn).index_add_(0, data.rxn_all, (s.grad * s).detach())
    assert along.abs().max() < 1e-6 and s.grad.abs().max() > 1e-4


def test_freeze_stoichiometry_and_variant():
    frozen, _ = _phase1(kinetics_cfg())
    data, _ = load_or_generate(kinetics_cfg()["simulation"], given_stoichiometry=True)
    assert torch.equal(frozen.sto_all, data.s_all) and "sto_all" not in dict(frozen.named_parameters())
    learned, _ = _phase1(kinetics_cfg(freeze_stoichiometry=False, learning_rate_S_start=1e-2))
    assert "sto_all" in dict(learned.named_parameters())
    tied, _ = _phase1(stoich_cfg("tied"))
    untied, _ = _phase1(stoich_cfg("untied"))
    assert tied.sto_sub is None and isinstance(untied.sto_sub, torch.nn.Parameter)


def _phase2(**training):
    cfg = parse_config(kinetics_cfg(homeostasis_training=True, **training))
    data, _ = load_or_generate(cfg.simulation, given_stoichiometry=True)
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hist = train.train_phase2(model, data, cfg, ProgressWriter(None, 0))
    return model, hist, before


def test_phase2_freezes_reactions_and_its_keys_act():
    model, hist, before = _phase2()
    for name in ("log_k", "sto_all"):
        assert torch.equal(model.state_dict()[name], before[name])
    for k, v in model.state_dict().items():
        if k.startswith("mlp_sub"):
            assert torch.equal(v, before[k])
    ipe = train.iterations_per_epoch(120, 2, 4)
    assert hist["steps"] == ipe // 4  # homeostasis_time_step 4
    base = (model, hist)
    for extra in ({"homeostasis_time_step": 2}, {"learning_rate_node_homeostasis": 1e-1},
                  {"learning_rate_embedding_homeostasis": 1e-1}, {"noise_recurrent_level": 0.05},
                  {"lr_schedule_homeostasis": "cosine"}):
        m, h, _ = _phase2(**extra)
        assert _differs(base, (m, h)), extra


def test_history_is_preallocated_and_grows_when_needed():
    h = train.History(2)
    for v in range(5):
        h.append(float(v))
    assert len(h) == 5 and torch.equal(h.values(), torch.arange(5, dtype=torch.float64))


def test_determinism_same_config_same_metrics(tmp_path):
    cfg = kinetics_cfg()
    assert stage_train_evaluate(tmp_path, cfg, "a")[:2] == (0, 0)
    assert stage_train_evaluate(tmp_path, cfg, "b")[:2] == (0, 0)
    m1, m2 = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert {k: v for k, v in m1.items() if k not in TIMING} == {k: v for k, v in m2.items() if k not in TIMING}
    assert "rate_constants_R2" in m1 and "avg_slope_ratio" in m1 and "stoichiometry_R2" not in m1


def _main(capsys, args) -> tuple[int, str]:
    rc = train.main(args)
    return rc, capsys.readouterr().err


def _staged(tmp_path, cfg: dict) -> Path:
    inputs = tmp_path / "inputs"
    mdata.stage(_write(tmp_path, cfg, "staged.yaml"), inputs, log=lambda *a: None)
    return inputs


@pytest.mark.parametrize("mutate,expect", [
    (lambda c: c["training"].update(learning_rate_kk=1e-3), "config error: training.learning_rate_kk: unknown key"),
    (lambda c: c["training"].update(batch_size="eight"), "config error: training.batch_size:"),
    (lambda c: c.pop("graph_model"), "config error: graph_model: missing key"),
    (lambda c: c["simulation"].update(network="grid"), "config error: simulation.network:"),
    (lambda c: c["training"].update(coeff_S_L1=0.1), "config error: training.coeff_S_L1: has no effect with freeze_stoichiometry"),
], ids=["unknown-key", "wrong-type", "missing-section", "bad-choice", "inert-key"])
def test_broken_config_exits_2_with_one_line(tmp_path, capsys, mutate, expect):
    inputs = _staged(tmp_path, kinetics_cfg())
    cfg = kinetics_cfg()
    mutate(cfg)
    out = tmp_path / "o"
    rc, err = _main(capsys, ["--config", str(_write(tmp_path, cfg)), "--inputs", str(inputs), "--out", str(out)])
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(expect), err
    assert runtime.read_failure(out) == {"kind": "config", "message": err.strip()}


def test_stage_refuses_a_missing_or_foreign_phase1_checkpoint(tmp_path):
    h = kinetics_cfg(homeostasis_training=True, skip_phase1=True, phase1_checkpoint="/nonexistent/model.pt",
                     learning_rate_k=None, learning_rate_sub=None, learning_rate_node=None, coeff_k_center=0.0)
    with pytest.raises(runtime.EntryError, match="config error: training.phase1_checkpoint: no such file: /nonexistent/model.pt"):
        mdata.stage(_write(tmp_path, h), tmp_path / "in")
    assert stage_train_evaluate(tmp_path, kinetics_cfg(), "p1")[:2] == (0, 0)
    h["training"]["phase1_checkpoint"] = str(tmp_path / "p1" / "model.pt")
    h["simulation"]["seed"] = 99
    with pytest.raises(runtime.EntryError, match="training.phase1_checkpoint: .* different simulation") as e:
        mdata.stage(_write(tmp_path, h), tmp_path / "in2")
    assert e.value.kind == "config"


def test_nan_loss_exits_3(tmp_path, capsys, monkeypatch):
    from regimes.metabolism.model import KineticsModel
    inputs = _staged(tmp_path, kinetics_cfg())
    monkeypatch.setattr(KineticsModel, "forward", lambda self, c: c * float("nan"))
    out = tmp_path / "o"
    rc, err = _main(capsys, ["--config", str(_write(tmp_path, kinetics_cfg())), "--inputs", str(inputs), "--out", str(out)])
    assert rc == 3 and err.strip() == "training diverged: loss is nan at step 1"
    assert runtime.read_failure(out)["kind"] == "diverged"


def test_training_reads_only_the_staged_inputs(tmp_path, capsys, monkeypatch):
    """Staged with one cache, trained with the cache pointing at an empty directory: nothing else is needed."""
    cfg = stoich_cfg()
    inputs = _staged(tmp_path, cfg)
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "empty"))
    out = tmp_path / "o"
    rc, err = _main(capsys, ["--config", str(_write(tmp_path, cfg)), "--inputs", str(inputs), "--out", str(out)])
    assert rc == 0, err
    assert not (tmp_path / "empty").exists()
    p = runtime.load_predictions(out / runtime.PREDICTIONS_FILE)
    assert {"log_k", "s_all", "rollout", "loss.phase1", "training_time_min"} <= set(p)
    assert not (out / runtime.METRICS_FILE).exists()  # the training computes no metric


def test_missing_or_mismatched_inputs_exit_5(tmp_path, capsys):
    out = tmp_path / "o"
    rc, err = _main(capsys, ["--config", str(_write(tmp_path, kinetics_cfg())), "--inputs", str(tmp_path / "none"),
                             "--out", str(out)])
    assert rc == 5 and err.startswith("inputs: ") and runtime.read_failure(out)["kind"] == "inputs"
    inputs = _staged(tmp_path, stoich_cfg())  # S not given, but this config freezes S
    rc, err = _main(capsys, ["--config", str(_write(tmp_path, kinetics_cfg())), "--inputs", str(inputs), "--out", str(out)])
    assert rc == 5 and "freeze_stoichiometry" in err


def test_entry_subprocesses_write_everything(tmp_path):
    cfg = stoich_cfg()
    inputs = _staged(tmp_path, cfg)
    out = tmp_path / "out"
    common = ["--config", str(_write(tmp_path, cfg)), "--inputs", str(inputs), "--out", str(out)]
    r = subprocess.run([sys.executable, "-m", "regimes.metabolism.train", *common, "--device", "auto"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "regimes.metabolism.evaluate", *common],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert "stoichiometry_skill" in metrics and "rate_constants_R2" not in metrics
    log = dict(ln.split(": ", 1) for ln in (out / "analysis.log").read_text().splitlines() if not ln.startswith("#"))
    assert float(log["stoichiometry_R2"]) == pytest.approx(metrics["stoichiometry_R2"], rel=1e-5)
    prog = [json.loads(ln) for ln in (out / "progress.jsonl").read_text().splitlines()]
    assert set(prog[-1]) == {"step", "total", "loss", "elapsed_s"} and prog[-1]["step"] == prog[-1]["total"]
    assert {p.name for p in (out / "plots").glob("*.png")} >= {"stoichiometry.png", "loss.png", "rollout.png"}
    assert (out / "model.pt").is_file() and not (out / runtime.FAILURE_FILE).exists()


def test_cosine_schedule_decays_every_group_to_zero(monkeypatch):
    from regimes.metabolism.fast import FlatAdam

    seen = []
    for cls in (torch.optim.Adam, FlatAdam):  # FlatAdam with the fast path, Adam with the reference one
        def spy(self, *a, real_step=cls.step, **k):
            seen.append([g["lr"] for g in self.param_groups])
            return real_step(self, *a, **k)

        monkeypatch.setattr(cls, "step", spy)
    _phase1(kinetics_cfg(lr_schedule="cosine", data_augmentation_loop=10))
    first, last = seen[0], seen[-1]
    assert first == pytest.approx([5e-3, 5e-4, 1e-3, 1e-3])  # step 0: log_k, MLP_sub, MLP_node, embedding
    assert all(0 < lr < 0.01 * f for lr, f in zip(last, first))
    seen.clear()
    _phase1(kinetics_cfg(data_augmentation_loop=10))
    assert seen[0] == seen[-1]  # constant (the default)


def test_k_prior_acts_on_the_gauge_corrected_log_k():
    """coeff_k_prior pulls log k + n_sub log10 f(1,1) (what rate_constants_R2 scores) to the centre: raw
    log k at the centre with f(1,1) != 1 is still pulled, toward centre - n_sub log10 f(1,1)."""
    cfg = parse_config(kinetics_cfg(coeff_k_prior=1.0))
    data, _ = load_or_generate(cfg.simulation, given_stoichiometry=True)
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, True)
    with torch.no_grad():
        model.log_k.fill_(data.log_k_center)
    one = torch.ones(1)
    alpha = float(model.f_sub(one, one).detach())
    assert abs(alpha - 1.0) > 0.05  # a fresh MLP_sub: f(1,1) about softplus(0)
    corrected = model.log_k + model.n_sub * torch.log10(model.f_sub(one, one))
    ((corrected - data.log_k_center) ** 2).mean().backward()
    # the gradient pushes raw log k against the gauge offset n_sub log10 alpha
    assert torch.all(torch.sign(model.log_k.grad) == math.copysign(1.0, math.log10(alpha)))


@pytest.mark.parametrize("key,value", [("coeff_k_prior", 1e-3), ("coeff_MLP_sub_zero", 1.0), ("lr_schedule", "cosine"),
                                       ("k_least_squares", True)])
def test_phase1_recipe_keys_are_config_errors_where_they_cannot_act(key, value):
    h = kinetics_cfg(homeostasis_training=True, skip_phase1=True, phase1_checkpoint="/x/model.pt",
                     learning_rate_k=None, learning_rate_sub=None, learning_rate_node=None, coeff_k_center=0.0,
                     **{key: value})
    with pytest.raises(ValueError, match=f"training.{key}: phase 1 is skipped"):
        parse_config(h)
    if key != "lr_schedule":  # the schedule acts on the stoichiometry model too
        with pytest.raises(ValueError, match=f"training.{key}: only acts on graph_model.model: kinetics"):
            parse_config(stoich_cfg(**{key: value}))


def _gm(cfg: dict, **gm) -> dict:
    cfg["graph_model"].update(gm)
    return cfg


def test_mlp_sub_form_c_softplus_vanishes_at_zero_and_acts():
    cfg = parse_config(_gm(kinetics_cfg(), mlp_sub_form="c_softplus"))
    data, _ = load_or_generate(cfg.simulation, given_stoichiometry=True)
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, True)
    c = torch.tensor([0.0, 1e-3, 0.5, 3.0])
    f = model.f_sub(c, torch.ones_like(c))
    assert f[0] == 0.0 and torch.all(f[1:] > 0)
    # c times what the softplus form gives with the same weights
    torch.manual_seed(0)
    plain = build_model(parse_config(kinetics_cfg()).graph_model, data, True)
    assert torch.allclose(f, c * plain.f_sub(c, torch.ones_like(c)))
    assert _differs(_phase1(kinetics_cfg()), _phase1(_gm(kinetics_cfg(), mlp_sub_form="c_softplus")))


def test_mlp_sub_form_and_k_least_squares_are_config_errors_where_they_cannot_act():
    with pytest.raises(ValueError, match="training.coeff_MLP_sub_zero: has no effect with graph_model.mlp_sub_form"):
        parse_config(_gm(kinetics_cfg(coeff_MLP_sub_zero=1.0), mlp_sub_form="c_softplus"))
    with pytest.raises(ValueError, match="graph_model.mlp_sub_form: only acts on graph_model.model: kinetics"):
        parse_config(_gm(stoich_cfg(), mlp_sub_form="c_softplus"))
    with pytest.raises(ValueError, match="training.k_least_squares: needs freeze_stoichiometry"):
        parse_config(kinetics_cfg(k_least_squares=True, freeze_stoichiometry=False))


def test_least_squares_k_recovers_the_true_k_for_the_true_rate_law():
    """With f = c (mass action, |s| = 1) and the true homeostasis as MLP_node, the derivative fit is linear
    in k and exact: the solve returns the true k for every reaction the data determine."""
    import types

    from regimes.metabolism.evaluate import load_truth, shared_substrate_reactions

    cfg = parse_config(kinetics_cfg())
    data, truth_path = load_or_generate(cfg.simulation, given_stoichiometry=True)
    truth = load_truth(truth_path)
    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, True)
    model.fast = False  # the reference code calls the replaced f_sub / node below
    model.f_sub = types.MethodType(lambda self, c, s: torch.broadcast_tensors(c, s)[0] ** s, model)
    lam, base, ty = truth["lambda"], truth["baseline"], truth["types"]
    model.node = types.MethodType(lambda self, c: -lam[ty] * (c - base[ty]), model)
    with torch.no_grad():
        model.log_k.fill_(-1.5)
    assert train.least_squares_k(model, data) == 0
    keep = torch.from_numpy(~shared_substrate_reactions(data, truth))
    err = (model.log_k.detach() - truth["log_k"]).abs()[keep]
    assert float(err.max()) < 1e-3, err
    # and the fit itself: the derivatives are reproduced
    with torch.no_grad():
        assert float(((model(data.conc) - data.deriv) ** 2).mean() / data.ynorm ** 2) < 1e-8


def test_batch_indices_in_blocks_are_the_per_step_draws():
    """BatchIndices draws a block of steps in one randint call: the same frames, step by step, as one draw per
    step from the same generator (so block sampling changes no training's numbers)."""
    from regimes.metabolism.train import BatchIndices

    starts = torch.arange(5, 2000, 3)
    g_ref, g_blk, g_one = (torch.Generator().manual_seed(7) for _ in range(3))
    blocks = BatchIndices(starts, 8, g_blk, "cpu", block=16)
    one = BatchIndices(starts, 8, g_one, "cpu", per_step=True)
    for _ in range(40):  # crosses block boundaries
        want = starts[torch.randint(0, len(starts), (8,), generator=g_ref)]
        assert torch.equal(blocks.next(), want) and torch.equal(one.next(), want)
    assert one.block == 1


def test_S_least_squares_recovers_the_S_of_exact_derivatives():
    """least_squares_S: with derivatives made by the model's own rates and a chosen S, a near-zero ridge returns
    that S from a wrong start; a huge ridge keeps the trained S; any ridge does not worsen the full-batch fit."""
    import dataclasses

    cfg = parse_config(stoich_cfg("untied"))
    data, _ = load_or_generate(cfg.simulation)
    import types

    torch.manual_seed(0)
    model = build_model(cfg.graph_model, data, False)
    model.fast = False
    gen = torch.Generator().manual_seed(1)
    # rates that differ between reactions (a fresh rate MLP's, or a rank-2 trajectory's, are near-collinear)
    w = torch.randn(data.n_met, data.n_rxn, generator=gen) * 0.3
    model.rates = types.MethodType(lambda self, c: torch.exp((c - c.mean()) @ w), model)
    s_true = torch.randint(1, 3, (len(data.met_all),), generator=gen).float() * torch.where(
        torch.zeros(len(data.met_all), dtype=torch.bool).index_fill_(0, data.sub_to_all, True), -1.0, 1.0)
    with torch.no_grad():
        model.sto_all.copy_(s_true)
        conc = torch.rand(data.conc.shape, generator=gen) * 5.0  # independent frames: the rates are not collinear
        deriv = model.rates(conc) @ model.S_T()
        exact = dataclasses.replace(data, conc=conc, deriv=deriv)
        start = s_true + 0.5 * torch.randn(len(s_true), generator=gen)

    def fit() -> float:
        with torch.no_grad():
            return float(((model.rates(exact.conc) @ model.S_T() - deriv) ** 2).mean())

    with torch.no_grad():
        model.sto_all.copy_(start)
    before = fit()
    train.least_squares_S(model, exact, 1e-9)
    assert torch.allclose(model.sto_all.detach(), s_true, atol=1e-3), (model.sto_all - s_true).abs().max()
    with torch.no_grad():
        model.sto_all.copy_(start)
    train.least_squares_S(model, exact, 1e8)
    assert torch.allclose(model.sto_all.detach(), start, atol=1e-4)
    with torch.no_grad():
        model.sto_all.copy_(start)
    train.least_squares_S(model, exact, 0.01)
    assert fit() < before
    assert not torch.allclose(model.sto_all.detach(), start, atol=1e-3)


def test_S_least_squares_acts_in_phase1_and_is_rejected_where_it_cannot_act():
    free, _ = _phase1(stoich_cfg("untied"))
    solved, _ = _phase1(stoich_cfg("untied", S_least_squares=0.01))
    # the same steps (the solve runs after them): only sto_all differs
    assert torch.equal(free.sto_sub.detach(), solved.sto_sub.detach())
    assert torch.equal(free.log_k.detach(), solved.log_k.detach())
    assert not torch.allclose(free.sto_all.detach(), solved.sto_all.detach(), atol=1e-4)
    for cfg in (stoich_cfg("tied", S_least_squares=0.01), kinetics_cfg(S_least_squares=0.01)):
        with pytest.raises(ValueError, match="training.S_least_squares: "):
            parse_config(cfg)
    with pytest.raises(ValueError):
        parse_config(stoich_cfg("untied", S_least_squares=-1.0))
