"""A scripted "Claude" that follows the prompts literally (for tests/fake_anthropic.py).

It reads only what the model would read — the step prompt, the system
prompt, the tool descriptions and the tool results — and does what they say,
with the examples they give:
- prepare: slot 0 keeps the default (`finish_mutation` "baseline"); every
  other slot makes the example change of the prompt (`set_config`), then, in
  the next turn, `finish_mutation` with the line `set_config` reported;
- analyse: one `submit_analysis` per slot (Visual in the "plot=good: ..." form);
- select_parent: `choose_parent` per slot: the top UCB node, or root;
- log: one `update_memory` of Emerging Observations, then one sentence;
- block_end: summary, Block Info `Focus: ...`, Hypothesis, Emerging
  Observations (the sections the prompt names), then one sentence;
- mutate: per slot one `set_config` of the example key (a new value inside
  its range), then `finish_mutation` with the reported line.

`LiteralClaude(fake).respond` is a `respond_with` callable; `arm(fake, n)`
queues it n times. Usage is left to the fake's cache model.
"""

from __future__ import annotations

import json
import re
from typing import Any

#: the tools each step's prompt names (the old per-step tool arrays, the new "Tools that act" line)
_STEP = re.compile(r"^# Step: (\w+)", re.M)
_SLOTS = re.compile(r"Slots [a-z ]+: ([0-9, ]+)\.")
_TOOLS_LINE = re.compile(r"^Tools that act at this step: (.+?) \(", re.M)
_EXAMPLE = re.compile(r"`set_config` with `(\{.+?\})`")
_REPORTED = re.compile(r"finish_mutation mutation: '([^']+)'")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


class LiteralClaude:
    def __init__(self, fake, default_key: str = "training.learning_rate", default_value: float = 0.002):
        self.fake = fake
        self.default_key = default_key
        self.default_value = default_value
        self.turns: list[tuple[str, list[str]]] = []  # (step, tool names called) per answer

    def arm(self, n: int = 200) -> "LiteralClaude":
        for _ in range(n):
            self.fake.respond_with(self.respond)
        return self

    # ----- reading the request -----

    def _example(self, body: dict) -> tuple[str, Any]:
        system = "\n".join(b.get("text", "") for b in body.get("system") or [])
        m = _EXAMPLE.search(system)
        if m:
            try:
                (key, value), = json.loads(m.group(1)).items()
                return key, value
            except (ValueError, TypeError):
                pass
        return self.default_key, self.default_value

    def respond(self, body: dict) -> dict:
        msgs = body["messages"]
        prompt = _text_of(msgs[0]["content"])
        step = _STEP.search(prompt).group(1)
        m = _SLOTS.search(prompt)
        slots = [int(x) for x in m.group(1).split(",")] if m else []
        if len(msgs) == 1:
            calls = self.first_turn(step, slots, prompt, body)
        else:
            calls = self.next_turn(step, msgs)
        if not calls:
            self.turns.append((step, []))
            return {"content": [{"type": "text", "text": f"{step}: done, memory and plans are up to date."}],
                    "stop_reason": "end_turn"}
        self.turns.append((step, [n for n, _ in calls]))
        blocks: list[dict] = [{"type": "text", "text": f"At {step}: {len(calls)} call(s)."}]
        blocks += [{"type": "tool_use", "id": self.fake.new_tool_id(), "name": n, "input": i} for n, i in calls]
        return {"content": blocks, "stop_reason": "tool_use"}

    # ----- the steps -----

    def first_turn(self, step: str, slots: list[int], prompt: str, body: dict) -> list[tuple[str, dict]]:
        key, value = self._example(body)
        if step == "prepare":
            calls: list[tuple[str, dict]] = [("finish_mutation", {"slot": 0, "mutation": "baseline",
                                                                   "strategy": "baseline",
                                                                   "parent_rule": "first batch: root"})]
            for s in slots[1:]:
                calls.append(("set_config", {"slot": s, "changes": {key: value}}))
            return calls
        if step == "analyse":
            return [("submit_analysis", {"slot": s, "visual": f"loss=good: slot {s} loss falls and flattens",
                                         "observation": f"slot {s}: the change shows in the metrics"})
                    for s in slots]
        if step == "select_parent":
            top = re.search(r"^Node (\d+): UCB=", prompt, re.M)
            parent = int(top.group(1)) if top else "root"
            return [("choose_parent", {"slot": s, "parent": parent, "strategy": "exploit" if s < 2 else "explore",
                                       "reason": "highest UCB" if top else "block start: root"}) for s in slots]
        if step == "log":
            return [("update_memory", {"section": "Emerging Observations", "mode": "append",
                                       "text": "- tentative: the learning rate moves fit_R2 (one batch)"})]
        if step == "block_end":
            return [("update_memory", {"section": "Previous Block Summary", "mode": "replace",
                                       "text": "Block 1 varied the learning rate; best node and verdict above."}),
                    ("update_memory", {"section": "Block Info", "mode": "replace",
                                       "text": "Focus: coeff_reg at the best learning rate"}),
                    ("update_memory", {"section": "Hypothesis", "mode": "replace",
                                       "text": "A small coeff_reg keeps fit_R2 while steadying training."}),
                    ("update_memory", {"section": "Emerging Observations", "mode": "replace",
                                       "text": "- none yet in this block"})]
        if step == "mutate":
            calls = []
            for s in slots:
                cur = _current(prompt, s, key)
                new = value if cur is None else _next_value(cur, s)
                calls.append(("set_config", {"slot": s, "changes": {key: new}}))
            return calls
        return []

    def next_turn(self, step: str, msgs: list[dict]) -> list[tuple[str, dict]]:
        """After tool results: finish the slots whose set_config was accepted; else end the turn."""
        if step not in ("prepare", "mutate"):
            return []
        asked = {b["id"]: b for b in msgs[-2]["content"] if b.get("type") == "tool_use"}
        calls = []
        for r in msgs[-1]["content"]:
            if r.get("type") != "tool_result" or r.get("is_error"):
                continue
            use = asked.get(r["tool_use_id"])
            if use is None or use["name"] != "set_config":
                continue
            m = _REPORTED.search(_text_of(r["content"]) if not isinstance(r["content"], str) else r["content"])
            if m:
                line = m.group(1)
            else:  # an older set_config that reports no line: write it from the change itself
                (k, v), = use["input"]["changes"].items()
                line = f"{k.split('.', 1)[1]}: ? -> {v}"
            calls.append(("finish_mutation", {"slot": use["input"]["slot"], "mutation": line,
                                              "strategy": "exploit", "hypothesis": "a step along the key"}))
        return calls


def _current(prompt: str, slot: int, key: str) -> float | None:
    """The slot's current value of `key` from the mutate prompt's config line."""
    name = key.split(".", 1)[1]
    part = prompt.split(f"### Slot {slot}", 1)
    if len(part) < 2:
        return None
    m = re.search(rf"\b{re.escape(name)}=([-0-9.eE+]+)", part[1].split("### Slot", 1)[0])
    return float(m.group(1)) if m else None


def _next_value(cur: float, slot: int) -> float:
    return float(f"{cur * (1.3 + 0.2 * slot):.3g}")
