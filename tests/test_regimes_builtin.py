"""The five built-in regimes: default configs validate, scores and classes follow the seeds."""

import math

import pytest

from regimes.base import flatten
from regimes.describe import default_config_yaml, describe_regime
from regimes.registry import get_regime, list_regimes
from regimes.validation import validate_config

NAMES = ["stoichiometry", "rate_constants", "homeostasis", "sparse_connectivity", "low_rank_connectivity"]
CASES = [(name, variant, profile) for name in NAMES for variant in get_regime(name).variants
         for profile in ("quick", "full")]


@pytest.mark.parametrize("name,variant,profile", CASES)
def test_default_config_passes_own_validation(name, variant, profile):
    regime = get_regime(name)
    try:
        cfg = regime.default_config(variant, profile)
    except FileNotFoundError as e:
        pytest.skip(f"science config not written yet: {e}")
    slot = 0 if regime.slot_fixed else None
    assert validate_config(regime, cfg, slot=slot) == []
    flat = flatten(cfg)
    # every mutable training key is present in the default (so set_config never adds a key)
    missing = [p.key for p in regime.mutable if p.key not in flat]
    assert missing == []
    # the Config: line of analysis.md shows every key the seed shows
    line = regime.format_config_line(cfg)
    assert len(line.split(", ")) == len(regime.log_config)


def test_unknown_variant_and_profile_are_one_line_errors():
    r = get_regime("sparse_connectivity")
    with pytest.raises(ValueError, match="unknown variant 'n300'; valid: n100, n200"):
        r.default_config("n300", "quick")
    with pytest.raises(ValueError, match="unknown profile 'huge'"):
        r.default_config("n100", "huge")


def test_declared_contract_per_regime():
    stoich, rate, homeo, sparse, low = (get_regime(n) for n in NAMES)
    assert stoich.variants == ["tied", "untied"] and stoich.default_variant == "tied"
    assert sparse.variants == ["n100", "n200"] and sparse.default_variant == "n100"
    assert homeo.slot_fixed == {"training.homeostasis_time_step": [4, 16, 32, 64]}
    assert [homeo.slot_value("training.homeostasis_time_step", s) for s in range(5)] == [4, 16, 32, 64, 4]
    for key in ("training.freeze_stoichiometry", "training.learning_rate_S_start", "training.coeff_S_L1",
                "training.coeff_S_integer", "training.coeff_mass_conservation", "graph_model.hidden_dim"):
        assert rate.is_frozen(key), key
    # the seed documents: only simulation.seed may change (a new system), except in homeostasis,
    # whose phase-1 checkpoint fixes the system
    for r in (stoich, rate, sparse, low):
        assert r.system_mutable() and r.param("simulation.seed").type == "int", r.name
        sim_keys = [k for k in flatten(r.default_config()) if k.startswith("simulation.")]
        assert len(sim_keys) > 3 and all(r.is_frozen(k) for k in sim_keys if k != "simulation.seed"), r.name
    assert not homeo.system_mutable() and homeo.is_frozen("simulation.seed")
    assert sparse.log_config["seed"] == "simulation.seed" and sparse.log_config["train_seed"] == "training.seed"
    assert stoich.log_config["seed"] == "simulation.seed" and rate.log_config["seed"] == "training.seed"
    for key in ("training.learning_rate_k", "training.skip_phase1", "training.homeostasis_training",
                "training.freeze_stoichiometry", "training.phase1_checkpoint"):
        assert homeo.is_frozen(key), key
    assert homeo.code_edit_when == "block_end"
    assert [(e.path, e.regions) for e in homeo.editable] == [("regimes/metabolism/train.py", ["phase2_loop"])]
    assert stoich.editable[0].functions == ["train_phase1"] and sparse.editable[0].functions == ["train_model"]
    assert rate.log_config["lr_k"] == "training.learning_rate_k"
    assert sparse.param("training.batch_size").choices == [8, 16, 32]
    assert stoich.param("training.batch_size").choices == [4, 8, 16, 32]
    assert sparse.param("training.coeff_W_L1").log and rate.param("training.learning_rate_k").log
    assert sparse.param("training.seed") is not None and homeo.param("training.seed") is None
    assert "L1-calibration" in sparse.strategies and "L1-calibration" not in low.strategies
    for r in (stoich, rate, homeo):
        assert {"truth", "metabolite_type", "types"} <= set(r.truth_identifiers)
    assert "given_S" in stoich.truth_identifiers and "given_S" not in rate.truth_identifiers


def _homeo(r0, r1, fn_r2=1.0, acc=1.0, chance=0.5, frozen=0.0) -> dict:
    return {"MLP_node_slope_ratio_0": r0, "MLP_node_slope_ratio_1": r1, "avg_slope_ratio": (r0 + r1) / 2,
            "MLP_node_function_R2": fn_r2, "embedding_cluster_acc": acc, "embedding_cluster_acc_chance": chance,
            "frozen_params_changed": frozen}


def test_homeostasis_score_ordering():
    h = get_regime("homeostasis")

    def s(r0, r1, **kw):
        return h.score(_homeo(r0, r1, **kw))

    assert s(1, 1) == pytest.approx(1.0)
    assert s(0.7, 0.7) == pytest.approx(s(1.3, 1.3)) == pytest.approx(0.7)
    assert s(1, 1) > s(0.7, 0.7) > s(0.0, 0.0) == 0.0
    assert s(1.3, 1.3) > s(5.0, 5.0) == 0.0
    assert s(float("nan"), 1.0) == pytest.approx(0.5)
    # every factor can zero the reward: a flat/spiky curve, embeddings at chance, a changed frozen parameter
    assert s(1, 1, fn_r2=-3.0) == 0.0 and s(1, 1, fn_r2=0.5) == pytest.approx(0.5)
    assert s(1, 1, acc=0.5) == 0.0 and s(1, 1, acc=0.75) == pytest.approx(0.5)
    assert s(1, 1, frozen=1.0) == 0.0
    assert s(0.2, 1.8) == pytest.approx(0.2)  # the average 1.0 earns nothing extra
    assert h.score({"avg_slope_ratio": 0.9}) == 0.0  # no per-type ratios, no components: nothing to reward
    assert h.score({}) == 0.0


def test_homeostasis_classification_and_degeneracy():
    h = get_regime("homeostasis")
    got = [h.classify(_homeo(v, v)) for v in (1.0, 0.8, 1.2, 0.5, 2.0, 3.0, 0.1, 3.5, float("nan"))]
    assert got == ["converged", "converged", "converged", "partial", "partial", "partial", "failed", "failed", "failed"]
    assert h.classify(_homeo(0.2, 1.8)) == "failed"  # average 1.0, but type 0 is at 0.2
    assert h.classify(_homeo(0.75, 1.1)) == "partial"  # every type must be within 0.8-1.2
    assert h.classify(_homeo(1.0, 1.0, frozen=1.0)) == "failed"
    assert h.classify({"avg_slope_ratio": 1.0}) == "failed" and h.classify({}) == "failed"
    assert h.degeneracy({"avg_slope_ratio": 1.0, "test_pearson": 0.99}).diagnosis == "n/a"


def test_stoichiometry_scores_the_skill_not_the_fit_r2():
    st = get_regime("stoichiometry")
    signs_only = {"stoichiometry_R2": 0.896, "stoichiometry_R2_sign_baseline": 0.896, "stoichiometry_skill": 0.0}
    assert st.primary_metric == "stoichiometry_skill"
    assert st.score(signs_only) == 0.0 and st.classify(signs_only) == "failed"
    assert st.score({"stoichiometry_skill": -2.0}) == 0.0
    assert st.classify({"stoichiometry_skill": 0.85}) == "converged" and st.score({"stoichiometry_skill": 0.85}) == 0.85


@pytest.mark.parametrize("name", ["stoichiometry", "rate_constants", "sparse_connectivity", "low_rank_connectivity"])
def test_primary_metric_classification(name):
    r = get_regime(name)
    p = r.primary_metric
    assert [r.classify({p: v}) for v in (0.95, 0.5, 0.05)] == ["converged", "partial", "failed"]
    assert r.degeneracy({p: 0.4, "test_pearson": 0.99}).diagnosis == "degenerate"
    assert r.degeneracy({p: 0.95, "test_pearson": 0.99}).diagnosis == "healthy"


def test_seed_log_lines():
    h = get_regime("homeostasis")
    metrics = {"avg_slope_ratio": 0.91234, "MLP_node_slope_ratio_0": 0.8, "MLP_node_offset_ratio_0": 1.1,
               "MLP_node_slope_ratio_1": 1.02, "MLP_node_offset_ratio_1": 0.97, "MLP_node_function_R2": 0.9,
               "embedding_cluster_acc": 1.0, "embedding_cluster_acc_chance": 0.52, "embedding_n_clusters": 2,
               "frozen_params_changed": 0.0, "rate_constants_R2": 0.87}
    assert h.format_metrics_line(metrics) == (
        "avg_slope_ratio=0.9123, slope_ratio_0=0.8000, offset_ratio_0=1.1000, slope_ratio_1=1.0200, "
        "offset_ratio_1=0.9700, node_fn_R2=0.9000, embedding_cluster_acc=1.0000, emb_chance=0.5200, "
        "embedding_n_clusters=2, frozen_changed=0, rate_constants_R2=0.8700")
    r = get_regime("rate_constants")
    cfg = {"training": {"seed": 42, "learning_rate_k": 5e-3, "learning_rate_node": 1e-3}}
    assert r.format_config_line(cfg) == "seed=42, lr_k=5E-3, lr_node=1E-3"
    s = get_regime("sparse_connectivity")
    assert s.format_metrics_line({"kinograph_R2": 0.5, "connectivity_R2": 0.49}) == "connectivity_R2=0.4900, kino_R2=0.5000"


def test_describe_and_config_yaml():
    text = describe_regime("homeostasis")
    assert "# homeostasis" in text and "training.homeostasis_time_step" in text
    assert "learning_rate_node_homeostasis | float | [0.0001, 0.1] log" in text
    assert "phase2_loop" in text and "only at a block end" in text
    assert "max(0, 1 - |slope_ratio_t - 1|)" in text
    for r in list_regimes():
        assert f"# {r.name}" in describe_regime(r)
        assert r.instructions.is_file() and r.instructions_text().startswith("# Regime")
    try:
        y = default_config_yaml("rate_constants", None, "full")
    except FileNotFoundError:
        pytest.skip("rate_constants_full.yaml not written yet")
    import yaml
    assert y.startswith("# regime rate_constants, variant default, profile full\n")
    assert yaml.safe_load(y) == get_regime("rate_constants").default_config(None, "full")


def _homeo_cfg():
    h = get_regime("homeostasis")
    try:
        return h, h.default_config(None, "full")
    except FileNotFoundError:
        pytest.skip("homeostasis_full.yaml not written yet")


def test_homeostasis_prepare_trains_phase1_with_rate_constants_config(tmp_path, monkeypatch):
    import regimes.metabolism.phase1 as phase1

    h, cfg = _homeo_cfg()
    (tmp_path / "run.yaml").write_text("regime: homeostasis\nprofile: full\n")
    calls = []

    def fake_ensure(sim_cfg, phase1_cfg, device, cache_root, log, work_dir=None):
        calls.append((sim_cfg, phase1_cfg, device))
        assert work_dir == tmp_path / "prepare" / "phase1"  # inside the run: the live view shows its progress
        return tmp_path / "phase1" / "model.pt", {"rate_constants_R2": 0.8712, "rate_constants_R2_identifiable": 0.95,
                                                  "test_R2": -0.4, "test_R2_short": 0.9}

    monkeypatch.setattr(phase1, "ensure_phase1_checkpoint", fake_ensure)
    logged = []
    override = h.prepare(tmp_path, cfg, "cpu", logged.append)
    assert override == {"training.phase1_checkpoint": str(tmp_path / "phase1" / "model.pt")}
    sim_cfg, p1, device = calls[0]
    # at the full profile too, phase 1 is the quick rate_constants recipe (regimes/metabolism/phase1.py
    # phase1_profile: the full one's MLP_node drifts and k bends with it), without its k prior and 3x longer
    # (phase1.HOMEOSTASIS_PHASE1: the prior decides the k / MLP_node split)
    rc = get_regime("rate_constants").default_config(None, "quick")
    assert sim_cfg == cfg["simulation"] and device == "cpu"
    assert rc["training"]["coeff_k_prior"] > 0  # the regime whose recipe it is keeps its prior
    assert p1["training"] == {**rc["training"], "freeze_stoichiometry": True, "coeff_k_prior": 0.0,
                              "data_augmentation_loop": 3 * rc["training"]["data_augmentation_loop"]}
    assert p1["graph_model"] == rc["graph_model"]
    assert any("rate_constants_R2=0.8712" in line and "test_R2_short=0.9000" in line for line in logged)
    # the run header shows the phase-1 figures
    from agent.fmt import phase1_note
    assert "rate_constants_R2_identifiable=0.950" in phase1_note(tmp_path) and "test_R2_short=0.900" in phase1_note(tmp_path)


@pytest.mark.parametrize("metrics,why", [
    ({"rate_constants_R2": 0.3, "rate_constants_R2_identifiable": 0.31, "test_R2_short": 0.9},
     "rate_constants_R2_identifiable 0.3100 < 0.5"),
    ({"rate_constants_R2": 0.9, "test_R2": -1.2, "test_R2_short": 0.2}, "test_R2_short 0.2000 < 0.5"),
    ({"rate_constants_R2": float("nan"), "test_R2_short": float("nan")}, "rate_constants_R2 n/a < 0.5 and test_R2_short n/a"),
    ({"rate_constants_R2": 0.9}, "test_R2 n/a < 0.5"),  # a figure that is missing counts as failed
], ids=["k", "dynamics", "nan", "missing"])
def test_homeostasis_prepare_refuses_a_poor_phase1(tmp_path, monkeypatch, metrics, why):
    import regimes.metabolism.phase1 as phase1
    from regimes.homeostasis import Phase1Refused

    h, cfg = _homeo_cfg()
    (tmp_path / "run.yaml").write_text("regime: homeostasis\nprofile: full\n")
    monkeypatch.setattr(phase1, "ensure_phase1_checkpoint", lambda *a, **k: (tmp_path / "model.pt", metrics))
    with pytest.raises(Phase1Refused) as e:
        h.prepare(tmp_path, cfg, "cpu", lambda *a: None)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and why in msg and "--phase1-checkpoint" in msg, msg
    assert (tmp_path / "prepare" / "phase1.json").is_file()  # the figures are shown even when refused


def test_phase1_refusal_thresholds():
    from regimes.homeostasis import phase1_figures, phase1_refusal

    ok = phase1_figures({"rate_constants_R2": 0.2, "rate_constants_R2_identifiable": 0.5, "test_R2": -3.0,
                         "test_R2_short": 0.5, "final_loss": 1.0})
    assert set(ok) == {"rate_constants_R2", "rate_constants_R2_identifiable", "test_R2", "test_R2_short"}
    assert phase1_refusal(ok) is None  # 0.5 passes; the unidentifiable pairs and the chaotic 2000-frame test do not count
    assert phase1_refusal({**ok, "rate_constants_R2_identifiable": 0.4999}) is not None


def test_homeostasis_prepare_uses_user_checkpoint(tmp_path, monkeypatch):
    import regimes.metabolism.phase1 as phase1

    h, cfg = _homeo_cfg()
    monkeypatch.setattr(phase1, "ensure_phase1_checkpoint", lambda *a, **k: pytest.fail("must not train"))
    scored = []

    def fake_evaluate(path, sim_cfg, root=None):
        scored.append((path, sim_cfg))
        return {"rate_constants_R2": 0.7, "rate_constants_R2_identifiable": 0.96, "test_R2_short": 0.93}

    monkeypatch.setattr(phase1, "evaluate_phase1_checkpoint", fake_evaluate)
    monkeypatch.setattr(phase1, "checkpoint_sub_form", lambda path: cfg["graph_model"]["mlp_sub_form"])
    ck = tmp_path / "mine.pt"
    ck.write_bytes(b"x")
    cfg["training"]["phase1_checkpoint"] = str(ck)
    logged = []
    assert h.prepare(tmp_path, cfg, "cpu", logged.append) == {"training.phase1_checkpoint": str(ck.resolve())}
    # a checkpoint with another MLP_sub form (e.g. the seed's softplus): phase 2 takes the checkpoint's
    monkeypatch.setattr(phase1, "checkpoint_sub_form", lambda path: "softplus")
    assert h.prepare(tmp_path, cfg, "cpu", logged.append) == {"training.phase1_checkpoint": str(ck.resolve()),
                                                              "graph_model.mlp_sub_form": "softplus"}
    assert "given by the user" in logged[0]
    # scored by trusted code on the run's simulation, figures shown in the header like the regime's own
    assert scored[0] == (ck.resolve(), cfg["simulation"])
    from agent.fmt import phase1_note
    assert "rate_constants_R2_identifiable=0.960" in phase1_note(tmp_path)
    cfg["training"]["phase1_checkpoint"] = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="training.phase1_checkpoint: .*missing.pt does not exist"):
        h.prepare(tmp_path, cfg, "cpu", logged.append)


def test_homeostasis_prepare_refuses_a_poor_user_checkpoint(tmp_path, monkeypatch):
    """The user's --phase1-checkpoint goes through the same refusal as the regime's own phase 1."""
    import regimes.metabolism.phase1 as phase1
    from regimes.homeostasis import Phase1Refused

    h, cfg = _homeo_cfg()
    monkeypatch.setattr(phase1, "evaluate_phase1_checkpoint",
                        lambda *a, **k: {"rate_constants_R2": 0.9, "rate_constants_R2_identifiable": 0.9,
                                         "test_R2_short": 0.3})
    monkeypatch.setattr(phase1, "checkpoint_sub_form", lambda path: "c_softplus")
    ck = tmp_path / "mine.pt"
    ck.write_bytes(b"x")
    cfg["training"]["phase1_checkpoint"] = str(ck)
    with pytest.raises(Phase1Refused) as e:
        h.prepare(tmp_path, cfg, "cpu", lambda *a: None)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and "test_R2_short 0.3000 < 0.5" in msg and "--phase1-checkpoint" in msg
    assert (tmp_path / "prepare" / "phase1.json").is_file()


def test_rate_constants_degeneracy_reads_the_short_rollout():
    """Seed 001's degeneracy table, on test_pearson_short: over 2000 chaotic frames test_pearson decorrelates
    even for a near-exact law, so good dynamics from wrong k would read "failed" instead of "degenerate"."""
    rc = get_regime("rate_constants")
    m = {"rate_constants_R2": 0.95, "test_pearson": 0.2, "test_pearson_short": 0.99}
    d = rc.degeneracy(m)
    assert d.diagnosis == "healthy" and d.gap == pytest.approx(0.04)
    assert rc.degeneracy({"rate_constants_R2": 0.4, "test_pearson": 0.1, "test_pearson_short": 0.98}).diagnosis \
        == "degenerate"
    # without the short figure (an older run), the seed's full-length figure: the same model reads "failed"
    assert rc.degeneracy({"rate_constants_R2": 0.4, "test_pearson": 0.1}).diagnosis == "failed"
