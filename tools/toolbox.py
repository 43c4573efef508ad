"""The ToolBox a policy receives at one graph step (docs/contracts.md §5).

It holds the tools allowed at that step, exposes their JSON schemas (what
Claude sees), validates and dispatches calls, logs every call and its result
to reasoning.log, counts rejected calls (run_dir/rejected.jsonl) and says
when the step's required calls were made (`done()`).

`all_schemas()` gives EVERY tool (one fixed array for the whole run, so an
LLM's cached prompt prefix is the same at every step); a call of a tool that
does not act at the step is rejected with one line naming the step's tools.
Tool descriptions may hold `$placeholders` filled with examples drawn from
the running regime (`regime_examples`): a real key, its value, the mutation
line in the one format the loop parses, an editable file.

`defer_log=True` (the loop): the step's reasoning.log lines are kept until
`finish(applied)`, so calls of a step that is rolled back are logged as
"-> rolled back", never as "-> ok".

What a tool is and the registry live in `tools.base` (the tool families import
only that module); this module imports the families and dispatches.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from rundir.io import utc_now
from rundir.records import ConfigChange, Mutation, SlotPlan
from tools.base import DEFAULT_EXAMPLES, REGISTRY, ToolRejected, ToolResult

if TYPE_CHECKING:  # pragma: no cover
    from tools.env import Step, ToolEnv


#: the tools allowed at each graph step (docs/architecture.md, "One batch")
STEP_TOOLS: dict[str, tuple[str, ...]] = {
    "prepare": ("set_config", "show_code", "read_file", "finish_mutation"),
    "analyse": ("view_plot", "read_file", "show_code", "submit_analysis"),
    "log": ("update_memory", "read_file"),
    "select_parent": ("choose_parent", "read_file", "view_plot"),
    "block_end": ("edit_instructions", "update_memory", "read_file", "show_code", "view_plot"),
    "mutate": ("set_config", "edit_code", "revert_code", "show_code", "read_file", "view_plot",
               "finish_mutation"),
}

#: every tool, in the one order an LLM sees them at every step
ALL_TOOLS: tuple[str, ...] = ("submit_analysis", "choose_parent", "set_config", "edit_code", "revert_code",
                              "show_code", "read_file", "view_plot", "finish_mutation", "update_memory",
                              "edit_instructions")

def regime_examples(regime: Any, config: dict | None = None) -> dict[str, str]:
    """Examples for the prompts and tool descriptions, drawn from `regime`:
    its first numeric mutable key, a value inside its range, the mutation line
    as the loop writes it (`name: old -> new`, name = the key without its
    section), and its first editable file."""
    from regimes.base import get_dotted

    ex = dict(DEFAULT_EXAMPLES)
    mutable = list(getattr(regime, "mutable", []) or [])
    spec = next((p for p in mutable if p.type == "float"), None) or next(
        (p for p in mutable if p.type in ("int", "choice")), None)
    if spec is not None:
        if config is None:
            try:
                config = regime.default_config(regime.default_variant, "quick")
            except Exception:  # a regime whose configs cannot be read: generic examples
                config = {}
        old = get_dotted(config or {}, spec.key)
        new = _example_value(spec, old)
        if new is not None:
            ex["change_key"] = spec.key
            ex["change_value"] = json.dumps(new)
            ex["change_json"] = json.dumps({spec.key: new})
            ex["mutation_example"] = Mutation(changes=[ConfigChange.of(spec.key, "?" if old is None else old, new)]).line()
    editable = list(getattr(regime, "editable", []) or [])
    if editable:
        ef = editable[0]
        ex["code_path"] = ef.path
        where = (list(ef.functions) + list(ef.regions) or [ef.path.rsplit("/", 1)[-1]])[0]
        ex["code_mutation_example"] = f"[code] {where}: one short description of the edit"
    return ex


def _example_value(spec: Any, old: Any) -> Any:
    """A value of `spec` different from `old`, inside its range."""
    if spec.type == "choice":
        other = [c for c in spec.choices or [] if c != old]
        return other[0] if other else None
    if not isinstance(old, (int, float)) or isinstance(old, bool):
        old = spec.low
    if spec.type == "int":
        new = int(old) + 1 if int(old) + 1 <= spec.high else int(old) - 1
        return new if spec.low <= new <= spec.high else None
    new = float(old) * 2 if old else (spec.low + spec.high) / 2
    if new > spec.high:
        new = float(old) / 2
    if not (spec.low <= new <= spec.high):
        new = (spec.low + spec.high) / 2
    return float(f"{new:.3g}")


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
    """The tools of one step: the run's `ToolEnv` and the node's frozen `Step`.

    `step.slots` are the slots this step concerns (`done()` needs the step's required call for
    each of them). `policy_name` is who answers (the log lines name it); the latest
    `message()` is kept in `last_message`."""

    def __init__(self, env: "ToolEnv", step: "Step", names: tuple[str, ...] | None = None,
                 defer_log: bool = False, policy_name: str = "heuristic"):
        _load_tools()
        self.env = env
        self.step = step
        self.slots = list(step.slots)
        self.names = tuple(names if names is not None else STEP_TOOLS[step.name])
        self.required = STEP_REQUIRED[step.name]
        self.policy_name = policy_name
        self.last_message = ""
        self.satisfied: set[int] = set()
        self.n_calls = 0
        self.n_rejected = 0
        self.defer_log = defer_log
        self._log: list[tuple[str, str, str | None]] = []  # (stamp, line, line if rolled back)

    # ----- what the policy sees: the tools, and what they have written so far -----

    def schemas(self) -> list[dict]:
        """name, description, input_schema of every tool allowed at this step."""
        ex = self.examples()
        return [REGISTRY[n].schema(ex) for n in self.names]

    def all_schemas(self) -> list[dict]:
        """Every tool (ALL_TOOLS order), whichever acts at this step: one array for the whole run."""
        ex = self.examples()
        return [REGISTRY[n].schema(ex) for n in ALL_TOOLS if n in REGISTRY]

    def examples(self) -> dict[str, str]:
        """Prompt and description examples from the running regime (cached per run env)."""
        cached = getattr(self.env, "_tool_examples", None)
        if cached is None:
            regime = getattr(self.env, "regime", None)
            base = getattr(self.env, "run_dir", None)
            cfg = None
            if base is not None and (base / "base_config.yaml").is_file():
                from rundir.io import load_yaml
                cfg = load_yaml(base / "base_config.yaml")
            cached = regime_examples(regime, cfg) if regime is not None else dict(DEFAULT_EXAMPLES)
            try:
                self.env._tool_examples = cached
            except AttributeError:
                pass
        return cached

    def slot_config(self, slot: int) -> dict:
        """Slot `slot`'s next config as it is now (set_config changes it during the step)."""
        return self.env.slot_config(slot)

    def plan(self, slot: int) -> SlotPlan:
        """Slot `slot`'s plan as it is now (choose_parent, edit_code, finish_mutation write it)."""
        return self.env.load_plan(slot, self.step.iteration)

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
        from tools.limits import MESSAGE_CHARS, clip

        # bounded, and valid UTF-8 whatever the policy sent (reasoning.log must stay writable)
        text = clip(str(text).encode("utf-8", "backslashreplace").decode("utf-8"), MESSAGE_CHARS)
        self._write(f"[{self.step.name}] {self.policy_name}: {text}")
        self.last_message = text

    def _write(self, line: str, rolled_back: str | None = None) -> None:
        if self.defer_log:
            self._log.append((utc_now(), line, rolled_back))
        else:
            self.env.reasoning(line)

    def finish(self, applied: bool) -> None:
        """Write the step's deferred reasoning.log lines: accepted calls as
        "-> ok" when the step's writes were kept, "-> rolled back" when not."""
        if not self._log:
            return
        lines = [f"{stamp} {line if applied or alt is None else alt}" for stamp, line, alt in self._log]
        self._log = []
        with open(self.env.run_dir / "reasoning.log", "a", encoding="utf-8", errors="backslashreplace") as f:
            f.write("\n".join(lines) + "\n")

    # ----- calling -----

    def call(self, name: str, args: dict | None) -> ToolResult:
        """Validate and run one tool call; log it; count it if rejected.

        Never raises for what a policy sends: a malformed call (not a dict, over-long or non-Unicode
        text, NUL bytes, `true` for a number) and a tool's unexpected error are one rejected call."""
        from tools.limits import QUOTE_CHARS, check_args, clip, clip_args

        self.n_calls += 1
        if not isinstance(name, str):
            name = repr(name)
        name = clip(name.encode("utf-8", "backslashreplace").decode("utf-8"), 60)
        args = dict(args) if isinstance(args, dict) else ({} if args is None else {"(arguments)": args})
        try:
            if not all(isinstance(k, str) for k in args):
                raise ToolRejected(f"{name}: argument names must be strings")
            if "(arguments)" in args:
                raise ToolRejected(f"{name}: arguments must be a JSON object")
            if name not in self.names:
                if name in REGISTRY or name in _all_tool_names():
                    raise ToolRejected(f"tool {name} is not allowed at step {self.step.name}; "
                                       f"allowed: {', '.join(self.names)}")
                raise ToolRejected(f"unknown tool {name!r}; allowed: {', '.join(self.names)}")
            tool = REGISTRY[name]
            if (problem := check_args(name, tool.input_model, args)):
                raise ToolRejected(f"{name}: {problem}")
            try:
                parsed = tool.input_model.model_validate(args)
            except ValidationError as e:
                raise ToolRejected(f"{name}: {_one_line_validation(e)}") from None
            slot = getattr(parsed, "slot", None)
            if tool.slot_scoped and isinstance(slot, int) and slot not in self.slots:
                raise ToolRejected(f"{name}: slot {slot} is not part of this step (slots {self.slots})")
            content = tool.fn(self.env, self.step, parsed)
        except Exception as e:  # ToolRejected, or a tool's own bug on odd input: one rejected call
            first = (str(e).splitlines() or [""])[0]
            if isinstance(e, ToolRejected):
                msg = first or f"{name}: rejected"
            else:
                msg = f"{name}: failed: {type(e).__name__}" + (f": {first}" if first else "")
            msg = clip(msg, 3 * QUOTE_CHARS)  # never the whole value that was sent
            self.n_rejected += 1
            short = clip_args(args)
            self.env.record_rejection(self.step, name, short, msg)
            self._write(f"[{self.step.name}] CALL {name} {_short_json(short)} -> REJECTED: {msg}")
            return ToolResult(ok=False, content="", error=msg)
        if self.required == name and isinstance(getattr(parsed, "slot", None), int):
            self.satisfied.add(parsed.slot)
        head = f"[{self.step.name}] CALL {name} {_short_json(clip_args(args))}"
        self._write(f"{head} -> ok: {_short_content(content)}",
                    f"{head} -> rolled back (the step was undone): {_short_content(content)}")
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
