"""ClaudePolicy through the real anthropic SDK against the fake Messages API server.

The ToolBox here is a small stand-in with the contract's interface
(schemas / call / done / missing / message) and pydantic-validated tools, so
the policy is tested on its own; tests/test_claude_e2e.py runs it in the loop.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from pathlib import Path

import pytest
from pydantic import BaseModel, ConfigDict, ValidationError

from agent.llm import CostLimitReached, LLMClient, LLMUnavailable
from agent.policies.base import STEPS, PolicyError, StepContext
from agent.policies.claude import ClaudePolicy, StepFailed, format_results
from prompts.render import PROMPTS_DIR, PromptError, placeholders, render
from rundir.records import NodeRecord
from rundir.store import Store

try:
    from tests.fake_anthropic import fake_anthropic, image_blocks, tool_results, usage  # noqa: F401
except ImportError:
    from fake_anthropic import fake_anthropic, image_blocks, tool_results, usage  # noqa: F401

MODEL = "claude-sonnet-4-6"


def png_bytes(w: int = 2, h: int = 2, rgb=(200, 30, 30)) -> bytes:
    """A valid tiny PNG (no plotting library needed)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# ----- a stand-in ToolBox with the contract's interface -----

class _Res(BaseModel):
    ok: bool
    content: str | list = ""
    error: str | None = None


class ViewPlot(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int
    name: str


class SubmitAnalysis(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int
    visual: str
    observation: str


class ChooseParent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int
    parent: int | str
    strategy: str


class UpdateMemory(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: str
    text: str


REQUIRED = {"analyse": "submit_analysis", "select_parent": "choose_parent", "log": None}
MODELS = {"view_plot": ViewPlot, "submit_analysis": SubmitAnalysis, "choose_parent": ChooseParent,
          "update_memory": UpdateMemory}


class StubToolBox:
    def __init__(self, step: str, slots: list[int], names: tuple[str, ...], plot_dir: Path | None = None):
        self.step, self.slots, self.names = step, slots, names
        self.required = REQUIRED[step]
        self.satisfied: set[int] = set()
        self.calls: list[tuple[str, dict, bool]] = []
        self.messages: list[str] = []
        self.plot_dir = plot_dir

    def schemas(self):
        out = []
        for n in self.names:
            s = MODELS[n].model_json_schema()
            s.pop("title", None)
            out.append({"name": n, "description": f"the {n} tool", "input_schema": s})
        return out

    def missing(self):
        if self.required is None:
            return []
        return [f"{self.required}(slot={s})" for s in self.slots if s not in self.satisfied]

    def done(self):
        return not self.missing()

    def message(self, text):
        self.messages.append(text)

    def call(self, name, args):
        if name not in self.names:
            self.calls.append((name, args, False))
            return _Res(ok=False, error=f"unknown tool {name!r}")
        try:
            parsed = MODELS[name].model_validate(args)
        except ValidationError as e:
            err = e.errors()[0]
            self.calls.append((name, args, False))
            return _Res(ok=False, error=f"{name}: {'.'.join(map(str, err['loc']))}: {err['msg']}")
        self.calls.append((name, args, True))
        if name == self.required:
            self.satisfied.add(parsed.slot)
        if name == "view_plot":
            data = base64.b64encode((self.plot_dir / parsed.name).read_bytes()).decode()
            return _Res(ok=True, content=[{"type": "text", "text": f"plot {parsed.name} of slot {parsed.slot}"},
                                          {"type": "image", "path": str(self.plot_dir / parsed.name),
                                           "media_type": "image/png", "data": data}])
        return _Res(ok=True, content="recorded")


def ctx_for(step: str, run_dir: Path, slots=(0, 1), results=None, **kw) -> StepContext:
    return StepContext(step=step, run_dir=run_dir, regime_name="toy", block=1, iter_in_block=2, n_iter_block=8,
                       slots=list(slots), results=results or [], memory=kw.pop("memory", "# Memory\n- lr_k matters"),
                       instructions=kw.pop("instructions", "TOY REGIME INSTRUCTIONS: R2 > 0.9 is converged."),
                       ucb=kw.pop("ucb", "Node 3: UCB=1.100, parent=root, visits=1, score=0.7"), **kw)


@pytest.fixture
def analyse_setup(tmp_path):
    out0 = tmp_path / "iterations" / "iter_001" / "slot_00"
    out1 = tmp_path / "iterations" / "iter_001" / "slot_01"
    for i, d in enumerate((out0, out1)):
        (d / "plots").mkdir(parents=True)
        (d / "plots" / "mlp_sub.png").write_bytes(png_bytes(rgb=(10 * i, 0, 0)))
        (d / "plots" / "loss.png").write_bytes(png_bytes(rgb=(0, 10 * i, 0)))
    results = [
        {"slot": 0, "node": 3, "parent": None, "commit": "c0", "status": "ok", "classification": "partial", "score": 0.7123,
         "metrics": {"rate_constants_R2": 0.7123, "test_pearson": 0.98}, "degeneracy": {"gap": 0.2677,
                                                                                       "diagnosis": "degenerate"},
         "mutation": "training.learning_rate_k: 1E-3 -> 5E-3", "config": {"training": {"learning_rate_k": 0.005}},
         "plots": ["plots/mlp_sub.png", "plots/loss.png"], "out_dir": str(out0)},
        {"slot": 1, "node": 4, "parent": None, "commit": "c0", "status": "failed", "classification": "failed", "score": 0.0,
         "metrics": {}, "traceback_tail": "Traceback...\nRuntimeError: training diverged: loss is nan at step 12",
         "plots": [str(out1 / "plots" / "mlp_sub.png")], "out_dir": str(out1)},
    ]
    return tmp_path, results, out0


def _records(run_dir: Path):
    return [json.loads(x) for x in (run_dir / "llm_calls.jsonl").read_text().splitlines()]


def test_analyse_step_tools_images_tool_use_ids_and_call_log(fake_anthropic, analyse_setup):
    run_dir, results, out0 = analyse_setup
    fake_anthropic.tool_use(("view_plot", {"slot": 0, "name": "loss.png"}),
                            ("submit_analysis", {"slot": 0, "visual": "MLP_sub=partial: too flat",
                                                 "observation": "lr_k up helped"}),
                            text="Slot 0 is degenerate; checking the loss curve.", ids=["tu_a", "tu_b"],
                            usage_=usage(1200, 80, cache_creation=900, cache_read=0))
    fake_anthropic.tool_use(("submit_analysis", {"slot": 1, "visual": "n/a"}), ids=["tu_c"],
                            usage_=usage(300, 40, cache_read=900))
    fake_anthropic.tool_use(("submit_analysis", {"slot": 1, "visual": "n/a: diverged", "observation": "nan"}),
                            ids=["tu_d"], usage_=usage(320, 40, cache_read=1100))
    tools = StubToolBox("analyse", [0, 1], ("view_plot", "submit_analysis"), plot_dir=out0 / "plots")
    policy = ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0)
    policy.act(ctx_for("analyse", run_dir, results=results), tools)

    assert tools.done()
    reqs = fake_anthropic.requests
    assert len(reqs) == 3  # done after the third answer: no fourth call
    first = reqs[0]
    assert [t["name"] for t in first["tools"]] == ["view_plot", "submit_analysis"]
    assert first["tools"][1]["input_schema"] == tools.schemas()[1]["input_schema"]
    assert not any("cache_control" in t for t in first["tools"])  # the system breakpoints cover them
    assert first["system"][0]["text"].startswith("# Role")
    assert first["system"][0]["cache_control"] == {"type": "ephemeral"}
    # analyse usually ends in one answer: no breakpoint on its first message; a later turn gets one
    assert not any("cache_control" in b for b in first["messages"][0]["content"])
    assert reqs[1]["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}
    assert "TOY REGIME INSTRUCTIONS" in first["system"][-1]["text"]
    assert first["system"][-1]["cache_control"] == {"type": "ephemeral"}
    prompt = first["messages"][0]["content"][0]["text"]
    assert "Step: analyse" in prompt and "rate_constants_R2=0.7123" in prompt
    assert "gap=0.2677 (degenerate)" in prompt and "loss is nan at step 12" in prompt
    assert "`submit_analysis(slot=0)`, `submit_analysis(slot=1)`" in prompt
    assert "$" not in prompt.replace("$$", "")
    # the plots of both slots as base64 PNG image blocks (2 for slot 0, 1 for slot 1)
    imgs = image_blocks(first["messages"][0])
    assert len(imgs) == 3
    assert all(i["source"]["type"] == "base64" and i["source"]["media_type"] == "image/png" for i in imgs)
    assert base64.b64decode(imgs[0]["source"]["data"]) == (out0 / "plots" / "mlp_sub.png").read_bytes()

    # tool results carry the ids of the tool_use blocks they answer, in order
    tr = tool_results(reqs[1])
    assert [t["tool_use_id"] for t in tr] == ["tu_a", "tu_b"]
    assert image_blocks(tr[0]) and image_blocks(tr[0])[0]["source"]["media_type"] == "image/png"
    assert tr[1]["content"] == "recorded" and not tr[1].get("is_error")
    assert reqs[1]["messages"][1]["role"] == "assistant"
    assert [b["id"] for b in reqs[1]["messages"][1]["content"] if b["type"] == "tool_use"] == ["tu_a", "tu_b"]
    # the rejected call goes back as an error with the validation message
    (bad,) = tool_results(reqs[2])
    assert bad["tool_use_id"] == "tu_c" and bad["is_error"] is True and "observation" in bad["content"]
    assert [c[2] for c in tools.calls] == [True, True, False, True]
    # the assistant's text reached the reasoning hook
    assert tools.messages == ["Slot 0 is degenerate; checking the loss curve."]

    recs = _records(run_dir)
    assert [r["step"] for r in recs] == ["analyse"] * 3
    assert recs[0]["cache_creation_input_tokens"] == 900 and recs[2]["cache_read_input_tokens"] == 1100
    assert all(r["ok"] and r["latency_s"] > 0 and r["cost_usd"] > 0 for r in recs)
    assert policy.cost_usd == pytest.approx(sum(r["cost_usd"] for r in recs))


def test_model_stopping_early_is_nudged_once(fake_anthropic, tmp_path):
    fake_anthropic.text("I think slot 0 should exploit node 3.")
    fake_anthropic.tool_use(("choose_parent", {"slot": 0, "parent": 3, "strategy": "exploit"}), ids=["tu_1"])
    tools = StubToolBox("select_parent", [0], ("choose_parent",))
    ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0).act(ctx_for("select_parent", tmp_path, slots=[0]), tools)
    assert tools.done()
    nudge = fake_anthropic.requests[1]["messages"][-1]["content"][0]["text"]
    assert "you still must call choose_parent(slot=0)" in nudge


def test_second_stop_without_required_call_raises_policy_error(fake_anthropic, tmp_path):
    fake_anthropic.text("thinking").text("still thinking")
    tools = StubToolBox("select_parent", [0], ("choose_parent",))
    with pytest.raises(PolicyError, match="without calling choose_parent"):
        ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0).act(ctx_for("select_parent", tmp_path, slots=[0]),
                                                                      tools)
    assert len(fake_anthropic.requests) == 2


def test_turn_limit_raises_policy_error(fake_anthropic, tmp_path):
    for strategy in ("a", "b"):  # rejected each time (no parent), never the same call twice
        fake_anthropic.tool_use(("choose_parent", {"slot": 0, "strategy": strategy}))
    tools = StubToolBox("select_parent", [0], ("choose_parent",))
    with pytest.raises(StepFailed, match="2 turns") as ei:
        ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0, max_turns=2).act(
            ctx_for("select_parent", tmp_path, slots=[0]), tools)
    assert ei.value.fault == "turn_limit"


def test_a_repeated_rejected_call_ends_the_step_early(fake_anthropic, tmp_path):
    for _ in range(5):
        fake_anthropic.tool_use(("choose_parent", {"slot": 0}))  # the same rejected call, again and again
    tools = StubToolBox("select_parent", [0], ("choose_parent",))
    with pytest.raises(StepFailed, match="repeated a rejected call .*choose_parent: parent: Field required") as ei:
        ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0).act(ctx_for("select_parent", tmp_path, slots=[0]),
                                                                      tools)
    assert ei.value.fault == "repeated_rejection"
    assert len(fake_anthropic.requests) == 2 and len(tools.calls) == 1  # the repeat is not even run


def test_step_wall_time_limit_cuts_the_call_deadline(fake_anthropic, tmp_path):
    fake_anthropic.tool_use(("choose_parent", {"slot": 0, "strategy": "x"}))  # rejected: the step goes on
    fake_anthropic.otherwise("stall", seconds=30)
    tools = StubToolBox("select_parent", [0], ("choose_parent",))
    t0 = time.monotonic()
    with pytest.raises(LLMUnavailable, match="deadline"):
        ClaudePolicy(model=MODEL, deadline_s=20, max_retries=0, max_step_s=2.0).act(
            ctx_for("select_parent", tmp_path, slots=[0]), tools)
    assert time.monotonic() - t0 < 4.0  # the 20 s call deadline was cut to the step's 2 s


def test_step_without_required_call_runs_until_end_turn(fake_anthropic, tmp_path):
    fake_anthropic.tool_use(("update_memory", {"section": "Emerging Observations", "text": "- lr_k > 5E-3 diverges"}),
                            ids=["tu_m"])
    fake_anthropic.text("Memory updated: one new observation.")
    tools = StubToolBox("log", [0, 1], ("update_memory",))
    ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0).act(ctx_for("log", tmp_path), tools)
    assert len(fake_anthropic.requests) == 2
    assert [t["tool_use_id"] for t in tool_results(fake_anthropic.requests[1])] == ["tu_m"]
    assert tools.calls == [("update_memory", {"section": "Emerging Observations",
                                              "text": "- lr_k > 5E-3 diverges"}, True)]
    assert tools.messages[-1] == "Memory updated: one new observation."


def test_unavailable_llm_raises_llm_unavailable(fake_anthropic, tmp_path):
    fake_anthropic.error(500).otherwise("stall", seconds=30)
    tools = StubToolBox("select_parent", [0], ("choose_parent",))
    with pytest.raises(LLMUnavailable):
        ClaudePolicy(model=MODEL, deadline_s=1.0, max_retries=2).act(ctx_for("select_parent", tmp_path, slots=[0]),
                                                                       tools)
    assert tools.calls == []


def test_cost_limit_propagates_from_act(fake_anthropic, tmp_path):
    fake_anthropic.tool_use(("choose_parent", {"slot": 0, "parent": "root", "strategy": "explore"}),
                            usage_=usage(10, 100_000))  # $1.50 on sonnet
    client = LLMClient(MODEL, max_retries=0, deadline_s=10, max_cost_usd=1.0, log_path=tmp_path / "llm_calls.jsonl")
    policy = ClaudePolicy(client=client)
    tools = StubToolBox("select_parent", [0, 1], ("choose_parent",))
    with pytest.raises(CostLimitReached):
        policy.act(ctx_for("select_parent", tmp_path), tools)
    assert len(fake_anthropic.requests) == 1 and tools.satisfied == {0}


# ----- prompts -----

def test_every_step_template_renders_without_leftover_placeholders(tmp_path):
    policy = ClaudePolicy(model=MODEL)
    for step in STEPS:
        names = {"analyse": ("view_plot", "submit_analysis"), "select_parent": ("choose_parent",)}.get(
            step, ("update_memory",))
        tools = StubToolBox({"analyse": "analyse", "select_parent": "select_parent"}.get(step, "log"),
                            [0], names)
        text = policy.step_prompt(ctx_for(step, tmp_path, slots=[0], code_block_reason="regime toy allows none"),
                                  tools)
        assert f"Step: {step}" in text
        assert "$" not in text, step
        assert "lr_k matters" in text  # memory is shown at every step
        if step in ("prepare", "mutate", "block_end"):
            assert "not allowed now: regime toy allows none" in text


def test_renderer_names_unknown_placeholders():
    assert render("a $x ${y} $$", {"x": 1, "y": "b"}) == "a 1 b $"
    with pytest.raises(PromptError, match=r"steps/x.md: placeholder \$missing"):
        render("a $missing", {"x": 1}, "steps/x.md")
    assert placeholders((PROMPTS_DIR / "steps" / "analyse.md").read_text()) >= {"results", "memory", "finish"}


def test_format_results_keeps_unknown_keys():
    text = format_results([{"slot": 2, "node": 9, "parent": 4, "custom_flag": True, "score": 1.23456789e-5}])
    assert "### Slot 2 — node 9 (parent 4)" in text and "custom_flag: True" in text and "1.23E-5" in text


def test_prompt_numbers_read_as_the_mutation_lines_and_memory():
    """One number format (regimes.base.format_value) in the prompt, the Mutation lines and memory.md."""
    from regimes.base import format_value

    text = format_results([{"slot": 0, "metrics": {"loss": 12345.0, "r2": 0.81234, "lr": 5e-3}}])
    assert "- metrics: loss=12345, r2=0.8123, lr=5E-3" in text
    assert format_value(12345.0) == "12345" and format_value(5e-3) == "5E-3"


def test_mutate_prompt_describes_slots_from_plans_configs_and_store(tmp_path):
    (tmp_path / "plans").mkdir()
    (tmp_path / "configs").mkdir()
    (tmp_path / "plans" / "slot_00.json").write_text(json.dumps(
        {"slot": 0, "parent": 7, "strategy": "exploit", "parent_rule": "highest UCB"}))
    (tmp_path / "configs" / "slot_00.yaml").write_text(
        "simulation: {n: 10}\ntraining: {learning_rate_k: 0.005, batch_size: 8}\nclaude: {n_epochs: 1}\n")
    store = Store(tmp_path / "nodes.jsonl")
    store.append(NodeRecord(id=7, parent=None, block=1, iter_in_block=1, iteration=1, slot=0,
                            classification="partial", score=0.81, mutation="training.batch_size: 4 -> 8",
                            metrics={"rate_constants_R2": 0.81}, observation="bigger batch helped"))
    with open(store.path, "a") as f:
        f.write("{torn")  # a killed run's last line: the store skips it
    tools = StubToolBox("log", [0], ("update_memory",))
    ctx = ctx_for("mutate", tmp_path, slots=[0], nodes=Store(store.path).nodes())
    text = ClaudePolicy(model=MODEL).step_prompt(ctx, tools)
    assert "### Slot 0 (parent 7)" in text
    assert "strategy: exploit" in text and "parent_rule: highest UCB" in text
    assert "partial, score 0.81, from mutation training.batch_size: 4 -> 8" in text
    assert "rate_constants_R2=0.81" in text and "bigger batch helped" in text
    assert "learning_rate_k=5E-3, batch_size=8" in text  # regimes.base.format_value, as in the mutation lines


def test_registry_factory_reads_run_options_and_env(monkeypatch, tmp_path):
    from agent.policies.registry import make_policy

    monkeypatch.setenv("GNN_AGENT_LLM_DEADLINE_S", "7.5")
    monkeypatch.setenv("GNN_AGENT_LLM_MAX_RETRIES", "1")
    p = make_policy("claude", model="claude-opus-4-5", run_dir=tmp_path, max_cost_usd=2.0, seed=3, slots=2)
    assert isinstance(p, ClaudePolicy) and p.name == "claude" and p.model == "claude-opus-4-5"
    assert (p._client_kwargs["deadline_s"], p._client_kwargs["max_retries"],
            p._client_kwargs["max_cost_usd"]) == (7.5, 1, 2.0)
    monkeypatch.setenv("GNN_AGENT_LLM_DEADLINE_S", "soon")
    with pytest.raises(ValueError, match="GNN_AGENT_LLM_DEADLINE_S='soon': not a number"):
        make_policy("claude", model="claude-opus-4-5", run_dir=tmp_path)


def test_empty_text_blocks_are_not_echoed_back(fake_anthropic, tmp_path):
    fake_anthropic.reply([{"type": "text", "text": "  "},
                          {"type": "tool_use", "id": "tu_x", "name": "update_memory",
                           "input": {"section": "Open Questions", "text": "- why?"}}], "tool_use")
    fake_anthropic.text("done")
    tools = StubToolBox("log", [0], ("update_memory",))
    ClaudePolicy(model=MODEL, deadline_s=10, max_retries=0).act(ctx_for("log", tmp_path, slots=[0]), tools)
    echoed = fake_anthropic.requests[1]["messages"][1]
    assert echoed["role"] == "assistant"
    assert [b["type"] for b in echoed["content"]] == ["tool_use"]
    assert tools.messages == ["done"]  # blank text is not a message either


def test_reminder_counts_the_missing_calls_and_block_nodes_lead_with_the_id():
    from agent.policies.claude import _nudge, format_block_nodes

    class T:
        def __init__(self, missing):
            self._m = missing

        def missing(self):
            return self._m

    assert "Call it now" in _nudge(T(["choose_parent(slot=0)"]))
    two = _nudge(T(["finish_mutation(slot=0)", "finish_mutation(slot=1)"]))
    assert "Make these 2 calls now" in two and "Call it now" not in two
    text = format_block_nodes([{"id": 7, "slot": 1, "parent": 3, "strategy": "exploit", "mutation": "lr: 1E-3 -> 2E-3",
                                "classification": "partial", "score": 0.5123, "observation": "helped a bit",
                                "config": {"training": {"lr": 0.002}}, "metrics": {"fit_R2": 0.5}}])
    assert text == ("- node 7 (slot 1, parent 3): exploit, lr: 1E-3 -> 2E-3 -> partial, score 0.5123; helped a bit")
