"""benchmarks/seed_robustness.py: a candidate recipe replays on chosen systems (--set, --seed-list)
and the summary keeps recipes apart (issue 15: does a block's best recipe lift the worst seed)."""

import json

import pytest

from tests._bench import load_benchmark


def _mod():
    return load_benchmark("seed_robustness")


BASE = {"simulation": {"seed": 42}, "training": {"learning_rate_W_start": 3e-3, "coeff_W_L1": 1e-5}}


def test_overrides_are_parsed_as_numbers_and_applied_to_a_copy():
    m = _mod()
    ov = m.parse_overrides(["training.learning_rate_W_start=0.016", "training.coeff_W_L1=1e-6"], BASE)
    assert ov == {"training.learning_rate_W_start": 0.016, "training.coeff_W_L1": 1e-6}  # '1e-6' is YAML 1.1 text
    cfg = m.apply_overrides(BASE, ov)
    assert cfg["training"] == {"learning_rate_W_start": 0.016, "coeff_W_L1": 1e-6}
    assert BASE["training"]["coeff_W_L1"] == 1e-5  # the default stays the default
    assert m.recipe_label(ov) == "coeff_W_L1=1e-06,learning_rate_W_start=0.016"
    assert m.recipe_label({}) == "default"


@pytest.mark.parametrize("item", ["training.no_such_key=1", "training", "=3"])
def test_a_bad_override_is_one_clear_error(item):
    with pytest.raises(SystemExit) as e:
        _mod().parse_overrides([item], BASE)
    assert "--set" in str(e.value)


def test_summary_keeps_recipes_apart(tmp_path):
    rec = {"regime": "low_rank_connectivity", "variant": "n100", "profile": "quick", "status": "ok",
           "classification": "failed", "identifiability": {"n_saturated_neurons": 20}, "timings": {"stage_s": 1.0}}
    rows = [dict(rec, seed=44, score=0.01), dict(rec, seed=43, score=0.0),  # older records carry no recipe: default
            dict(rec, seed=44, score=0.5, recipe="learning_rate_W_start=0.016")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = _mod().summary(tmp_path)
    assert "[default]: 2 seeds (44, 43); score median 0.0050, worst 0.0000" in text
    assert "[learning_rate_W_start=0.016]: 1 seeds (44); score median 0.5000" in text
