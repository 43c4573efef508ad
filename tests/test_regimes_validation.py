"""Config validation against a regime's declarations: every kind of violation."""

import copy
from pathlib import Path

import pytest

from regimes.base import MetricSpec, ParamSpec, Regime
from regimes.validation import Violation, known_keys, validate_config, validate_config_change


class ToyRegime(Regime):
    def default_config(self, variant=None, profile="quick"):
        return copy.deepcopy(BASE)


BASE = {
    "simulation": {"n": 10, "seed": 1},
    "graph_model": {"hidden": 8},
    "training": {"learning_rate_k": 1e-3, "batch_size": 8, "n_epochs": 2, "data_augmentation_loop": 100,
                 "flag": False, "freeze_stoichiometry": True, "homeostasis_time_step": 4},
    "claude": {"n_epochs": 5, "data_augmentation_loop": 500, "n_iter_block": 12, "ucb_c": 1.414},
}


@pytest.fixture
def toy():
    return ToyRegime(
        name="toy", title="t", description="d", package="toy", package_dir=Path("."), train_entry="toy.train",
        mutable=[ParamSpec(key="training.learning_rate_k", type="float", low=1e-4, high=1e-2, log=True),
                 ParamSpec(key="training.batch_size", type="choice", choices=[4, 8, 16, 32]),
                 ParamSpec(key="training.n_epochs", type="int", low=1, high=10),
                 ParamSpec(key="training.data_augmentation_loop", type="int", low=10, high=2000),
                 ParamSpec(key="training.flag", type="bool")],
        frozen=["simulation.*", "graph_model.*", "training.*", "training.freeze_stoichiometry"],
        slot_fixed={"training.homeostasis_time_step": [4, 16, 32, 64]},
        metrics=[MetricSpec(name="r2")], primary_metric="r2", instructions=Path("x.md"))


def change(**dotted):
    new = copy.deepcopy(BASE)
    for key, value in dotted.items():
        section, name = key.split("__")
        if value is DELETE:
            del new[section][name]
        else:
            new[section][name] = value
    return new


DELETE = object()


def kinds(vs):
    return {(v.key, v.kind) for v in vs}


def test_valid_change_passes(toy):
    assert validate_config_change(toy, BASE, change(training__learning_rate_k=5e-3)) == []
    assert validate_config_change(toy, BASE, change(training__batch_size=16, claude__ucb_c=2.0)) == []
    assert validate_config(toy, BASE) == []
    assert validate_config(toy, BASE, slot=0) == []


def test_out_of_range_message(toy):
    vs = validate_config_change(toy, BASE, change(training__learning_rate_k=0.5))
    assert [str(v) for v in vs] == ["training.learning_rate_k: 0.5 is out of range [0.0001, 0.01]"]
    assert vs[0].kind == "range" and isinstance(vs[0], Violation)


def test_every_violation_reported_with_key_and_reason(toy):
    new = change(training__learning_rate_kk=1e-3,          # unknown (typo)
                 training__batch_size=12,                  # not a choice
                 training__flag=1,                         # wrong type (int for a bool)
                 training__n_epochs="many",                # wrong type
                 simulation__seed=2,                       # frozen (section wildcard)
                 training__freeze_stoichiometry=False,     # frozen (named)
                 training__homeostasis_time_step=16,       # slot-fixed
                 claude__temperature=0.5,                  # not allowed in claude:
                 claude__n_epochs=50)                      # budget cap set by the run
    vs = validate_config_change(toy, BASE, new)
    got = kinds(vs)
    assert ("training.learning_rate_kk", "unknown") in got
    assert ("training.batch_size", "range") in got
    assert ("training.flag", "type") in got
    assert ("training.n_epochs", "type") in got
    assert ("simulation.seed", "frozen") in got
    assert ("training.freeze_stoichiometry", "frozen") in got
    assert ("training.homeostasis_time_step", "slot_fixed") in got
    assert ("claude.temperature", "claude") in got
    assert ("claude.n_epochs", "frozen") in got
    text = {v.key: str(v) for v in vs}
    assert "did you mean training.learning_rate_k" in text["training.learning_rate_kk"]
    assert "not allowed in claude:" in text["claude.temperature"]
    assert "frozen" in text["simulation.seed"] and "1 -> 2" in text["simulation.seed"]


def test_budget_cap_and_ucb_range(toy):
    vs = validate_config_change(toy, BASE, change(training__n_epochs=8))
    assert [str(v) for v in vs] == ["training.n_epochs: 8 is above the run's budget cap claude.n_epochs=5"]
    vs = validate_config_change(toy, BASE, change(training__data_augmentation_loop=1000))
    assert kinds(vs) == {("training.data_augmentation_loop", "budget")}
    vs = validate_config_change(toy, BASE, change(claude__ucb_c=5.0))
    assert kinds(vs) == {("claude.ucb_c", "range")}


def test_slot_value_checked_when_slot_given(toy):
    assert validate_config_change(toy, BASE, change(training__learning_rate_k=2e-3), slot=0) == []
    vs = validate_config_change(toy, BASE, change(training__learning_rate_k=2e-3), slot=2)
    assert [str(v) for v in vs] == ["training.homeostasis_time_step: slot-fixed: slot 2 runs with 32, got 4"]
    pinned = toy.slot_config(BASE, 2)
    assert validate_config_change(toy, pinned, copy.deepcopy(pinned), slot=2) == []
    assert validate_config(toy, pinned, slot=2) == []
    assert kinds(validate_config(toy, BASE, slot=3)) == {("training.homeostasis_time_step", "slot_fixed")}


def test_removed_key_and_unknown_section(toy):
    vs = validate_config_change(toy, BASE, change(training__batch_size=DELETE))
    assert kinds(vs) == {("training.batch_size", "removed")}
    new = copy.deepcopy(BASE)
    new["optimizer"] = {"name": "sgd"}
    assert kinds(validate_config_change(toy, BASE, new)) == {("optimizer.name", "section")}


def test_whole_config_checks(toy):
    bad = copy.deepcopy(BASE)
    bad["training"]["learning_rate_k"] = 1.0
    bad["training"]["mystery"] = 3
    bad["claude"]["extra"] = 1
    del bad["graph_model"]
    got = kinds(validate_config(toy, bad))
    assert got == {("training.learning_rate_k", "range"), ("training.mystery", "unknown"),
                   ("claude.extra", "claude"), ("graph_model", "section")}
    # frozen keys are not re-checked for range in a whole config, only known
    assert "simulation.n" in known_keys(toy)
