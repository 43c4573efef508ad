"""The loop with policy claude against the fake Messages API server, on the toy regime.

- a 2-slot, 2-batch run (every graph step: prepare, analyse, select_parent,
  log, block_end, mutate) answered by a scripted "Claude" through the real SDK;
- a run whose server stalls: every step falls back to the heuristic and the
  run still finishes;
- a spend limit crossed inside a step: the loop stops the run cleanly (no
  fallback; the step is rolled back and re-runs on resume).
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from agent.run import start_run
from rundir.store import Store
from tests.loop_helpers import toy_options

try:
    from tests.fake_anthropic import fake_anthropic, image_blocks, usage  # noqa: F401 (fixture)
except ImportError:
    from fake_anthropic import fake_anthropic, image_blocks, usage  # noqa: F401

MODEL = "claude-sonnet-4-6"


def _step_of(body: dict) -> str:
    return re.search(r"^# Step: (\w+)", body["messages"][0]["content"][0]["text"], re.M).group(1)


def scripted_claude(fake, u=None):
    """A responder that answers each step the way a model would, with valid tool calls."""

    def respond(body: dict) -> dict:
        msgs = body["messages"]
        prompt = msgs[0]["content"][0]["text"]
        step = _step_of(body)
        m = re.search(r"Slots [a-z ]+: ([0-9, ]+)\.", prompt)
        slots = [int(x) for x in m.group(1).split(",")] if m else []
        if step == "analyse" and len(msgs) == 1:  # look at a plot first
            return {"content": [{"type": "text", "text": "Looking at slot 0's loss curve."},
                                {"type": "tool_use", "id": fake.new_tool_id(), "name": "view_plot",
                                 "input": {"slot": 0, "name": "loss.png"}}],
                    "stop_reason": "tool_use", "usage": u or usage(2000, 50, 1500, 0)}
        if len(msgs) > 1 and not (step == "analyse" and len(msgs) == 3):  # results came back: end the step
            return {"content": [{"type": "text", "text": f"{step}: done."}], "stop_reason": "end_turn",
                    "usage": u or usage()}
        calls: list[tuple[str, dict]] = []
        if step == "prepare":
            calls = [("finish_mutation", {"slot": s, "mutation": "baseline (default config)", "strategy": "baseline",
                                          "parent_rule": "first batch: root"}) for s in slots]
        elif step == "analyse":
            calls = [("submit_analysis", {"slot": s, "visual": f"loss=good: claude saw slot {s}",
                                          "observation": f"claude observation {s}"}) for s in slots]
        elif step == "select_parent":
            top = re.search(r"^Node (\d+): UCB=", prompt, re.M)
            parent = int(top.group(1)) if top else "root"
            calls = [("choose_parent", {"slot": s, "parent": parent, "strategy": "exploit",
                                        "reason": "highest UCB"}) for s in slots]
        elif step == "log":
            calls = [("update_memory", {"section": "Emerging Observations", "text": "- claude e2e note",
                                        "mode": "append"})]
        elif step == "block_end":
            calls = [("update_memory", {"section": "Previous Block Summary", "text": "claude block summary",
                                        "mode": "replace"})]
        elif step == "mutate":
            for s in slots:
                calls.append(("set_config", {"slot": s, "changes": {"training.coeff_reg": 1.0 + s}}))
                calls.append(("finish_mutation", {"slot": s, "mutation": f"training.coeff_reg: 0 -> {1 + s}"}))
        blocks = [{"type": "text", "text": f"Claude at {step}."}]
        blocks += [{"type": "tool_use", "id": fake.new_tool_id(), "name": n, "input": i} for n, i in calls]
        return {"content": blocks, "stop_reason": "tool_use", "usage": u or usage(2000, 150, 1500, 0)}

    return respond


def test_claude_run_every_step_through_the_sdk(fake_anthropic, tmp_path):
    brain = scripted_claude(fake_anthropic)
    for _ in range(40):
        fake_anthropic.respond_with(brain)
    d = tmp_path / "run"
    start_run(toy_options(d, policy="claude", model=MODEL, iterations=4))

    nodes = Store(d / "nodes.jsonl").nodes()
    assert [n.id for n in nodes] == [1, 2, 3, 4]
    assert [n.visual for n in nodes] == [f"loss=good: claude saw slot {n.slot}" for n in nodes]
    assert [n.config["training"]["coeff_reg"] for n in nodes[2:]] == [1.0, 2.0]  # claude's mutations
    reqs = fake_anthropic.requests
    assert {_step_of(b) for b in reqs} == {"prepare", "analyse", "select_parent", "log", "block_end", "mutate"}
    for body in reqs:
        assert body["model"] == MODEL
        assert body["tools"] and all(t["name"] and t["input_schema"]["type"] == "object" for t in body["tools"])
        # ONE tools array and one system prompt for every step: the cached prefix is shared by the run
        assert body["tools"] == reqs[0]["tools"] and body["system"] == reqs[0]["system"]
        assert body["system"][0]["cache_control"]["type"] == "ephemeral"
        assert body["system"][-1]["cache_control"]["type"] == "ephemeral"
        assert "Toy" in body["system"][-1]["text"] or "toy" in body["system"][-1]["text"]
        if len(body["messages"]) > 1:  # every tool_use answered with its own id
            asked = [b["id"] for b in body["messages"][-2]["content"] if b["type"] == "tool_use"]
            answered = [b["tool_use_id"] for b in body["messages"][-1]["content"] if b["type"] == "tool_result"]
            assert answered == asked and asked
    analyse = [b for b in reqs if _step_of(b) == "analyse"]
    imgs = image_blocks(analyse[0]["messages"][0])
    assert len(imgs) == 2 and {i["source"]["media_type"] for i in imgs} == {"image/png"}  # loss.png of 2 slots
    # the view_plot tool's image went back inside its tool_result
    (plot_result,) = [b for b in analyse[1]["messages"][-1]["content"] if b["type"] == "tool_result"]
    (img,) = image_blocks(plot_result)
    png = (d / "iterations" / "iter_001" / "slot_00" / "plots" / "loss.png").read_bytes()
    assert base64.b64decode(img["source"]["data"]) == png and not plot_result.get("is_error")

    calls = [json.loads(x) for x in (d / "llm_calls.jsonl").read_text().splitlines()]
    assert calls[0]["step"] == "preflight" and calls[0]["ok"] and len(fake_anthropic.pings) == 1
    preflight_cost, calls = calls[0]["cost_usd"], calls[1:]
    assert len(calls) == len(reqs) and all(c["ok"] for c in calls)
    assert all(c["cache_creation_input_tokens"] in (0, 1500) and c["input_tokens"] > 0 for c in calls)
    status = json.loads((d / "status.json").read_text())
    assert status["fallback"] is False and status["phase"] == "done"
    assert status["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls) + preflight_cost)
    ps = status["policy_steps"]
    assert ps["total"] == ps["answered"] > 0 and ps["fallbacks"] == 0
    log = (d / "reasoning.log").read_text()
    assert "FALLBACK" not in log
    assert "[analyse] claude: Claude at analyse." in log and "[log] claude: log: done." in log
    memory = (d / "memory.md").read_text()
    assert "claude e2e note" in memory


def test_stalled_server_falls_back_to_heuristic_and_the_run_goes_on(fake_anthropic, tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_LLM_DEADLINE_S", "0.8")
    monkeypatch.setenv("GNN_AGENT_LLM_MAX_RETRIES", "1")
    fake_anthropic.error(500).otherwise("stall", seconds=30)
    d = tmp_path / "run"
    start_run(toy_options(d, policy="claude", model=MODEL, iterations=2))

    nodes = Store(d / "nodes.jsonl").nodes()
    assert [n.id for n in nodes] == [1, 2]
    assert all(n.visual.startswith("metrics-derived") for n in nodes)  # the heuristic answered
    log = (d / "reasoning.log").read_text()
    for step in ("prepare", "analyse", "select_parent", "log"):
        assert re.search(rf"\[{step}\] FALLBACK to heuristic: policy claude failed at {step}: LLMUnavailable: "
                         rf".* \(fault: (deadline|server_error)\)", log)
    status = json.loads((d / "status.json").read_text())
    assert status["fallback"] is True and "fallback to heuristic" in status["message"]
    ps = status["policy_steps"]  # every fallback counted, by fault class
    assert ps["answered"] == 0 and ps["fallbacks"] == ps["total"] == 4 and sum(ps["faults"].values()) == 4
    assert ps["last_fallback"]["step"] == "log" and "deadline" in ps["last_fallback"]["reason"]
    steps = [json.loads(x) for x in (d / "policy_steps.jsonl").read_text().splitlines()]
    assert [x["step"] for x in steps] == ["prepare", "analyse", "select_parent", "log"]
    assert all(x["answered_by"] == "heuristic" and x["fault"] in ("deadline", "server_error") for x in steps)
    calls = [json.loads(x) for x in (d / "llm_calls.jsonl").read_text().splitlines()]
    assert calls[0]["step"] == "preflight" and not calls[0]["ok"]  # the API was not answering: the run went on
    calls = calls[1:]
    assert len(calls) == 4 and not any(c["ok"] for c in calls)
    assert all("deadline" in c["error"] or "HTTP 500" in c["error"] for c in calls)
    from agent.report import write_report  # the report says how many steps Claude answered, and why not
    report = write_report(d).read_text()
    assert re.search(r"- Policy: 0 of 4 steps answered by claude; 4 fell back to heuristic \(\d+ (deadline|server_error)", report)


def test_spend_limit_stops_the_run_cleanly(fake_anthropic, tmp_path):
    # the first answer costs $1.50 and finishes only slot 0; the next call would exceed the $1 limit
    fake_anthropic.tool_use(("finish_mutation", {"slot": 0, "mutation": "baseline (default config)"}),
                            usage_=usage(10, 100_000))
    d = tmp_path / "run"
    start_run(toy_options(d, policy="claude", model=MODEL, iterations=4, max_cost_usd=1.0))

    assert len(fake_anthropic.requests) == 1  # nothing was sent past the limit
    status = json.loads((d / "status.json").read_text())
    assert status["phase"] == "stopped" and "cost limit reached" in status["message"]
    calls = [json.loads(x) for x in (d / "llm_calls.jsonl").read_text().splitlines()]
    assert [c["step"] for c in calls] == ["preflight", "prepare"]
    assert status["cost_usd"] == pytest.approx(1.5 + 10 * 3e-6 + calls[0]["cost_usd"])
    assert status["stopped_by"] == "cost_limit"
    assert Store(d / "nodes.jsonl").nodes() == []  # stopped before training anything
    log = (d / "reasoning.log").read_text()
    assert re.search(r"\[prepare\] cost limit reached: LLM spend \$1\.5002 \+ up to \$0\.\d+ for the next call "
                     r"\(<= \d+ input tokens, 4096 output\) would pass --max-cost-usd \$1\.0000", log)
    assert "FALLBACK" not in log  # a spend limit stops the run; it does not hand the step to the heuristic
