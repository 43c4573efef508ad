"""The metabolism evaluation: the oracle scores ~1, the data-free answers score ~0 under the new scores,
the frozen parameters are checked bit for bit, and the predictions file is the only thing it trusts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _metabolism_tiny import TINY_CYCLES, TINY_RANDOM, kinetics_cfg, read_metrics, stage_train_evaluate, stoich_cfg
from regimes import runtime
from regimes.metabolism import evaluate, train
from regimes.metabolism.config import GraphModelConfig
from regimes.metabolism.data import S_VALUES, load_heldout, load_or_generate, node_frame_idx, own_range_grid, query_grid
from regimes.metabolism.evaluate import Learned, compute_metrics, load_truth, write_outputs
from regimes.registry import get_regime

#: the real network sizes (cheap with few frames): the data-free baselines depend on them
REAL_RANDOM = {**TINY_RANDOM, "n_metabolites": 100, "n_reactions": 256, "n_frames": 20, "generator_hidden": 64,
               "seed": 42}
REAL_CYCLES = {**TINY_CYCLES, "n_metabolites": 100, "n_reactions": 256, "n_frames": 300, "seed": 42}
GM = GraphModelConfig(model="kinetics", test_rollout_frames=80, eval_grid=30)
STOICH, RATE, HOMEO = (get_regime(n) for n in ("stoichiometry", "rate_constants", "homeostasis"))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))


def _dataset(sim):
    data, tp = load_or_generate(sim, log=lambda *a: None)
    return data, load_truth(tp), load_heldout(sim)["conc"]


def _true_lines(truth, c_grid, scale=None) -> torch.Tensor:
    lam, base, types = truth["lambda"].double(), truth["baseline"].double(), truth["types"]
    r = torch.ones(len(types), dtype=torch.float64) if scale is None else scale[types]
    c = c_grid.double()
    return -(r * lam[types])[:, None] * ((c if c.ndim == 2 else c[None, :]) - base[types][:, None])


def _type_embeddings(truth) -> torch.Tensor:
    types = truth["types"]
    n = len(types)
    return torch.stack([types.double() * 0.5, torch.zeros(n, dtype=torch.float64)], 1) \
        + 0.001 * torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _untrained_embeddings(n: int) -> torch.Tensor:
    return 0.1 * torch.randn(n, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _oracle(truth, data, held, gm=GM) -> Learned:
    """True S, true k, f = c^s, the true homeostasis lines, embeddings by type, the exact rollout (run 1 itself)."""
    c_grid = query_grid(data.conc, gm.eval_grid)
    frames = data.conc[node_frame_idx(data.n_frames)].double()
    t = truth["types"]
    node_frames = -truth["lambda"].double()[t] * (frames - truth["baseline"].double()[t])
    return Learned(log_k=truth["log_k"].clone(), s_all=truth["s_all"].clone(),
                   f_sub_grid=torch.stack([c_grid ** s for s in S_VALUES]), alpha=1.0,
                   node_grid=_true_lines(truth, c_grid), embeddings=_type_embeddings(truth),
                   node_own_grid=_true_lines(truth, own_range_grid(data.conc, gm.eval_grid)),
                   node_on_frames=node_frames, rollout=held[: min(gm.test_rollout_frames, data.n_frames)].clone())


def _scores(m: dict) -> dict:
    m = {**m, "frozen_params_changed": 0.0}
    return {"stoichiometry": STOICH.score(m), "rate_constants": RATE.score(m), "homeostasis": HOMEO.score(m)}


def test_oracle_scores_one_everywhere(tmp_path):
    data, truth, held = _dataset({**TINY_CYCLES, "n_metabolites": 20, "n_reactions": 22})
    hist = {"phase1": {"loss": torch.tensor([1.0, 0.5]), "regul": torch.zeros(2)}}
    good = compute_metrics(_oracle(truth, data, held), truth, data, held, GM, hist=hist)
    m = good.metrics
    assert m["stoichiometry_R2"] > 0.99 and m["stoichiometry_sign_acc"] == 1.0 and m["stoichiometry_exact_frac"] == 1.0
    assert m["rate_constants_R2"] > 0.99 and m["rate_constants_R2_fit"] > 0.99
    assert m["rate_constants_n_outliers"] == 0 and m["rate_constants_alpha"] == pytest.approx(1.0)
    assert m["MLP_sub_R2"] > 0.99 and m["MLP_node_function_R2"] > 0.999
    for t in (0, 1):
        assert m[f"MLP_node_slope_ratio_{t}"] == pytest.approx(1.0, abs=1e-6)
        assert m[f"MLP_node_offset_ratio_{t}"] == pytest.approx(1.0, abs=1e-6)
    assert m["embedding_cluster_acc"] == 1.0 and m["embedding_n_clusters"] == 2 and m["embedding_silhouette"] > 0.9
    assert 0.45 < m["embedding_cluster_acc_chance"] < 0.7
    assert m["test_R2"] > 0.999 and m["test_pearson"] > 0.999
    assert m["final_loss"] == 0.5
    scores = _scores(m)
    assert scores["rate_constants"] > 0.99 and scores["homeostasis"] > 0.99
    assert HOMEO.classify({**m, "frozen_params_changed": 0.0}) == "converged"

    out = tmp_path / "o"
    out.mkdir()
    write_outputs(out, good)
    lines = (out / "analysis.log").read_text().splitlines()
    assert lines[0].startswith("final_loss: ")
    assert all(": " in ln for ln in lines if not ln.startswith("#"))


def test_stoichiometry_oracle_and_data_free_answers():
    """Sign-only and mass-balance answers look at no data: skill ~0, score 0; the true S (any column scale) 1."""
    data, truth, _ = _dataset(REAL_RANDOM)
    s_true = truth["s_all"].double()
    sub = data.sub_to_all.numpy()
    rxn = data.rxn_all.numpy()
    sign = torch.tensor(evaluate.sign_answer(len(s_true), sub))
    mass = torch.tensor(evaluate.mass_balance_answer(len(s_true), sub, rxn, data.n_rxn))

    def metrics(s):
        return compute_metrics(Learned(s_all=s), truth, data, None, GM).metrics

    m_sign, m_mass = metrics(sign), metrics(mass)
    # the figures: both look "converged" by the old fit R²
    assert m_sign["stoichiometry_R2"] == pytest.approx(0.896, abs=0.01) and m_sign["stoichiometry_sign_acc"] == 1.0
    assert m_mass["stoichiometry_R2"] == pytest.approx(0.904, abs=0.01)
    assert m_sign["stoichiometry_R2_sign_baseline"] == m_sign["stoichiometry_R2"]
    for m in (m_sign, m_mass):
        assert m["stoichiometry_skill"] <= 1e-9 and STOICH.score(m) <= 1e-9 and STOICH.classify(m) == "failed"
        assert m["stoichiometry_exact_frac"] <= m["stoichiometry_exact_frac_baseline"]
    # the gauge is removed explicitly: any positive column scale of the true S is still perfect ...
    alpha = torch.tensor(np.random.default_rng(0).uniform(0.2, 5.0, data.n_rxn))[data.rxn_all]
    m_true = metrics(s_true * alpha)
    assert m_true["stoichiometry_skill"] == pytest.approx(1.0) and STOICH.classify(m_true) == "converged"
    # ... but a sign error is not: the negated S has fit R² 1 and skill far below 0
    m_neg = metrics(-s_true)
    assert m_neg["stoichiometry_R2"] == pytest.approx(1.0) and m_neg["stoichiometry_skill"] < -1 and STOICH.score(m_neg) == 0
    # an untrained S (init N(0, 0.1^2))
    m_init = metrics(0.1 * torch.randn(len(s_true), generator=torch.Generator().manual_seed(0)))
    assert STOICH.score(m_init) == 0.0
    # learning partially helps, monotonically
    noisy = [metrics(s_true + sd * torch.randn(len(s_true), generator=torch.Generator().manual_seed(1)))["stoichiometry_skill"]
             for sd in (0.05, 0.2, 0.5)]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2]


def test_stoichiometry_skill_by_k_third_scores_each_third_of_the_reactions_alone():
    """stoichiometry_skill_slow / _mid / _fast rank the reactions by true k and score each third's edges
    alone: S true on the fastest third and data-free elsewhere scores 1 / 0 / 0 in reverse order."""
    data, truth, _ = _dataset(REAL_RANDOM)
    s_true = truth["s_all"].double()
    sub, rxn = data.sub_to_all.numpy(), data.rxn_all.numpy()
    mass = torch.tensor(evaluate.mass_balance_answer(len(s_true), sub, rxn, data.n_rxn))
    n = data.n_rxn
    fast = torch.zeros(n, dtype=torch.bool)
    fast[torch.argsort(truth["log_k"])[2 * n // 3:]] = True
    mixed = torch.where(fast[data.rxn_all], s_true, mass)
    m = compute_metrics(Learned(s_all=mixed), truth, data, None, GM).metrics
    assert m["stoichiometry_skill_fast"] == pytest.approx(1.0)
    assert m["stoichiometry_skill_slow"] <= 1e-9 and m["stoichiometry_skill_mid"] <= 1e-9
    assert 0.0 < m["stoichiometry_skill"] < 1.0
    m = compute_metrics(Learned(s_all=s_true), truth, data, None, GM).metrics
    assert [m[f"stoichiometry_skill_{t}"] for t in evaluate.K_TERCILES] == pytest.approx([1.0, 1.0, 1.0])


def test_homeostasis_data_free_answers_score_near_zero():
    data, truth, _ = _dataset(REAL_CYCLES)
    c_grid = query_grid(data.conc, GM.eval_grid)
    own = own_range_grid(data.conc, GM.eval_grid)
    n = data.n_met

    def homeo(curve, emb):
        """curve(c) -> (n_met, G) for c the pooled grid (G,) or the own-range grids (n_met, G)."""
        learned = Learned(node_grid=curve(c_grid), node_own_grid=curve(own), embeddings=emb)
        m = compute_metrics(learned, truth, data, None, GM).metrics
        m["frozen_params_changed"] = 0.0
        return m, HOMEO.score(m), HOMEO.classify(m)

    def true(c):
        return _true_lines(truth, c)

    m, score, cls = homeo(true, _type_embeddings(truth))
    assert score > 0.99 and cls == "converged"
    # type-blind: the best single line through all metabolites' true curves (avg ratio 1.125 in the issue)
    A = torch.stack([c_grid.double().repeat(n), torch.ones(n * len(c_grid), dtype=torch.float64)], 1)
    coef = torch.linalg.lstsq(A, true(c_grid).reshape(-1, 1)).solution.flatten()
    m, score, cls = homeo(lambda c: (coef[0] * c.double() + coef[1]).expand(n, -1), _untrained_embeddings(n))
    assert 1.0 < m["avg_slope_ratio"] < 1.25 and score < 0.05 and cls != "converged"
    # ratios 0.2 and 1.8: average 1.0
    m, score, cls = homeo(lambda c: _true_lines(truth, c, torch.tensor([0.2, 1.8], dtype=torch.float64)),
                          _type_embeddings(truth))
    assert m["avg_slope_ratio"] == pytest.approx(1.0) and score < 0.05 and cls == "failed"
    # an overshoot (x2) with perfect embeddings
    m, score, _ = homeo(lambda c: 2 * true(c), _type_embeddings(truth))
    assert score < 0.05

    def zigzag(c):
        """The right lines plus a zigzag with no slope or offset of its own along each metabolite's grid."""
        c2 = c.double().expand(n, -1)
        alt = torch.tensor([(-1.0) ** i for i in range(c2.shape[1])], dtype=torch.float64).expand(n, -1)
        cm = c2 - c2.mean(1, keepdim=True)
        am = alt - alt.mean(1, keepdim=True)
        alt = am - cm * (am * cm).sum(1, keepdim=True) / (cm * cm).sum(1, keepdim=True)
        return true(c) + 0.05 * alt

    # a lucky slope: the right slopes on a zigzag curve
    m, score, cls = homeo(zigzag, _type_embeddings(truth))
    assert m["MLP_node_slope_ratio_0"] == pytest.approx(1.0) and score < 0.05 and cls == "partial"
    # flat at -1.2 (make run's best node), and an untrained MLP_node (zero output, initial embeddings)
    assert homeo(lambda c: torch.full_like(true(c), -1.2), _type_embeddings(truth))[1] < 0.05
    assert homeo(lambda c: torch.zeros_like(true(c)), _untrained_embeddings(n))[1] == 0.0


def test_node_slopes_are_fitted_on_each_metabolites_own_range():
    """Right on every metabolite's own range, wrong only beyond it (where its data say nothing): the slope
    ratios are 1; the pooled-grid diagnostic and the function R2 (on the pooled grid) see the difference."""
    data, truth, _ = _dataset(REAL_CYCLES)
    c_grid = query_grid(data.conc, GM.eval_grid)
    own = own_range_grid(data.conc, GM.eval_grid)
    assert own.shape == (data.n_met, GM.eval_grid) and bool((own[:, -1] <= c_grid[-1] * 1.5).all())
    assert float(own[:, -1].median()) < float(c_grid[-1])  # most metabolites never reach the pooled top
    top = own[:, -1:].double()

    def bent(c):  # the true line up to the metabolite's own top, flat beyond it
        return _true_lines(truth, torch.minimum(c.double().expand(data.n_met, -1), top))

    learned = Learned(node_grid=bent(c_grid), node_own_grid=bent(own), embeddings=_type_embeddings(truth))
    m = compute_metrics(learned, truth, data, None, GM).metrics
    for t in (0, 1):
        assert m[f"MLP_node_slope_ratio_{t}"] == pytest.approx(1.0, abs=1e-6)
        assert m[f"MLP_node_slope_ratio_{t}_pooled_grid"] < 0.95
    assert m["MLP_node_function_R2"] < 0.999
    with pytest.raises(ValueError, match="node_own_grid"):
        compute_metrics(Learned(node_grid=bent(c_grid), embeddings=_type_embeddings(truth)), truth, data, None, GM)


def test_untrained_models_score_zero(tmp_path):
    """n_epochs 0: the model at initialisation, through the real stage -> train -> evaluate path."""
    for name, cfg, regime in (("sto", stoich_cfg(n_epochs=0), STOICH), ("kin", kinetics_cfg(n_epochs=0), RATE)):
        assert stage_train_evaluate(tmp_path, cfg, name)[:2] == (0, 0)
        m = read_metrics(tmp_path / name)
        assert regime.score(m) == 0.0, (name, m.get(regime.primary_metric))


def _phase1_checkpoint(tmp_path):
    assert stage_train_evaluate(tmp_path, kinetics_cfg(), "phase1")[:2] == (0, 0)
    return tmp_path / "phase1" / "model.pt"


def _phase2_cfg(ck, **training):
    return kinetics_cfg(homeostasis_training=True, skip_phase1=True, phase1_checkpoint=str(ck), learning_rate_k=None,
                        learning_rate_sub=None, learning_rate_node=None, coeff_k_center=0.0, homeostasis_time_step=2,
                        **training)


def test_untrained_phase2_and_changed_frozen_params_score_zero(tmp_path, monkeypatch):
    ck = _phase1_checkpoint(tmp_path)
    assert stage_train_evaluate(tmp_path, _phase2_cfg(ck, n_epochs=0), "untrained")[:2] == (0, 0)
    m = read_metrics(tmp_path / "untrained")
    assert m["frozen_params_changed"] == 0.0 and HOMEO.score(m) == 0.0
    assert stage_train_evaluate(tmp_path, _phase2_cfg(ck), "honest")[:2] == (0, 0)
    assert read_metrics(tmp_path / "honest")["frozen_params_changed"] == 0.0

    real = train.train_phase2

    def unfreezes(model, data, cfg, progress):  # what an edit re-enabling every gradient amounts to
        hist = real(model, data, cfg, progress)
        with torch.no_grad():
            model.mlp_sub[0].weight[0, 0] += 1e-6
        return hist

    monkeypatch.setattr(train, "train_phase2", unfreezes)
    assert stage_train_evaluate(tmp_path, _phase2_cfg(ck), "unfrozen")[:2] == (0, 0)
    m = read_metrics(tmp_path / "unfrozen")
    rich = {**m, "MLP_node_slope_ratio_0": 1.0, "MLP_node_slope_ratio_1": 1.0, "MLP_node_function_R2": 1.0,
            "embedding_cluster_acc": 1.0, "embedding_cluster_acc_chance": 0.5}
    assert m["frozen_params_changed"] == 1.0 and HOMEO.score(rich) == 0.0 and HOMEO.classify(rich) == "failed"
    assert "mlp_sub.0.weight" in (tmp_path / "unfrozen" / "analysis.log").read_text()

    # predictions that report the checkpoint's values while model.pt holds the changed ones: still caught
    kept = {}

    def unfreezes_log_k(model, data, cfg, progress):
        hist = real(model, data, cfg, progress)
        kept["log_k"] = model.log_k.detach().clone()
        with torch.no_grad():
            model.log_k[0] += 1.0
        return hist

    real_pred = train.predictions

    def lies(model, *a, **kw):
        return {**real_pred(model, *a, **kw), "param.log_k": kept["log_k"]}

    monkeypatch.setattr(train, "train_phase2", unfreezes_log_k)
    monkeypatch.setattr(train, "predictions", lies)
    assert stage_train_evaluate(tmp_path, _phase2_cfg(ck), "lies")[:2] == (0, 0)
    assert read_metrics(tmp_path / "lies")["frozen_params_changed"] == 1.0
    assert "log_k (model.pt)" in (tmp_path / "lies" / "analysis.log").read_text()


class NotData:
    """An arbitrary object in a predictions file (code could travel with it)."""


def test_predictions_round_trip_and_malformed_predictions_exit_4(tmp_path, capsys):
    cfg = kinetics_cfg()
    rc_t, rc_e, out = stage_train_evaluate(tmp_path, cfg, "ok")
    assert (rc_t, rc_e) == (0, 0)
    pred_path = out / runtime.PREDICTIONS_FILE
    good = runtime.load_predictions(pred_path)
    runtime.save_predictions(tmp_path / "copy.pt", good)
    again = runtime.load_predictions(tmp_path / "copy.pt")
    assert set(again) == set(good) and all(
        torch.equal(again[k], v) if isinstance(v, torch.Tensor) else again[k] == v for k, v in good.items())
    args = ["--config", str(tmp_path / "ok.yaml"), "--inputs", str(tmp_path / "ok_inputs"), "--out", str(out), "--no-plots"]

    breakages = {
        "missing": lambda p: None,
        "no node_grid": lambda p: {k: v for k, v in p.items() if k != "node_grid"},
        "no node_own_grid": lambda p: {k: v for k, v in p.items() if k != "node_own_grid"},
        "wrong shape": lambda p: {**p, "node_grid": p["node_grid"][:, :3]},
        "nan": lambda p: {**p, "log_k": p["log_k"] * float("nan")},
        "short rollout": lambda p: {**p, "rollout": p["rollout"][:5]},
        "timing text": lambda p: {**p, "training_time_min": "fast"},
        "object": "object",
    }
    for what, breaking in breakages.items():
        pred_path.unlink(missing_ok=True)
        if breaking == "object":
            torch.save({**good, "log_k": NotData()}, pred_path)  # weights_only refuses to unpickle it
        elif breaking(good) is not None:
            torch.save(breaking(good), pred_path)
        capsys.readouterr()
        assert evaluate.main(args) == runtime.EXIT_PREDICTIONS, what
        fail = runtime.read_failure(out)
        assert fail["kind"] == "predictions" and fail["message"].startswith("predictions: "), (what, fail)
        assert capsys.readouterr().err.strip() == fail["message"]
    torch.save(good, pred_path)
    assert evaluate.main(args) == 0 and runtime.read_failure(out) is None


def test_evaluation_without_the_dataset_in_its_cache_exits_5(tmp_path, monkeypatch):
    rc_t, rc_e, out = stage_train_evaluate(tmp_path, stoich_cfg(), "s")
    assert (rc_t, rc_e) == (0, 0)
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "other"))
    rc = evaluate.main(["--config", str(tmp_path / "s.yaml"), "--inputs", str(tmp_path / "s_inputs"),
                        "--out", str(out), "--no-plots"])
    assert rc == runtime.EXIT_INPUTS and "GNN_AGENT_CACHE" in json.loads((out / "failure.json").read_text())["message"]


def test_reactions_sharing_substrates_are_counted():
    """Cycles that reuse metabolites can repeat a substrate pair: those k are not identifiable one by one."""
    sim = {**TINY_CYCLES, "n_metabolites": 9, "n_reactions": 30, "n_frames": 20}
    data, truth, _ = _dataset(sim)
    pairs = {}
    for j in range(30):
        pairs.setdefault(tuple(sorted(data.met_sub[data.rxn_sub == j].tolist())), []).append(j)
    n_shared = sum(len(g) for g in pairs.values() if len(g) > 1)
    assert 0 < n_shared < 27  # 9 metabolites, 30 reactions (36 pairs): some pairs repeat
    log_k = truth["log_k"].clone()
    shared = [j for g in pairs.values() if len(g) > 1 for j in g]
    log_k[shared] -= 2.0  # wrong only where the data cannot tell
    m = compute_metrics(Learned(log_k=log_k, alpha=1.0), truth, data, None, GM).metrics
    assert m["rate_constants_n_shared_substrates"] == n_shared
    assert m["rate_constants_R2_identifiable"] > 0.999 and m["rate_constants_R2"] < 0.5


def test_gauge_correction_undoes_a_scaled_mlp_sub():
    """k * f^n_sub is invariant under f -> alpha f, k -> k / alpha^n_sub: the corrected R² sees through it."""
    data, truth, _ = _dataset({**TINY_RANDOM, "n_frames": 20})
    alpha = 3.0
    c_grid = query_grid(data.conc, GM.eval_grid)
    lrn = Learned(log_k=truth["log_k"] - truth["n_sub"] * torch.log10(torch.tensor(alpha)),
                  f_sub_grid=torch.stack([alpha * c_grid ** s for s in S_VALUES]), alpha=alpha)
    m = compute_metrics(lrn, truth, data, None, GM).metrics
    assert m["rate_constants_alpha"] == pytest.approx(alpha, rel=1e-5)
    assert m["rate_constants_R2"] > 0.999
    assert m["MLP_sub_R2"] < 0.5 and m["MLP_sub_R2_normalized"] > 0.999
    # only the metrics that apply: no S learned, no MLP_node, no rollout
    assert "stoichiometry_R2" not in m and "avg_slope_ratio" not in m and "test_R2" not in m
    # a global offset is forgiven by the _shifted diagnostic only, never by the score
    lrn = Learned(log_k=truth["log_k"] + 0.5, alpha=1.0)
    m = compute_metrics(lrn, truth, data, None, GM).metrics
    assert m["rate_constants_R2"] < 0.5 and m["rate_constants_R2_shifted"] > 0.999
    assert m["rate_constants_n_outliers"] == len(truth["log_k"])
    assert RATE.score(m) == pytest.approx(max(0.0, m["rate_constants_R2"]))


def test_stoichiometry_exact_frac_decodes_each_column_without_the_truth():
    """exact_frac decodes each column by direction (the scale is a gauge): the true S at any column scale is
    exact, while plain rounding (exact_frac_raw) scores the scale; the truth only breaks the tie between
    valid columns of one direction ((-1, 1) and (-2, 2)), which the gauge leaves. The data-free answers
    decoded the same way are the baseline (seed 42: 0.81, raw 0.56 / 0.54): they have the right direction
    wherever a column's substrate magnitudes are equal."""
    data, truth, _ = _dataset(REAL_RANDOM)
    s_true = truth["s_all"].double()
    sub, rxn = data.sub_to_all.numpy(), data.rxn_all.numpy()
    dec = evaluate.integer_decode(s_true.numpy(), sub, rxn, data.n_rxn)
    assert (dec == s_true.numpy()).all()
    alpha = torch.tensor(np.random.default_rng(0).uniform(0.3, 3.0, data.n_rxn))[data.rxn_all]
    m = compute_metrics(Learned(s_all=s_true * alpha), truth, data, None, GM).metrics
    assert m["stoichiometry_exact_frac"] == 1.0 and m["stoichiometry_exact_frac_raw"] < 0.85
    # without the truth, a column of one direction at twice the length is the doubled column: (-1, 1) x 2
    # decodes to (-2, 2); with it as scale_ref, to the true (-1, 1) (the gauge is not scored)
    one_one = np.flatnonzero(np.bincount(rxn, minlength=data.n_rxn) == 2)
    j = next(j for j in one_one if np.all(np.abs(s_true.numpy()[rxn == j]) == 1))
    doubled = s_true.numpy().copy()
    doubled[rxn == j] *= 2.0
    assert (evaluate.integer_decode(doubled, sub, rxn, data.n_rxn)[rxn == j] == doubled[rxn == j]).all()
    ref = evaluate.integer_decode(doubled, sub, rxn, data.n_rxn, scale_ref=s_true.numpy())
    assert (ref == s_true.numpy()).all()
    # ... but the truth does not pick the direction: a column with a wrong direction stays wrong
    mixed = next(j for j in range(data.n_rxn) if len(set(np.abs(s_true.numpy()[(rxn == j) & np.isin(
        np.arange(len(rxn)), sub)]))) > 1)
    wrong = s_true.numpy().copy()
    wrong[(rxn == mixed) & np.isin(np.arange(len(rxn)), sub)] = -1.0  # the substrates' magnitudes made equal
    dec = evaluate.integer_decode(wrong, sub, rxn, data.n_rxn, scale_ref=s_true.numpy())
    assert not (dec[rxn == mixed] == s_true.numpy()[rxn == mixed]).all()
    sign = evaluate.sign_answer(len(s_true), sub)
    mass = evaluate.mass_balance_answer(len(s_true), sub, rxn, data.n_rxn)
    for s in (sign, mass):
        ms = compute_metrics(Learned(s_all=torch.tensor(s)), truth, data, None, GM).metrics
        assert ms["stoichiometry_exact_frac"] <= ms["stoichiometry_exact_frac_baseline"] < 0.85
        assert ms["stoichiometry_exact_frac_raw"] <= ms["stoichiometry_exact_frac_raw_baseline"] < 0.7
    # noise a good fit would leave still decodes mostly right; a zero column decodes to a valid one
    noisy = s_true + 0.1 * torch.randn(len(s_true), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert compute_metrics(Learned(s_all=noisy), truth, data, None, GM).metrics["stoichiometry_exact_frac"] > 0.9
    zero = evaluate.integer_decode(np.zeros(len(s_true)), sub, rxn, data.n_rxn)
    assert np.all(np.abs(zero) >= 1) and np.allclose(np.bincount(rxn, weights=zero, minlength=data.n_rxn), 0)


def test_phase1_checkpoint_scored_by_trusted_code_as_the_evaluation_scores_it(tmp_path):
    """evaluate_phase1_checkpoint (the refusal's judge of a user's --phase1-checkpoint) gives the evaluation
    entry's figures for the same model, and refuses, in one line, what is not a phase-1 model of this data."""
    from regimes.metabolism.config import ConfigError
    from regimes.metabolism.phase1 import evaluate_phase1_checkpoint

    ck = _phase1_checkpoint(tmp_path)
    entry = read_metrics(tmp_path / "phase1")
    got = evaluate_phase1_checkpoint(ck, kinetics_cfg()["simulation"])
    from regimes.metabolism.phase1 import checkpoint_sub_form
    assert checkpoint_sub_form(ck) == "softplus"  # kinetics_cfg's form (the default)
    for k in ("rate_constants_R2", "rate_constants_R2_identifiable", "test_R2", "MLP_sub_R2"):
        if k in entry:
            assert got[k] == pytest.approx(entry[k], rel=1e-6, abs=1e-9), k
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    other = {**kinetics_cfg()["simulation"], "seed": 4}
    assert stage_train_evaluate(tmp_path, stoich_cfg(n_epochs=0), "sto_learned")[:2] == (0, 0)
    stoich = tmp_path / "sto_learned" / "model.pt"  # S learned: not a phase-1 model
    for path, sim, why in ((bad, kinetics_cfg()["simulation"], "cannot read"),
                           (ck, other, "different simulation"),
                           (stoich, stoich_cfg()["simulation"], "not a kinetics model trained with S frozen")):
        with pytest.raises(ConfigError) as e:
            evaluate_phase1_checkpoint(path, sim)
        assert len(str(e.value).splitlines()) == 1 and "training.phase1_checkpoint" in str(e.value) and why in str(e.value)


def test_cluster_metrics_split_types_and_scale():
    """What the homeostasis embedding default was chosen against (prompts/regimes/homeostasis.md "Defaults"):
    a type split into two pure islands counts the unmatched island as wrong (the seed's target is 2 clusters);
    two types on curves closer than eps read as one cluster (DBSCAN's eps is absolute), and a type-blind
    embedding scores at chance."""
    from regimes.metabolism.evaluate import cluster_metrics

    rng = np.random.default_rng(0)
    types = np.repeat([0, 1], 50)
    line = np.linspace(0.0, 0.3, 50)[:, None] * np.array([[0.0, 1.0]])
    two = np.concatenate([line, line + [0.5, 0.0]])
    m, _ = cluster_metrics(two, types, eps=0.1, min_samples=5)
    assert m["embedding_cluster_acc"] == 1.0 and m["embedding_n_clusters"] == 2
    split = two.copy()
    split[50:75] += [0.0, 1.0]  # type 1's first half moved away: pure but a third cluster
    m, _ = cluster_metrics(split, types, eps=0.1, min_samples=5)
    assert m["embedding_n_clusters"] == 3 and m["embedding_cluster_acc"] == 0.75
    close = np.concatenate([line, line + [0.06, 0.0]])  # perfectly separated, but the gap is under eps
    m, _ = cluster_metrics(close, types, eps=0.1, min_samples=5)
    assert m["embedding_n_clusters"] == 1 and m["embedding_cluster_acc"] == 0.5
    blind = rng.normal(0, 0.3, (100, 2))  # positions that ignore the type
    m, _ = cluster_metrics(blind, types, eps=0.1, min_samples=5)
    assert abs(m["embedding_cluster_acc"] - m["embedding_cluster_acc_chance"]) < 0.1
