"""The tool contract: what a tool is, and the registry the tool families fill.

A tool is a pydantic input model (its JSON schema is what an LLM sees) plus a
function `fn(env, step, args) -> content` (the run's `ToolEnv`, the node's frozen
`Step`, the validated input) that raises `ToolRejected("one line")` on
bad input *before* writing anything. Each family module (tools/code.py,
config.py, files.py, memory.py, mutation.py) registers its tools here with
`@register`; `tools.toolbox` imports the families and dispatches calls. This
module imports no tool, so there is no import circle.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:  # pragma: no cover
    from tools.env import Step, ToolEnv


class ToolRejected(Exception):
    """A tool call refused with a one-line reason; nothing was written."""


class ToolResult(BaseModel):
    """The answer to one tool call. `content` is text, or a list of content
    blocks (e.g. an image block from view_plot: {"type": "image", "path", "media_type", "data"})."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    content: str | list = ""
    error: str | None = None


@dataclass(frozen=True)
class ToolDef:
    """One tool: name, description (Claude reads it), input model, action."""

    name: str
    description: str
    input_model: type[BaseModel]
    fn: Callable[["ToolEnv", "Step", Any], "str | list"]
    #: the input names one slot, which must be one of the step's slots (checked by the ToolBox)
    slot_scoped: bool = False

    def schema(self, examples: dict[str, str] | None = None) -> dict:
        from tools.limits import schema_with_limits

        s = self.input_model.model_json_schema()
        s.pop("title", None)
        ex = {**DEFAULT_EXAMPLES, **(examples or {})}
        desc = string.Template(self.description).safe_substitute(ex)
        return schema_with_limits(self.name, {"name": self.name, "description": desc, "input_schema": _fill(s, ex)})


def _fill(obj: Any, ex: dict[str, str]) -> Any:
    """$placeholders in the field descriptions of a JSON schema."""
    if isinstance(obj, dict):
        return {k: (string.Template(v).safe_substitute(ex) if k == "description" and isinstance(v, str)
                    else _fill(v, ex)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, ex) for v in obj]
    return obj


REGISTRY: dict[str, ToolDef] = {}


def register(name: str, description: str, input_model: type[BaseModel], slot_scoped: bool = False):
    """Decorator: register `fn(env, step, args)` as tool `name`. `slot_scoped`: its `slot` field must be
    one of the slots the step concerns (a call for another slot is rejected before it acts)."""

    def deco(fn):
        if slot_scoped and "slot" not in input_model.model_fields:
            raise TypeError(f"tool {name}: slot_scoped needs a `slot` field in {input_model.__name__}")
        REGISTRY[name] = ToolDef(name, description, input_model, fn, slot_scoped)
        return fn

    return deco


#: placeholders of the tool descriptions when no regime is known (e.g. a bare ToolDef.schema())
DEFAULT_EXAMPLES: dict[str, str] = {
    "change_key": "training.learning_rate", "change_value": "0.002", "change_json": '{"training.learning_rate": 0.002}',
    "mutation_example": "learning_rate: 1E-3 -> 2E-3", "code_path": "the editable file (see the instructions)",
    "code_mutation_example": "[code] update: a larger step", "log_path": "iterations/iter_001/slot_00/analysis.log",
}
