"""Check configs and config changes against a regime's declarations.

`validate_config_change` is what `set_config` calls before it applies an
edit; `validate_config` checks a whole config (defaults, user files, resumed
runs). Both return EVERY violation, each with its dotted key and a reason,
so the policy can fix all of them in one go.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from regimes.base import CONFIG_SECTIONS, ParamSpec, Regime, flatten

ViolationKind = Literal["unknown", "type", "range", "frozen", "slot_fixed", "claude", "budget", "removed", "section"]

#: types and ranges of the `claude:` keys; only `ucb_c` may be changed by the
#: policy (the seeds' "Claude exploration parameter"); the others are the
#: run's block length and per-training budget caps.
CLAUDE_SPECS: dict[str, ParamSpec] = {
    "ucb_c": ParamSpec(key="claude.ucb_c", type="float", low=0.5, high=3.0,
                       description="UCB exploration constant"),
    "n_iter_block": ParamSpec(key="claude.n_iter_block", type="int", low=1, high=10_000,
                              description="iterations per block"),
    "n_epochs": ParamSpec(key="claude.n_epochs", type="int", low=1, high=100_000,
                          description="budget cap on training.n_epochs"),
    "data_augmentation_loop": ParamSpec(key="claude.data_augmentation_loop", type="int", low=1, high=1_000_000,
                                        description="budget cap on training.data_augmentation_loop"),
}
CLAUDE_POLICY_MUTABLE = ("ucb_c",)
#: training keys capped by the claude: section of the same name
BUDGET_KEYS = ("n_epochs", "data_augmentation_loop")


class Violation(BaseModel):
    """One reason a config (change) is rejected."""

    model_config = ConfigDict(frozen=True)

    key: str
    reason: str
    kind: ViolationKind

    def __str__(self) -> str:
        return f"{self.key}: {self.reason}"


def known_keys(regime: Regime) -> set[str]:
    """Every dotted key a config of this regime may hold: the keys of its
    default configs (all variants and profiles that exist) plus the declared ones."""
    keys: set[str] = {p.key for p in regime.mutable} | set(regime.slot_fixed)
    keys |= {f for f in regime.frozen if not f.endswith(".*")}
    keys |= {f"claude.{k}" for k in regime.claude_keys}
    for variant in regime.variants:
        for profile in ("quick", "full"):
            try:
                cfg = regime.default_config(variant, profile)
            except (FileNotFoundError, NotImplementedError):
                continue  # a profile that does not exist adds no keys
            keys |= set(flatten(cfg))
    return keys


def _same(a: Any, b: Any) -> bool:
    """Equality that tells True from 1 (a bool flag is not an int)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def _fmt(v: Any) -> str:
    return repr(v) if isinstance(v, str) else str(v)


def _suggest(key: str, known: set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def _check_claude(regime: Regime, key: str, value: Any, changed: bool, out: list[Violation]) -> None:
    name = key.split(".", 1)[1]
    if name not in regime.claude_keys:
        out.append(Violation(key=key, kind="claude",
                             reason=f"not allowed in claude: (allowed: {', '.join(regime.claude_keys)})"))
        return
    spec = CLAUDE_SPECS[name]
    if changed and name not in CLAUDE_POLICY_MUTABLE:
        out.append(Violation(key=key, kind="frozen",
                             reason=f"frozen: {spec.description} is set by the run, not by set_config"))
        return
    reason = spec.check(value)
    if reason:
        out.append(Violation(key=key, kind="type" if "expected" in reason else "range", reason=reason))


def _check_budget(flat: dict[str, Any], out: list[Violation]) -> None:
    for name in BUDGET_KEYS:
        cap, val = flat.get(f"claude.{name}"), flat.get(f"training.{name}")
        if (isinstance(cap, (int, float)) and isinstance(val, (int, float))
                and not isinstance(val, bool) and not isinstance(cap, bool) and val > cap):
            out.append(Violation(key=f"training.{name}", kind="budget",
                                 reason=f"{_fmt(val)} is above the run's budget cap claude.{name}={_fmt(cap)}"))


def _check_slot(regime: Regime, flat: dict[str, Any], slot: int | None, out: list[Violation]) -> None:
    if slot is None:
        return
    for key in regime.slot_fixed:
        want = regime.slot_value(key, slot)
        if key in flat and not _same(flat[key], want) and not any(v.key == key for v in out):
            out.append(Violation(key=key, kind="slot_fixed",
                                 reason=f"slot-fixed: slot {slot} runs with {_fmt(want)}, got {_fmt(flat[key])}"))


def _check_value(regime: Regime, key: str, value: Any, out: list[Violation]) -> None:
    spec = regime.param(key)
    if spec is None:
        return
    reason = spec.check(value)
    if reason:
        kind = "type" if reason.startswith("expected") else "range"
        out.append(Violation(key=key, kind=kind, reason=reason))


def validate_config_change(regime: Regime, old: dict, new: dict, slot: int | None = None) -> list[Violation]:
    """Every violation of changing config `old` into `new` (empty list = allowed).

    Reasons: unknown key, wrong type, out of range, frozen (changed), slot-fixed
    (changed, or not the slot's value when `slot` is given), key not allowed in
    `claude:`, removed key, training value above the `claude:` budget cap.
    """
    fo, fn = flatten(old), flatten(new)
    known = known_keys(regime)
    out: list[Violation] = []
    for key in sorted(set(fo) | set(fn)):
        in_old, in_new = key in fo, key in fn
        changed = not (in_old and in_new and _same(fo[key], fn[key]))
        section = key.split(".", 1)[0]
        if section not in CONFIG_SECTIONS or "." not in key:
            if changed:
                out.append(Violation(key=key, kind="section",
                                     reason=f"unknown section {section!r}; a config has {', '.join(CONFIG_SECTIONS)}"))
            continue
        if section == "claude":
            if in_new:
                _check_claude(regime, key, fn[key], changed, out)
            elif changed:
                out.append(Violation(key=key, kind="removed", reason="removed: config keys cannot be deleted"))
            continue
        if not changed:
            continue
        if not in_new:
            out.append(Violation(key=key, kind="removed", reason="removed: config keys cannot be deleted"))
            continue
        if not in_old and key not in known:
            out.append(Violation(key=key, kind="unknown",
                                 reason=f"unknown key for regime {regime.name}{_suggest(key, known)}"))
            continue
        if key in regime.slot_fixed:
            out.append(Violation(key=key, kind="slot_fixed",
                                 reason=f"slot-fixed: pinned per slot to one of {regime.slot_fixed[key]}; it may not change"))
            continue
        if regime.param(key) is None:
            was = _fmt(fo[key]) if in_old else "unset"
            out.append(Violation(key=key, kind="frozen",
                                 reason=f"frozen: may not change ({was} -> {_fmt(fn[key])}); "
                                        f"regime {regime.name} lets the policy change only its mutable keys"))
            continue
        _check_value(regime, key, fn[key], out)
    _check_slot(regime, fn, slot, out)
    _check_budget(fn, out)
    return out


def validate_config(regime: Regime, cfg: dict, slot: int | None = None) -> list[Violation]:
    """Every violation in a whole config: sections, unknown keys, types and
    ranges of mutable keys, `claude:` keys, the slot's pinned values, budget caps."""
    if not isinstance(cfg, dict):
        return [Violation(key="(config)", kind="section", reason=f"a config is a mapping, got {type(cfg).__name__}")]
    out: list[Violation] = []
    for section in CONFIG_SECTIONS:
        if not isinstance(cfg.get(section), dict):
            out.append(Violation(key=section, kind="section", reason="missing section (or not a mapping)"))
    flat = flatten(cfg)
    known = known_keys(regime)
    for key in sorted(flat):
        section = key.split(".", 1)[0]
        if section not in CONFIG_SECTIONS or "." not in key:
            out.append(Violation(key=key, kind="section",
                                 reason=f"unknown section {section!r}; a config has {', '.join(CONFIG_SECTIONS)}"))
            continue
        if section == "claude":
            _check_claude(regime, key, flat[key], False, out)
            continue
        if key not in known:
            out.append(Violation(key=key, kind="unknown",
                                 reason=f"unknown key for regime {regime.name}{_suggest(key, known)}"))
            continue
        _check_value(regime, key, flat[key], out)
    _check_slot(regime, flat, slot, out)
    _check_budget(flat, out)
    return out

