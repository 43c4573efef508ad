"""The Claude policy: answers each graph step through the step's tools with
Anthropic tool calling (docs/contracts.md §5).

For one step: render prompts/steps/<step>.md with the StepContext, send it
after the cached prefix and, at the analyse step, the slots' plots as image
blocks; then loop: run every `tool_use` block through `tools.call`, answer
with `tool_result` blocks carrying the same `tool_use_id` (is_error for a
rejected call, with the tool's one-line reason; images from `view_plot` as
image blocks), until `tools.done()`.

The cached prefix is the same for every step of the run: ONE tools array
(every tool; which tools act at a step is checked when a tool is called, and
the step prompt names them), prompts/system.md (rendered once with examples
from the running regime) and the regime instructions. It is sent with the
1-hour cache TTL once the time between batches has been seen to exceed the
5-minute lifetime (``cache_ttl="auto"``). The last message block carries a
breakpoint only when a later request of the step will read it.

Limits per step: `max_turns` model turns and `max_step_s` seconds of wall
time (each call's deadline is cut to what is left); the same rejected call
made twice ends the step. A model that stops without having made the step's
required calls is nudged once. Each of these, and a refusal, raises
`StepFailed` (a PolicyError with a `fault`): the loop falls back to the
heuristic for the step and counts the fault. `LLMUnavailable` (retryable
errors past the deadline) is a PolicyError too; `LLMRefused` and
`CostLimitReached` propagate so the loop stops the run cleanly.

Every assistant text goes to reasoning.log through `tools.message`, which
also makes it the live view's latest message.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from agent.llm import LLMClient
from agent.policies.base import DEFAULT_MODEL, STEPS, Policy, PolicyError, StepContext
from prompts.render import PROMPTS_DIR, render, render_file
from regimes.base import format_value
from rundir.records import Mutation
from tools.base import DEFAULT_EXAMPLES  # placeholders when the tool box gives no regime examples (tests)

#: per-image size cap: the Messages API refuses images above ~5 MB of base64
MAX_IMAGE_BYTES = 3_500_000
#: the keys of a result dict rendered in this order (others follow, as JSON)
_RESULT_ORDER = ("slot", "node", "node_id", "parent", "status", "classification", "score", "degeneracy",
                 "strategy", "mutation", "parent_rule", "metrics", "config", "plots", "traceback_tail",
                 "traceback", "reason", "duration_s", "commit")
#: bookkeeping the model does not need (paths, timestamps)
_RESULT_HIDDEN = ("out_dir", "finished_at", "started_at")
#: time between two calls above which the 5-minute cache lifetime is lost (a margin below 300 s)
CACHE_5M_S = 270.0
#: steps whose first answer is usually final: the required call for every slot at once (prepare and
#: mutate are not: finish_mutation takes the line set_config reports, so they take two turns)
_ONE_SHOT_STEPS = ("analyse", "select_parent")


def _now() -> float:
    """The policy's clock (time between calls, step wall time); benchmarks move it with their fake API's."""
    return time.monotonic()


class StepFailed(PolicyError):
    """The model did not finish a step; `fault` names why (turn_limit,
    step_time, repeated_rejection, no_required_call, refusal)."""

    def __init__(self, message: str, fault: str):
        super().__init__(message)
        self.fault = fault


class ClaudePolicy(Policy):
    """Policy answering steps with Claude (anthropic SDK tool calling).

    `client`: an LLMClient to use (tests, or a run sharing one client); else one
    is made at the first step with the given model / deadline / retries / cost
    limit, logging to `<run_dir>/llm_calls.jsonl`.
    """

    name = "claude"

    def __init__(self, model: str = DEFAULT_MODEL, client: LLMClient | None = None,
                 run_dir: Path | None = None, max_cost_usd: float | None = None, deadline_s: float = 120.0,
                 max_retries: int = 2, max_tokens: int = 4096, max_turns: int | None = None,
                 prompts_dir: Path | None = None, max_images: int = 8, plots_per_slot: int = 2,
                 api_key: str | None = None, base_url: str | None = None, max_step_s: float = 300.0,
                 cache_ttl: str = "auto"):
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"ClaudePolicy: max_turns must be >= 1, got {max_turns}")
        if max_step_s <= 0:
            raise ValueError(f"ClaudePolicy: max_step_s must be > 0, got {max_step_s}")
        if cache_ttl not in ("auto", "5m", "1h"):
            raise ValueError(f"ClaudePolicy: cache_ttl must be auto, 5m or 1h, got {cache_ttl!r}")
        if max_images < 0 or plots_per_slot < 0:
            raise ValueError("ClaudePolicy: max_images and plots_per_slot must be >= 0")
        self.model = client.model if client is not None else model
        self.client = client
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self._client_kwargs = dict(api_key=api_key, base_url=base_url, max_retries=max_retries,
                                   deadline_s=deadline_s, max_cost_usd=max_cost_usd, max_tokens=max_tokens)
        self.max_tokens = max_tokens
        self.max_turns = max_turns
        self.prompts_dir = Path(prompts_dir) if prompts_dir is not None else PROMPTS_DIR
        self.max_images = max_images
        self.plots_per_slot = plots_per_slot
        self.system_template = (self.prompts_dir / "system.md").read_text()
        self.max_step_s = float(max_step_s)
        self.cache_ttl = cache_ttl
        self._long_gaps = cache_ttl == "1h"  # auto: set once a gap between calls passed the 5-minute lifetime
        self._last_call_t: float | None = None

    # ----- public helpers the loop may use -----

    @property
    def cost_usd(self) -> float:
        """The run's LLM spend so far (for status.json)."""
        return self.client.total_cost_usd if self.client is not None else 0.0

    def close(self) -> None:
        if self.client is not None:
            self.client.close()

    def ensure_client(self, run_dir: Path) -> LLMClient:
        """The LLMClient, created on first use with the run's call log."""
        if self.client is None:
            rd = self.run_dir or Path(run_dir)
            self.client = LLMClient(self.model, log_path=rd / "llm_calls.jsonl", **self._client_kwargs)
        return self.client

    def preflight(self, run_dir: Path):
        """One-token call before the run (LLMClient.preflight), logged to the run's
        call log: raises LLMRefused with one line on a bad key / model / base URL."""
        return self.ensure_client(run_dir).preflight()

    def system_blocks(self, ctx: StepContext, examples: dict | None = None) -> list[str]:
        """The cached prefix text: the system prompt (with the regime's examples), then the regime instructions."""
        blocks = [render(self.system_template, {**DEFAULT_EXAMPLES, **(examples or {})}, "system.md")]
        if ctx.instructions.strip():
            blocks.append(f"# Regime instructions: {ctx.regime_name}\n\n{ctx.instructions.strip()}\n")
        return blocks

    def step_prompt(self, ctx: StepContext, tools: Any) -> str:
        """prompts/steps/<step>.md rendered with the context."""
        missing = tools.missing() if hasattr(tools, "missing") else []
        finish = ", ".join(f"`{m}`" for m in missing) if missing else "no required call (reply without tool calls when finished)"
        code_rule = ("allowed now (only the editable functions/regions; one hypothesis per edit)."
                     if ctx.code_allowed else
                     f"not allowed now: {ctx.code_block_reason or 'the regime does not allow them at this step'}.")
        values = {
            **DEFAULT_EXAMPLES, **(tools.examples() if hasattr(tools, "examples") else {}),
            "step": ctx.step, "regime": ctx.regime_name, "block": ctx.block,
            "iter_in_block": ctx.iter_in_block, "n_iter_block": ctx.n_iter_block,
            "slots": ", ".join(str(s) for s in ctx.slots) or "(none)",
            "memory": ctx.memory.strip() or "(memory.md is empty)",
            "results": (format_block_nodes([n.model_dump() for n in ctx.block_nodes]) if ctx.step == "block_end"
                        else format_results([r.model_dump() for r in ctx.results] or slot_briefs(ctx))),
            "ucb": ctx.ucb.strip() or "(empty: start of a block — the parent is root)",
            "code_rule": code_rule, "finish": finish,
            "tools": ", ".join(t["name"] for t in tools.schemas()),
            "plots_note": ("The latest plots of each slot are attached after the results, labelled by slot."
                           if self.max_images and self.plots_per_slot else
                           "Plots are not attached; use view_plot."),
        }
        return render_file(f"steps/{ctx.step}.md", values, self.prompts_dir)

    def step_images(self, ctx: StepContext) -> list[dict]:
        """The analyse step's plots as labelled image blocks (capped)."""
        if ctx.step != "analyse" or not self.max_images or not self.plots_per_slot:
            return []
        out: list[dict] = []
        n = 0
        for r in ctx.results:
            for p in r.plots[: self.plots_per_slot]:
                if n >= self.max_images:
                    return out
                path = _resolve(p, ctx.run_dir, r.out_dir)
                block = _image_from_path(path) if path is not None else None
                label = f"Slot {r.slot}, node {r.node}: {Path(str(p)).name}"
                if block is None:
                    out.append({"type": "text", "text": f"{label} — not attached (missing, not PNG, or too large)"})
                    continue
                out.append({"type": "text", "text": label})
                out.append(block)
                n += 1
        return out

    # ----- the step -----

    def prefix_ttl(self, ctx: StepContext) -> str | None:
        """"1h" when the stable prefix must outlive the time between batches, else None (5 minutes)."""
        if self.cache_ttl == "5m":
            return None
        if not self._long_gaps and self.cache_ttl == "auto":
            if self._last_call_t is not None and _now() - self._last_call_t > CACHE_5M_S:
                self._long_gaps = True
            elif any(r.duration_s > CACHE_5M_S for r in ctx.results):
                self._long_gaps = True  # e.g. a resumed run: its trainings' durations tell
        return "1h" if self._long_gaps else None

    def act(self, ctx: StepContext, tools: Any) -> None:
        """Answer one step (see the module docstring)."""
        if ctx.step not in STEPS:
            raise PolicyError(f"claude: unknown step {ctx.step!r}")
        client = self.ensure_client(ctx.run_dir)
        system = self.system_blocks(ctx, tools.examples() if hasattr(tools, "examples") else None)
        # one tools array for every step: the cached prefix is shared by the whole run
        schemas = tools.all_schemas() if hasattr(tools, "all_schemas") else tools.schemas()
        required = bool(tools.missing())
        user: list[dict] = [{"type": "text", "text": self.step_prompt(ctx, tools)}]
        user += self.step_images(ctx)
        messages: list[dict] = [{"role": "user", "content": user}]
        max_turns = self.max_turns or (4 + 2 * max(1, len(ctx.slots)))
        t_end = _now() + self.max_step_s
        nudged = False
        rejected: dict[str, str] = {}  # canonical call -> its rejection (a repeat ends the step)
        for turn in range(max_turns):
            left = t_end - _now()
            if left <= 1.0:
                raise StepFailed(f"claude used the {self.max_step_s:g}s limit of step {ctx.step} "
                                 f"({turn} turns) without finishing it", "step_time")
            # a breakpoint on the last message pays off only if a later request of this step reads it
            cache_messages = not (required and turn == 0 and ctx.step in _ONE_SHOT_STEPS)
            ttl = self.prefix_ttl(ctx)
            msg = client.create(ctx.step, system, schemas, messages, max_tokens=self.max_tokens, prefix_ttl=ttl,
                                cache_messages=cache_messages, deadline_s=min(client.deadline_s, left))
            self._last_call_t = _now()
            blocks = [_block_dict(b) for b in msg.content]
            for b in blocks:
                if b.get("type") == "text" and b.get("text", "").strip():
                    tools.message(b["text"].strip())
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            if msg.stop_reason == "refusal":
                raise StepFailed(f"claude refused at step {ctx.step}", "refusal")
            # the API refuses empty text blocks in a request: do not echo them back
            echo = [b for b in blocks if not (b.get("type") == "text" and not b.get("text", "").strip())]
            messages.append({"role": "assistant", "content": echo or [{"type": "text", "text": "(no content)"}]})
            if not uses:
                if not (required and tools.missing()):
                    return  # the model ended a step that needs no more calls
                if nudged:
                    raise StepFailed(f"claude stopped at step {ctx.step} without calling "
                                     f"{', '.join(tools.missing())} (after one reminder)", "no_required_call")
                nudged = True
                messages.append({"role": "user", "content": [{"type": "text", "text": _nudge(tools)}]})
                continue
            results = []
            for u in uses:
                key = json.dumps([u.get("name"), u.get("input")], sort_keys=True, default=str)
                if key in rejected:
                    raise StepFailed(f"claude repeated a rejected call at step {ctx.step}: {u.get('name')} "
                                     f"({rejected[key]})", "repeated_rejection")
                res = self._run_tool(tools, u)
                if res.get("is_error"):
                    rejected[key] = str(res.get("content"))
                results.append(res)
            if required and tools.done():
                return  # all required calls made; the remaining results need no answer
            content: list[dict] = list(results)
            if required and msg.stop_reason == "max_tokens":
                content.append({"type": "text", "text": "Your answer was cut at max_tokens; continue, briefly."})
            messages.append({"role": "user", "content": content})
        if required and tools.missing():
            raise StepFailed(f"claude used all {max_turns} turns of step {ctx.step} without calling "
                             f"{', '.join(tools.missing())}", "turn_limit")
        tools.message(f"(step {ctx.step} ended at the {max_turns}-turn limit)")

    def _run_tool(self, tools: Any, use: dict) -> dict:
        inp = use.get("input")
        if not isinstance(inp, dict):
            inp = {}
        res = tools.call(use["name"], inp)
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": use["id"]}
        if not res.ok:
            block["content"] = res.error or f"{use['name']}: rejected"
            block["is_error"] = True
            return block
        block["content"] = _tool_content(res.content)
        return block


# ----- formatting -----

def slot_briefs(ctx: StepContext) -> list[dict]:
    """At prepare / mutate the loop passes no results: describe each slot from
    the run's files instead — its plan (plans/slot_SS.json: parent, strategy,
    parent rule), its next config (configs/slot_SS.yaml, already the parent's)
    and the parent's outcome (its node record, `ctx.nodes`)."""
    if ctx.step not in ("prepare", "mutate"):
        return []
    import yaml

    run = Path(ctx.run_dir)
    nodes = {n.id: n for n in ctx.nodes}
    out = []
    for s in ctx.slots:
        brief: dict[str, Any] = {"slot": s}
        plan_path = run / "plans" / f"slot_{s:02d}.json"
        if plan_path.exists():
            try:
                plan = json.loads(plan_path.read_text())
            except ValueError:
                plan = {}
            brief["parent"] = plan.get("parent")
            for k in ("strategy", "parent_rule", "reason"):
                if plan.get(k):
                    brief[k] = plan[k]
            parent = nodes.get(plan.get("parent")) if isinstance(plan.get("parent"), int) else None
            if parent is not None:
                brief["parent_outcome"] = (f"{parent.classification}, score {format_value(parent.score)}, "
                                           f"from mutation {parent.mutation.line() or 'n/a'}")
                if parent.metrics:
                    brief["parent_metrics"] = ", ".join(f"{k}={format_value(v)}" for k, v in parent.metrics.items())
                if parent.observation:
                    brief["parent_observation"] = parent.observation
        cfg_path = run / "configs" / f"slot_{s:02d}.yaml"
        if cfg_path.exists():
            try:
                cfg = yaml.safe_load(cfg_path.read_text())
            except yaml.YAMLError:
                cfg = None
            if isinstance(cfg, dict):
                brief["config"] = cfg
        out.append(brief)
    return out


def format_results(results: list[dict]) -> str:
    """The per-slot results as Markdown (every key shown; known keys first)."""
    if not results:
        return "(no results yet)"
    parts = []
    for r in results:
        head = f"### Slot {r.get('slot', '?')}"
        node = r.get("node", r.get("node_id"))
        if node is not None:
            head += f" — node {node}"
        if "parent" in r:
            head += f" (parent {r['parent'] if r['parent'] is not None else 'root'})"
        lines = [head]
        keys = [k for k in _RESULT_ORDER if k in r and k not in ("slot", "node", "node_id", "parent")]
        keys += [k for k in r if k not in _RESULT_ORDER and k not in _RESULT_HIDDEN]
        for k in keys:
            v = Mutation.of(r[k]).line() if k == "mutation" else r[k]  # the record as its one line
            if v is None or v == "" or v == [] or v == {}:
                continue
            lines.append(_format_field(k, v))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _format_field(key: str, v: Any) -> str:
    if key == "metrics" and isinstance(v, dict):
        return "- metrics: " + ", ".join(f"{k}={format_value(x)}" for k, x in v.items())
    if key == "degeneracy" and isinstance(v, dict):
        gap = v.get("gap")
        return f"- degeneracy: gap={format_value(gap) if gap is not None else 'n/a'} ({v.get('diagnosis', 'n/a')})"
    if key == "config" and isinstance(v, dict):
        # the training section is the search space; the rest is frozen context
        sec = v.get("training", v)
        flat = ", ".join(f"{k}={format_value(x)}" for k, x in _flatten(sec).items())
        extra = f"; claude: {json.dumps(v['claude'], default=str)}" if isinstance(v.get("claude"), dict) else ""
        return f"- config (training): {flat}{extra}"
    if key == "plots":
        items = [v] if isinstance(v, (str, Path)) else list(v)
        return "- plots: " + ", ".join(Path(str(p)).name for p in items)
    if key in ("traceback_tail", "traceback") and isinstance(v, str):
        tail = "\n".join(v.strip().splitlines()[-15:])
        return f"- {key}:\n```\n{tail}\n```"
    if key == "commit" and isinstance(v, str):
        return f"- commit: {v[:10]}"
    if isinstance(v, float):
        return f"- {key}: {format_value(v)}"
    if isinstance(v, (dict, list)):
        return f"- {key}: {json.dumps(v, default=str)[:800]}"
    return f"- {key}: {v}"


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _nudge(tools: Any) -> str:
    missing = tools.missing()
    them = "Call it now" if len(missing) == 1 else f"Make these {len(missing)} calls now"
    return (f"You have not finished this step: you still must call {', '.join(missing)}. "
            f"{them} (with a reason in their fields if you disagree).")


def format_block_nodes(nodes: list[dict]) -> str:
    """The block's nodes at block_end, one line each, the node id first."""
    if not nodes:
        return "(no nodes in this block)"
    lines = []
    for n in nodes:
        nid = n.get("id", n.get("node", "?"))
        parent = n.get("parent")
        score = n.get("score")
        lines.append(f"- node {nid} (slot {n.get('slot', '?')}, parent {'root' if parent is None else parent}): "
                     f"{n.get('strategy') or '-'}, {Mutation.of(n.get('mutation')).line() or '-'} -> "
                     f"{n.get('classification') or n.get('status') or '?'}, score {format_value(score) if score is not None else 'n/a'}"
                     + (f"; {n['observation']}" if n.get("observation") else ""))
    return "\n".join(lines)


def _block_dict(b: Any) -> dict:
    """An SDK content block as a request-ready dict (None fields dropped)."""
    if isinstance(b, dict):
        return b
    d = b.model_dump(mode="json", exclude_none=True)
    # the API accepts back only the fields it defines for the block type
    if d.get("type") == "text":
        return {"type": "text", "text": d.get("text", "")}
    if d.get("type") == "tool_use":
        return {"type": "tool_use", "id": d["id"], "name": d["name"], "input": d.get("input") or {}}
    return d


def _tool_content(content: Any) -> str | list[dict]:
    """A ToolResult content as tool_result content (text, or text + image blocks)."""
    if isinstance(content, str):
        return content if content.strip() else "ok"
    blocks: list[dict] = []
    for item in content or []:
        if isinstance(item, str):
            blocks.append({"type": "text", "text": item or " "})
        elif isinstance(item, dict) and item.get("type") == "image":
            img = _image_block(item)
            blocks.append(img if img is not None else
                          {"type": "text", "text": f"(image {item.get('path', '')} could not be attached)"})
        elif isinstance(item, dict) and item.get("type") == "text":
            blocks.append({"type": "text", "text": item.get("text") or " "})
        else:
            blocks.append({"type": "text", "text": json.dumps(item, default=str)})
    return blocks or "ok"


def _image_block(item: dict) -> dict | None:
    """{"type": "image", "path"?, "media_type"?, "data"?} -> an API image block."""
    if isinstance(item.get("source"), dict):
        return {"type": "image", "source": item["source"]}
    media = item.get("media_type") or "image/png"
    data = item.get("data")
    if isinstance(data, (bytes, bytearray)):
        data = base64.b64encode(bytes(data)).decode()
    if not data and item.get("path"):
        return _image_from_path(Path(item["path"]), media)
    if not data or len(data) > MAX_IMAGE_BYTES * 4 // 3:
        return None
    return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}


def _image_from_path(path: Path, media: str | None = None) -> dict | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if len(raw) > MAX_IMAGE_BYTES:
        return None
    if media is None:
        if raw[:8] == b"\x89PNG\r\n\x1a\n":
            media = "image/png"
        elif raw[:3] == b"\xff\xd8\xff":
            media = "image/jpeg"
        else:
            return None
    return {"type": "image", "source": {"type": "base64", "media_type": media,
                                        "data": base64.b64encode(raw).decode()}}


def _resolve(p: Any, run_dir: Path, out_dir: Any) -> Path | None:
    path = Path(str(p))
    if path.is_absolute():
        return path
    for base in ([Path(str(out_dir))] if out_dir else []) + [Path(run_dir)]:
        cand = base / path
        if cand.exists():
            return cand
    return None


#: (model, base URL, key) -> the answered preflight of this process: `agent run` checks before its slow
#: imports, start_run then reuses the answer (one call, logged once in the run's llm_calls.jsonl)
_PREFLIGHT_OK: dict[tuple, Any] = {}


def preflight(model: str, **client_kw):
    """A one-token call with a client of its own, before a run directory exists
    (`agent run`): raises LLMRefused with one line naming a bad key, model or
    base URL; returns the LLMCallRecord (its cost belongs in the run's call log)."""
    deadline = _env_number(ENV_DEADLINE, float, 120.0, 0.1)
    retries = _env_number(ENV_RETRIES, int, 2, 0)
    client = LLMClient(model, max_retries=min(retries, 1), deadline_s=deadline, **client_kw)
    key = (model, client.base_url, client._sdk.api_key or client._sdk.auth_token)
    try:
        cached = _PREFLIGHT_OK.pop(key, None)
        if cached is not None and time.monotonic() - cached[0] < 60.0:  # the same command's own check
            return cached[1]
        rec = client.preflight()
        if rec is not None and rec.ok:
            _PREFLIGHT_OK[key] = (time.monotonic(), rec)
        return rec
    finally:
        client.close()


# ----- registration (agent.policies.registry imports this module lazily) -----

#: environment overrides of the per-call deadline and SDK retries (the CLI has no flags for them)
ENV_DEADLINE = "GNN_AGENT_LLM_DEADLINE_S"
ENV_RETRIES = "GNN_AGENT_LLM_MAX_RETRIES"
ENV_STEP_S = "GNN_AGENT_LLM_STEP_S"


def _env_number(name: str, cast, default, minimum):
    import os

    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: not a number") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r}: must be >= {minimum}")
    return value


def make_claude_policy(**kw) -> ClaudePolicy:
    """Registry factory: uses run_dir, model, max_cost_usd; the per-call
    deadline, SDK retries and per-step wall time come from
    GNN_AGENT_LLM_DEADLINE_S / GNN_AGENT_LLM_MAX_RETRIES / GNN_AGENT_LLM_STEP_S
    (defaults 120 s, 2, 300 s). Other keyword arguments belong to other policies."""
    deadline = _env_number(ENV_DEADLINE, float, 120.0, 0.1)
    retries = _env_number(ENV_RETRIES, int, 2, 0)
    step_s = _env_number(ENV_STEP_S, float, 300.0, 0.1)
    return ClaudePolicy(model=kw.get("model") or DEFAULT_MODEL, run_dir=kw.get("run_dir"),
                        max_cost_usd=kw.get("max_cost_usd"), deadline_s=deadline, max_retries=retries,
                        max_step_s=step_s)


def _register() -> None:
    try:
        from agent.policies.registry import register_policy
    except ModuleNotFoundError as e:  # a checkout without the loop's registry: nothing to register in
        if e.name != "agent.policies.registry":
            raise
        return
    register_policy("claude", make_claude_policy)


_register()
