"""The ToolBox a policy receives at one graph step (docs/contracts.md §5).

It holds the tools allowed at that step, exposes their JSON schemas (what
Claude sees), validates and dispatches calls, logs every call and its result
to reasoning.log, counts rejected calls (run_dir/rejected.jsonl) and says
when the step's required calls were made (`done()`).

A tool is a pydantic input model plus a function `fn(env, args) -> content`
that raises `ToolRejected("one line")` on bad input *before* writing
anything. Tool modules register themselves in `REGISTRY` (tools/__init__ of
each family imports `register`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from tools.env import ToolEnv


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
    fn: Callable[["ToolEnv", Any], "str | list"]

    def schema(self) -> dict:
        s = self.input_model.model_json_schema()
        s.pop("title", None)
        return {"name": self.name, "description": self.description, "input_schema": s}


REGISTRY: dict[str, ToolDef] = {}


def register(name: str, description: str, input_model: type[BaseModel]):
    """Decorator: register `fn(env, args)` as tool `name`."""

    def deco(fn):
        REGISTRY[name] = ToolDef(name, description, input_model, fn)
        return fn

    return deco


#: the tools allowed at each graph step (DESIGN.md §2 table)
STEP_TOOLS: dict[str, tuple[str, ...]] = {
    "prepare": ("set_config", "show_code", "read_file", "finish_mutation"),
    "analyse": ("view_plot", "read_file", "show_code", "submit_analysis"),
    "log": ("update_memory", "read_file"),
    "select_parent": ("choose_parent", "read_file", "view_plot"),
    "block_end": ("edit_instructions", "update_memory", "read_file", "show_code", "view_plot"),
    "mutate": ("set_config", "edit_code", "revert_code", "show_code", "read_file", "view_plot",
               "finish_mutation"),
}

#: the call each slot of the step must receive before the step is done
STEP_REQUIRED: dict[str, str | None] = {
    "prepare": "finish_mutation",
    "analyse": "submit_analysis",
    "log": None,
    "select_parent": "choose_parent",
    "block_end": None,
    "mutate": "finish_mutation",
}


def _load_tools() -> None:
    # importing the families fills REGISTRY
    from tools import code, config, files, memory, mutation  # noqa: F401


class ToolBox:
    """The tools of one step, bound to the run's `ToolEnv`.

    `slots` are the slots this step concerns (`done()` needs the step's
    required call for each of them)."""

    def __init__(self, env: "ToolEnv", step: str, slots: list[int], names: tuple[str, ...] | None = None):
        _load_tools()
        if step not in STEP_TOOLS:
            raise ValueError(f"unknown graph step {step!r}; expected one of {sorted(STEP_TOOLS)}")
        self.env = env
        self.step = step
        self.slots = list(slots)
        self.names = tuple(names if names is not None else STEP_TOOLS[step])
        self.required = STEP_REQUIRED[step]
        self.satisfied: set[int] = set()
        self.n_calls = 0
        self.n_rejected = 0
        env.step = step
        env.step_slots = list(slots)

    # ----- what the policy sees -----

    def schemas(self) -> list[dict]:
        """name, description, input_schema of every tool allowed at this step."""
        return [REGISTRY[n].schema() for n in self.names]

    def done(self) -> bool:
        """True when the step's required call was made for every slot of the step."""
        return not self.missing()

    def missing(self) -> list[str]:
        """The required calls not yet made, e.g. ['finish_mutation(slot=2)']."""
        if self.required is None:
            return []
        return [f"{self.required}(slot={s})" for s in self.slots if s not in self.satisfied]

    def message(self, text: str) -> None:
        """Record a policy message (reasoning text) in reasoning.log and status."""
        self.env.reasoning(f"[{self.step}] {self.env.policy_name}: {text}")
        self.env.last_message = text

    # ----- calling -----

    def call(self, name: str, args: dict | None) -> ToolResult:
        """Validate and run one tool call; log it; count it if rejected."""
        self.n_calls += 1
        args = dict(args or {})
        try:
            if name not in self.names:
                if name in REGISTRY or name in _all_tool_names():
                    raise ToolRejected(f"tool {name} is not allowed at step {self.step}; "
                                       f"allowed: {', '.join(self.names)}")
                raise ToolRejected(f"unknown tool {name!r}; allowed: {', '.join(self.names)}")
            tool = REGISTRY[name]
            try:
                parsed = tool.input_model.model_validate(args)
            except ValidationError as e:
                raise ToolRejected(f"{name}: {_one_line_validation(e)}") from None
            slot = getattr(parsed, "slot", None)
            if isinstance(slot, int) and slot not in self.slots and name in (
                    "set_config", "edit_code", "revert_code", "finish_mutation", "submit_analysis",
                    "choose_parent"):
                raise ToolRejected(f"{name}: slot {slot} is not part of this step (slots {self.slots})")
            content = tool.fn(self.env, parsed)
        except ToolRejected as e:
            msg = str(e).splitlines()[0] if str(e) else f"{name}: rejected"
            self.n_rejected += 1
            self.env.record_rejection(self.step, name, args, msg)
            self.env.reasoning(f"[{self.step}] CALL {name} {_short_json(args)} -> REJECTED: {msg}")
            return ToolResult(ok=False, content="", error=msg)
        if self.required == name and isinstance(getattr(parsed, "slot", None), int):
            self.satisfied.add(parsed.slot)
        self.env.reasoning(f"[{self.step}] CALL {name} {_short_json(args)} -> ok: {_short_content(content)}")
        return ToolResult(ok=True, content=content, error=None)


def _all_tool_names() -> set[str]:
    return {n for names in STEP_TOOLS.values() for n in names}


def _one_line_validation(e: ValidationError) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "input"
    return f"{loc}: {err.get('msg', 'invalid')}"


def _short_json(obj: Any, limit: int = 400) -> str:
    s = json.dumps(obj, default=str, ensure_ascii=False)
    return s if len(s) <= limit else s[:limit] + "…"


def _short_content(content: Any, limit: int = 300) -> str:
    if isinstance(content, list):
        return f"[{len(content)} content block(s)]"
    s = str(content).replace("\n", " ⏎ ")
    return s if len(s) <= limit else s[:limit] + "…"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
