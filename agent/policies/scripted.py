"""The scripted policy: replays tool calls from a JSON/YAML script (tests).

Script format: a list of steps, consumed in order::

    - step: prepare
      calls:
        - {tool: set_config, args: {slot: 0, changes: {training.learning_rate: 0.01}}}
        - {tool: finish_mutation, args: {slot: 0, mutation: "baseline"}}
    - step: analyse
      calls: [...]

When the next entry is not for the current step, or the script is exhausted,
`act` raises (the loop then falls back to the heuristic policy for that step).
Every result is kept in `results` for assertions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from agent.policies.base import Policy, PolicyError, StepContext


class ScriptCall(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tool: str
    args: dict[str, Any] = Field(default_factory=dict)


class ScriptStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    step: str
    calls: list[ScriptCall] = Field(default_factory=list)
    message: str = ""


class ScriptedPolicy(Policy):
    name = "scripted"

    def __init__(self, steps: list[ScriptStep]):
        self.steps = list(steps)
        self.pos = 0
        self.results: list[tuple[str, dict, Any]] = []

    @classmethod
    def from_file(cls, path: Path | str) -> "ScriptedPolicy":
        p = Path(path)
        if not p.is_file():
            raise ValueError(f"script {p} does not exist")
        data = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
        if not isinstance(data, list):
            raise ValueError(f"script {p}: expected a list of steps")
        return cls([ScriptStep.model_validate(d) for d in data])

    def act(self, ctx: StepContext, tools) -> None:
        if self.pos >= len(self.steps):
            raise PolicyError(f"script exhausted at step {ctx.step}")
        entry = self.steps[self.pos]
        if entry.step != ctx.step:
            raise PolicyError(f"script expects step {entry.step!r} next, the loop is at {ctx.step!r}")
        self.pos += 1
        if entry.message:
            tools.message(entry.message)
        for c in entry.calls:
            res = tools.call(c.tool, c.args)
            self.results.append((c.tool, c.args, res))
