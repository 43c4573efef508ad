"""Regime.effective_config: spellings of one experiment match, so the heuristic never trains a repeat."""

import copy

from regimes.base import set_dotted
from regimes.registry import get_regime


def _cfg(T: int) -> dict:
    regime = get_regime("homeostasis")
    cfg = regime.default_config()
    set_dotted(cfg, "training.homeostasis_time_step", T)
    return cfg


def test_homeostasis_auto_and_unit_factors_are_resolved_per_rollout_length():
    regime = get_regime("homeostasis")
    long = _cfg(32)
    assert get_dotted_training(long, "homeostasis_loss") == "auto"  # the shipped default
    spelled = copy.deepcopy(long)
    set_dotted(spelled, "training.homeostasis_window_weights", "median_cap")
    set_dotted(spelled, "training.homeostasis_loss", "every_step")
    assert regime.effective_config(spelled) == regime.effective_config(long)  # auto is median_cap/every_step at 32
    other = copy.deepcopy(long)
    set_dotted(other, "training.homeostasis_window_weights", "uniform")
    assert regime.effective_config(other) != regime.effective_config(long)
    short = _cfg(4)
    scaled_off = copy.deepcopy(short)
    set_dotted(scaled_off, "training.homeostasis_embedding_lr_scaling", "constant")
    assert regime.effective_config(scaled_off) == regime.effective_config(short)  # x T/4 is x1 at T = 4
    assert regime.effective_config(_cfg(16)) != regime.effective_config(short)
    assert long == _cfg(32)  # the input is not modified


def test_default_regime_effective_config_is_the_config():
    regime = get_regime("rate_constants")
    cfg = regime.default_config()
    assert regime.effective_config(cfg) is cfg


def test_heuristic_fingerprint_uses_the_effective_config():
    from agent.policies.heuristic import HeuristicPolicy

    regime = get_regime("homeostasis")
    cfg = _cfg(32)
    fp = HeuristicPolicy._fingerprint
    assert fp(regime, cfg) == fp(regime, cfg, "training.homeostasis_window_weights", "median_cap")
    assert fp(regime, cfg) != fp(regime, cfg, "training.homeostasis_window_weights", "uniform")


def get_dotted_training(cfg: dict, key: str):
    return cfg["training"][key]
