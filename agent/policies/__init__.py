"""Policies: the contract (base), the registry and the built-in policies."""

from agent.policies.base import Policy, PolicyError, StepContext  # noqa: F401
