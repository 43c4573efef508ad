"""The declarative parts of the regime contract (regimes/base.py)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from regimes.base import MetricSpec, ParamSpec, Regime, flatten, get_dotted, set_dotted


def _toy(**kw) -> Regime:
    args = dict(
        name="toy", title="Toy", description="d", package="regimes.toy", package_dir=Path("."),
        train_entry="regimes.toy.train",
        mutable=[ParamSpec(key="training.lr", type="float", low=1e-4, high=1e-2, log=True),
                 ParamSpec(key="training.batch_size", type="choice", choices=[4, 8, 16])],
        frozen=["simulation.*", "training.freeze"],
        slot_fixed={"training.time_step": [4, 16, 32, 64]},
        metrics=[MetricSpec(name="r2"), MetricSpec(name="test_pearson")], primary_metric="r2",
        instructions=Path("x.md"),
    )
    args.update(kw)
    return Regime(**args)


def test_param_spec_checks_type_and_range():
    p = ParamSpec(key="training.lr", type="float", low=1e-4, high=1e-2, log=True)
    assert p.check(1e-3) is None
    assert "out of range" in p.check(1.0)
    assert "expected a float" in p.check("fast")
    assert "expected a float" in p.check(True)
    assert "not finite" in ParamSpec(key="t.x", type="float", low=-1e9, high=1e9).check(float("nan"))
    i = ParamSpec(key="training.n", type="int", low=1, high=10)
    assert "expected an int" in i.check(2.5)
    with pytest.raises(ValidationError, match="dotted"):
        ParamSpec(key="lr", type="float", low=0, high=1)
    with pytest.raises(ValidationError, match="log scale"):
        ParamSpec(key="t.lr", type="float", low=0, high=1, log=True)


def test_frozen_slot_fixed_and_code_rules():
    r = _toy()
    assert r.is_frozen("simulation.seed") and r.is_frozen("training.freeze")
    assert not r.is_frozen("training.lr")
    assert [r.slot_value("training.time_step", s) for s in range(6)] == [4, 16, 32, 64, 4, 16]
    cfg = r.slot_config({"training": {"time_step": 1}}, 2)
    assert cfg["training"]["time_step"] == 32
    r2 = _toy(editable=[{"path": "regimes/toy/train.py", "functions": ["train"]}])
    assert "first 4 iterations" in r2.code_edits_allowed(iter_in_block=1, at_block_end=False)
    assert r2.code_edits_allowed(iter_in_block=5, at_block_end=False) is None
    assert "--no-code" in r2.code_edits_allowed(5, False, code_enabled=False)
    r3 = _toy(editable=[{"path": "a.py"}], code_edit_when="block_end")
    assert "block end" in r3.code_edits_allowed(9, False)
    assert r3.code_edits_allowed(9, True) is None


def test_malformed_regime_names_the_field():
    with pytest.raises(ValidationError, match="primary_metric"):
        _toy(primary_metric="nosuch")
    with pytest.raises(ValidationError, match="slot-fixed key"):
        _toy(slot_fixed={"training.lr": [1]})
    with pytest.raises(ValidationError, match="must be relative"):
        _toy(editable=[{"path": "../evil.py"}])


def test_default_score_classify_degeneracy():
    r = _toy()
    assert r.score({"r2": 0.95}) == 0.95 and r.score({"r2": float("nan")}) == 0.0 and r.score({}) == 0.0
    assert [r.classify({"r2": v}) for v in (0.95, 0.5, 0.05)] == ["converged", "partial", "failed"]
    assert r.degeneracy({"r2": 0.4, "test_pearson": 0.99}).diagnosis == "degenerate"
    assert r.degeneracy({"r2": 0.1, "test_pearson": 0.99}).diagnosis == "severely degenerate"
    assert r.degeneracy({"r2": 0.2, "test_pearson": 0.3}).diagnosis == "failed"
    assert r.degeneracy({"r2": 0.95}).diagnosis == "n/a"


def test_dotted_helpers():
    cfg = {"training": {"lr": 1, "opt": {"beta": 2}}}
    assert get_dotted(cfg, "training.opt.beta") == 2 and get_dotted(cfg, "training.x", 7) == 7
    set_dotted(cfg, "claude.ucb_c", 1.5)
    assert flatten(cfg) == {"training.lr": 1, "training.opt.beta": 2, "claude.ucb_c": 1.5}
