"""Issue 19: size limits on every text a policy sends, and malformed input as one rejected call."""

from __future__ import annotations

import json
import types
import typing

import pytest

from agent.run import start_run
from tests._killwalk import FakeExecutor
from tests.loop_helpers import box, copy_run, open_ctx, toy_options
from tools.limits import QUOTE_CHARS, TEXT_LIMITS
from tools.toolbox import REGISTRY, STEP_TOOLS, _load_tools


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("rel_tools") / "run"
    start_run(toy_options(d, iterations=2), executor=FakeExecutor(None))  # nodes 1, 2 (block 1)
    return d


@pytest.fixture
def ctx(base_run, tmp_path):
    return open_ctx(copy_run(base_run, tmp_path / "run"))


def _str_fields(model) -> list[str]:
    out = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        union = typing.get_origin(ann) in (typing.Union, types.UnionType)
        if ann is str or (union and str in typing.get_args(ann)):
            out.append(name)
    return out


def test_every_string_field_of_every_tool_has_a_stated_limit():
    _load_tools()
    for name, tool in REGISTRY.items():
        fields = _str_fields(tool.input_model)
        assert sorted(fields) == sorted(TEXT_LIMITS.get(name, {})), name  # none forgotten, none stale
        schema = tool.schema()
        for f in fields:
            prop = schema["input_schema"]["properties"][f]
            limit = TEXT_LIMITS[name][f]
            assert prop.get("maxLength") == limit or any(a.get("maxLength") == limit for a in prop.get("anyOf", [])) \
                or f"at most {limit} characters" in prop["description"], (name, f)
            assert f"{f} ≤ {limit}" in schema["description"], (name, f)
    assert "At most 40 keys" in REGISTRY["set_config"].schema()["input_schema"]["properties"]["changes"]["description"]


BIG = "x" * 10_000_000

OVERSIZED = [
    ("log", [0, 1], "update_memory", {"section": "Open Questions", "text": BIG}),
    ("analyse", [0, 1], "submit_analysis", {"slot": 0, "visual": "fine", "observation": BIG}),
    ("analyse", [0, 1], "submit_analysis", {"slot": 0, "visual": BIG, "observation": "fine"}),
    ("mutate", [0, 1], "edit_code", {"slot": 0, "path": "toyfit/train.py", "old": "    return lr\n", "new": BIG,
                                     "change": "big", "hypothesis": "big"}),
    ("mutate", [0, 1], "finish_mutation", {"slot": 0, "mutation": BIG}),
    ("select_parent", [0, 1], "choose_parent", {"slot": 0, "parent": 1, "strategy": "exploit", "reason": BIG}),
    ("mutate", [0, 1], "set_config", {"slot": 0, "changes": {BIG: 1}}),
    ("mutate", [0, 1], "set_config", {"slot": 0, "changes": {"training.learning_rate": BIG}}),
    ("block_end", [0, 1], "edit_instructions", {"old": "a", "new": BIG}),
    ("mutate", [0, 1], "read_file", {"path": BIG}),
]


@pytest.mark.parametrize("step,slots,tool,args", OVERSIZED, ids=[f"{t[2]}-{i}" for i, t in enumerate(OVERSIZED)])
def test_an_oversized_text_is_rejected_and_the_logs_stay_small(ctx, step, slots, tool, args):
    before = {p: p.read_bytes() for p in (ctx.run_dir / "memory.md", ctx.run_dir / "instructions.md")}
    res = box(ctx, step, slots).call(tool, args)
    assert not res.ok and "characters" in res.error and "\n" not in res.error
    assert len(res.error) < 4 * QUOTE_CHARS
    assert {p: p.read_bytes() for p in before} == before
    assert (ctx.run_dir / "rejected.jsonl").stat().st_size < 2000
    assert len((ctx.run_dir / "reasoning.log").read_text().splitlines()[-1]) < 1500


def test_memory_section_may_not_grow_past_its_limit(ctx):
    tb = box(ctx, "log", [0, 1])
    for _ in range(2):
        assert tb.call("update_memory", {"section": "Open Questions", "text": "q" * 3900, "mode": "append"}).ok
    res = tb.call("update_memory", {"section": "Open Questions", "text": "q" * 3900, "mode": "append"})
    assert not res.ok and "at most 8000" in res.error
    assert tb.call("update_memory", {"section": "Open Questions", "text": "summary", "mode": "replace"}).ok


MALFORMED = [
    ("mutate", "read_file", {"path": "run.yaml\x00.txt"}, "NUL"),
    ("mutate", "read_file", {"path": "run\udc80.yaml"}, "lone surrogate"),
    ("analyse", "submit_analysis", {"slot": 0, "visual": "ok \ud800", "observation": "x"}, "lone surrogate"),
    ("log", "update_memory", {"section": "Open Questions", "text": "a\x00b"}, "NUL"),
    ("mutate", "set_config", {"slot": 0, "changes": {"training.learning_rate\x00": 0.01}}, "NUL"),
    ("select_parent", "choose_parent", {"slot": 0, "parent": True, "strategy": "exploit"}, "expected an integer"),
    ("select_parent", "choose_parent", {"slot": True, "parent": 1, "strategy": "exploit"}, "expected an integer"),
    ("mutate", "view_plot", {"node": False}, "expected an integer"),
    ("mutate", "set_config", {"slot": 0, "changes": {"training.learning_rate": [1, 2]}}, "must be a number"),
    ("mutate", "finish_mutation", {"slot": 0, "mutation": ["a"]}, "list"),
    ("log", "update_memory", {"section": "Open Questions", "text": "Evil\n====="}, "headings"),
    ("log", "update_memory", {"section": "Open Questions", "text": "intro\nEvil\n---"}, "headings"),
    ("log", "update_memory", {"section": "Open Questions", "text": "   ## Indented"}, "headings"),
    ("log", "update_memory", {"section": "Open Questions", "text": "#"}, "headings"),
]


@pytest.mark.parametrize("step,tool,args,match", MALFORMED, ids=[f"{t[1]}-{i}" for i, t in enumerate(MALFORMED)])
def test_malformed_input_is_one_rejected_call(ctx, step, tool, args, match):
    n = ctx.env.n_rejected()
    res = box(ctx, step, [0, 1]).call(tool, args)  # must not raise
    assert not res.ok and match in res.error and "\n" not in res.error, res.error
    assert ctx.env.n_rejected() == n + 1
    json.loads((ctx.run_dir / "rejected.jsonl").read_text().splitlines()[-1])  # still valid JSON lines


def test_arguments_that_are_not_an_object_are_rejected(ctx):
    tb = box(ctx, "mutate", [0, 1])
    for bad in (["slot", 0], "slot=0", 7):
        res = tb.call("finish_mutation", bad)
        assert not res.ok and "JSON object" in res.error
    res = tb.call(None, {})
    assert not res.ok and "unknown tool" in res.error


def test_a_tool_that_fails_unexpectedly_is_one_rejected_call(ctx, monkeypatch):
    from tools import toolbox

    def boom(env, step, args):
        raise OSError("disk on fire")

    monkeypatch.setitem(toolbox.REGISTRY, "read_file", toolbox.REGISTRY["read_file"].__class__(
        "read_file", "d", toolbox.REGISTRY["read_file"].input_model, boom))
    res = box(ctx, "mutate", [0, 1]).call("read_file", {"path": "run.yaml"})
    assert not res.ok and res.error == "read_file: failed: OSError: disk on fire"


def test_a_parent_from_a_closed_block_is_rejected(ctx):
    closed = {"block": 2, "batch": {}}  # block 1 (nodes 1, 2) is closed
    res = box(ctx, "select_parent", [0, 1], **closed).call("choose_parent", {"slot": 0, "parent": 1,
                                                                             "strategy": "exploit"})
    assert not res.ok and "block 1, which is closed" in res.error
    assert box(ctx, "select_parent", [0, 1], **closed).call("choose_parent", {"slot": 0, "parent": "root",
                                                                              "strategy": "exploit"}).ok


def test_the_heuristic_stays_within_the_limits(base_run):
    # a whole run of the default policy made no call that a limit rejected
    rej = base_run / "rejected.jsonl"
    lines = rej.read_text().splitlines() if rej.exists() else []
    assert not [ln for ln in lines if "characters" in ln]


def test_every_step_tool_is_registered():
    _load_tools()
    assert {n for names in STEP_TOOLS.values() for n in names} <= set(REGISTRY)
