"""make_policy(name, ...): the policies by name.

Factories take keyword arguments (run_dir, regime, model, seed, max_cost_usd,
script, ...) and ignore the ones they do not need. Other modules register
theirs with `register_policy`; "claude" is imported lazily from
agent.policies.claude so the SDK is loaded only when used.
"""

from __future__ import annotations

import importlib
import os
from typing import Callable

from agent.policies.base import Policy

_FACTORIES: dict[str, Callable[..., Policy]] = {}
#: modules that register a policy when imported
_LAZY = {"claude": "agent.policies.claude", "optuna": "agent.policies.baselines", "cmaes": "agent.policies.baselines", "random": "agent.policies.baselines"}


def register_policy(name: str, factory: Callable[..., Policy]) -> None:
    """Register `factory(**kwargs) -> Policy` under `name`."""
    _FACTORIES[name] = factory


def resolve_policy_name(name: str) -> str:
    """'auto' -> 'claude' when ANTHROPIC_API_KEY is set, else 'heuristic'."""
    if name == "auto":
        return "claude" if os.environ.get("ANTHROPIC_API_KEY") else "heuristic"
    return name


def make_policy(name: str, **kwargs) -> Policy:
    """The policy called `name` (after resolving 'auto')."""
    name = resolve_policy_name(name)
    if name not in _FACTORIES and name in _LAZY:
        try:
            importlib.import_module(_LAZY[name])
        except ModuleNotFoundError as e:
            if e.name != _LAZY[name]:
                raise
    if name not in _FACTORIES:
        raise ValueError(f"unknown policy {name!r}; available: {', '.join(available_policies())}")
    return _FACTORIES[name](**kwargs)


def available_policies() -> list[str]:
    return sorted(set(_FACTORIES) | set(_LAZY))


def _heuristic(**kw) -> Policy:
    from agent.policies.heuristic import HeuristicPolicy
    return HeuristicPolicy(seed=kw.get("seed", 0))


def _scripted(**kw) -> Policy:
    from agent.policies.scripted import ScriptedPolicy
    script = kw.get("script")
    if script is None:
        raise ValueError("policy scripted needs a script (RunOptions.script)")
    return ScriptedPolicy.from_file(script)


register_policy("heuristic", _heuristic)
register_policy("scripted", _scripted)
