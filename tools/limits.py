"""Size limits on every text a policy can send, and the checks of malformed input.

Each limit is stated in the tool's JSON schema (`maxLength`, and in the field
and tool descriptions, which Claude reads) and enforced by `ToolBox.call`
before the tool runs, so an over-long, NUL-carrying or non-Unicode value is
one rejected call that writes nothing. Rejections quote at most a short
prefix of what was sent (`clip`), so rejected.jsonl and reasoning.log stay
small whatever a policy sends. memory.md is in every prompt: its sections
have a size limit too (agent.memory.Memory.update).
"""

from __future__ import annotations

import types
import typing
from typing import Any

# memory.md: the body of one section after a policy edit is bounded by the format itself
from rundir.memory import MEMORY_SECTION_CHARS, MEMORY_SECTION_CHARS_BY_NAME  # noqa: F401

#: tool -> field -> most characters. Every string field of every tool input is listed
#: (tests/test_reliability_tools.py checks it); set_config's `changes` is limited per key and value.
TEXT_LIMITS: dict[str, dict[str, int]] = {
    "update_memory": {"section": 100, "text": 4000},
    "edit_instructions": {"old": 4000, "new": 4000},
    "submit_analysis": {"visual": 1000, "observation": 1000},
    "choose_parent": {"strategy": 64, "reason": 300},
    "finish_mutation": {"mutation": 1200, "strategy": 64, "parent_rule": 300, "hypothesis": 500},
    "edit_code": {"path": 300, "old": 20000, "new": 20000, "change": 300, "hypothesis": 500, "strategy": 64},
    "revert_code": {"path": 300, "reason": 300},
    "show_code": {"path": 300},
    "read_file": {"path": 1000},
    "view_plot": {"name": 300},
}
#: set_config: at most this many keys per call (a baseline sets every mutable key: 17 at most today),
#: key and string-value lengths
CONFIG_MAX_KEYS = 40
CONFIG_KEY_CHARS = 200
CONFIG_VALUE_CHARS = 200
#: a string of a tool not listed above (a new tool): still bounded
DEFAULT_TEXT_CHARS = 2000
#: instructions.md may grow by at most this much over the regime's text through edit_instructions
INSTRUCTIONS_GROWTH_CHARS = 16000
#: a policy message (reasoning.log, status.json)
MESSAGE_CHARS = 4000
#: how much of a rejected value an error, rejected.jsonl or reasoning.log quotes
QUOTE_CHARS = 120


def clip(text: str, limit: int = QUOTE_CHARS) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    return text if len(text) <= limit else f"{text[:limit]}… [{len(text)} characters]"


def clip_args(obj: Any, limit: int = QUOTE_CHARS, depth: int = 0) -> Any:
    """Tool-call arguments with every long string clipped and big containers cut (for the logs)."""
    if isinstance(obj, str):
        return clip(obj.encode("utf-8", "backslashreplace").decode("utf-8"), limit)
    if depth > 4:
        return "…"
    if isinstance(obj, dict):
        items = list(obj.items())
        out = {clip(str(k), limit): clip_args(v, limit, depth + 1) for k, v in items[:CONFIG_MAX_KEYS]}
        if len(items) > CONFIG_MAX_KEYS:
            out["…"] = f"{len(items) - CONFIG_MAX_KEYS} more keys"
        return out
    if isinstance(obj, (list, tuple)):
        out = [clip_args(v, limit, depth + 1) for v in obj[:CONFIG_MAX_KEYS]]
        if len(obj) > CONFIG_MAX_KEYS:
            out.append(f"… {len(obj) - CONFIG_MAX_KEYS} more items")
        return out
    return obj


def _bad_text(s: str) -> str | None:
    if "\0" in s:
        return "contains a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        return f"is not valid Unicode (a lone surrogate at character {e.start})"
    return None


def _takes_int(annotation: Any) -> bool:
    """True when a field's type accepts int but not bool (pydantic would turn `true` into 1)."""
    if annotation is int:
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return int in args and bool not in args
    return False


def check_args(tool: str, model: type, args: dict) -> str | None:
    """The first problem of `args` for `tool` (one line, quoting nothing long), or None."""
    limits = TEXT_LIMITS.get(tool, {})
    fields = getattr(model, "model_fields", {})
    for name, value in args.items():
        label = clip(str(name), 40)
        if isinstance(name, str) and (bad := _bad_text(name)):
            return f"argument name {label!r} {bad}"
        info = fields.get(name)
        if isinstance(value, bool) and info is not None and _takes_int(info.annotation):
            return f"{label}: expected an integer, got {str(value).lower()}"
        if isinstance(value, str):
            if (bad := _bad_text(value)):
                return f"{label} {bad}"
            limit = limits.get(name, DEFAULT_TEXT_CHARS)
            if len(value) > limit:
                return f"{label} is {len(value)} characters; at most {limit}"
        elif isinstance(value, dict):
            if len(value) > CONFIG_MAX_KEYS:
                return f"{label} has {len(value)} keys; at most {CONFIG_MAX_KEYS} per call"
            for k, v in value.items():
                if not isinstance(k, str):
                    continue
                if (bad := _bad_text(k)):
                    return f"{label}: a key {bad}"
                if len(k) > CONFIG_KEY_CHARS:
                    return f"{label}: key {clip(k, 40)!r} is {len(k)} characters; at most {CONFIG_KEY_CHARS}"
                if isinstance(v, str):
                    if (bad := _bad_text(v)):
                        return f"{label}: the value of {clip(k, 40)!r} {bad}"
                    if len(v) > CONFIG_VALUE_CHARS:
                        return (f"{label}: the value of {clip(k, 40)!r} is {len(v)} characters; "
                                f"at most {CONFIG_VALUE_CHARS}")
                elif not isinstance(v, (int, float, bool, type(None))):
                    return f"{label}: the value of {clip(k, 40)!r} must be a number, string, boolean or null"
        elif isinstance(value, (list, tuple)):
            return f"{label}: a list is not accepted here"
    return None


def schema_with_limits(tool: str, schema: dict) -> dict:
    """The tool's JSON schema with maxLength on its strings, and the limits in the descriptions."""
    limits = TEXT_LIMITS.get(tool, {})
    props = schema.get("input_schema", {}).get("properties", {})
    stated = []
    for name, prop in props.items():
        if name == "changes" and tool == "set_config":
            prop["maxProperties"] = CONFIG_MAX_KEYS
            prop["description"] = (prop.get("description", "").rstrip()
                                   + f" At most {CONFIG_MAX_KEYS} keys, keys and string values at most "
                                   f"{CONFIG_KEY_CHARS} characters.")
            stated.append(f"changes ≤ {CONFIG_MAX_KEYS} keys")
            continue
        types_ = [prop.get("type")] + [a.get("type") for a in prop.get("anyOf", [])]
        if "string" not in types_:
            continue
        limit = limits.get(name, DEFAULT_TEXT_CHARS)
        if prop.get("type") == "string":
            prop["maxLength"] = limit
        prop["description"] = (prop.get("description", "").rstrip() + f" (at most {limit} characters)").lstrip()
        stated.append(f"{name} ≤ {limit}")
    if tool == "update_memory":
        stated.append(f"a section ≤ {MEMORY_SECTION_CHARS} characters after the edit "
                      f"(Iterations This Block ≤ {MEMORY_SECTION_CHARS_BY_NAME['Iterations This Block']})")
    if tool == "edit_instructions":
        stated.append(f"instructions.md may grow by ≤ {INSTRUCTIONS_GROWTH_CHARS} characters in all")
    if stated:
        schema["description"] = (schema["description"].rstrip() + " Size limits (characters): "
                                 + ", ".join(stated) + "; a longer text is rejected.")
    return schema
