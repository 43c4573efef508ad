"""The Claude policy: answers each graph step through the step's tools with
Anthropic tool calling (DESIGN.md §9).

For one step: render prompts/steps/<step>.md with the StepContext, send it
with the cached prefix (the step's tool schemas, prompts/system.md and the
regime instructions) and, at the analyse step, the slots' plots as image
blocks; then loop: run every `tool_use` block through `tools.call`, answer
with `tool_result` blocks carrying the same `tool_use_id` (is_error for a
rejected call, with the tool's one-line reason; images from `view_plot` as
image blocks), until `tools.done()`. A model that stops without having made
the step's required calls is nudged once; a second stop, a refusal or the turn
limit raise `PolicyError` (the loop falls back to the heuristic for the step).
`LLMUnavailable` (deadline passed) propagates as is (also a PolicyError);
`CostLimitReached` propagates so the loop stops the run cleanly.

Every assistant text goes to reasoning.log through `tools.message`, which
also makes it the live view's latest message.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from agent.llm import LLMClient
from agent.policies.base import DEFAULT_MODEL, STEPS, Policy, PolicyError, StepContext
from prompts.render import PROMPTS_DIR, render_file

#: per-image size cap: the Messages API refuses images above ~5 MB of base64
MAX_IMAGE_BYTES = 3_500_000
#: the keys of a result dict rendered in this order (others follow, as JSON)
_RESULT_ORDER = ("slot", "node", "node_id", "parent", "status", "classification", "score", "degeneracy",
                 "strategy", "mutation", "parent_rule", "metrics", "config", "plots", "traceback_tail",
                 "traceback", "reason", "duration_s", "commit")
#: bookkeeping the model does not need (paths, timestamps)
_RESULT_HIDDEN = ("out_dir", "finished_at", "started_at")


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
                 api_key: str | None = None, base_url: str | None = None):
        if max_turns is not None and max_turns < 1:
            raise ValueError(f"ClaudePolicy: max_turns must be >= 1, got {max_turns}")
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
        self.system_prompt = (self.prompts_dir / "system.md").read_text()

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

    def system_blocks(self, ctx: StepContext) -> list[str]:
        """The cached prefix text: the system prompt, then the regime instructions."""
        blocks = [self.system_prompt]
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
            "step": ctx.step, "regime": ctx.regime_name, "block": ctx.block,
            "iter_in_block": ctx.iter_in_block, "n_iter_block": ctx.n_iter_block,
            "slots": ", ".join(str(s) for s in ctx.slots) or "(none)",
            "memory": ctx.memory.strip() or "(memory.md is empty)",
            "results": format_results(ctx.results or slot_briefs(ctx)),
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
            plots = r.get("plots") or []
            if isinstance(plots, (str, Path)):
                plots = [plots]
            for p in list(plots)[: self.plots_per_slot]:
                if n >= self.max_images:
                    return out
                path = _resolve(p, ctx.run_dir, r.get("out_dir"))
                block = _image_from_path(path) if path is not None else None
                label = f"Slot {r.get('slot', '?')}, node {r.get('node', r.get('node_id', '?'))}: {Path(str(p)).name}"
                if block is None:
                    out.append({"type": "text", "text": f"{label} — not attached (missing, not PNG, or too large)"})
                    continue
                out.append({"type": "text", "text": label})
                out.append(block)
                n += 1
        return out

    # ----- the step -----

    def act(self, ctx: StepContext, tools: Any) -> None:
        """Answer one step (see the module docstring)."""
        if ctx.step not in STEPS:
            raise PolicyError(f"claude: unknown step {ctx.step!r}")
        client = self.ensure_client(ctx.run_dir)
        system = self.system_blocks(ctx)
        schemas = tools.schemas()
        required = bool(tools.missing())
        user: list[dict] = [{"type": "text", "text": self.step_prompt(ctx, tools)}]
        user += self.step_images(ctx)
        messages: list[dict] = [{"role": "user", "content": user}]
        max_turns = self.max_turns or (6 + 3 * max(1, len(ctx.slots)))
        nudged = False
        for _turn in range(max_turns):
            msg = client.create(ctx.step, system, schemas, messages, max_tokens=self.max_tokens)
            blocks = [_block_dict(b) for b in msg.content]
            for b in blocks:
                if b.get("type") == "text" and b.get("text", "").strip():
                    tools.message(b["text"].strip())
            uses = [b for b in blocks if b.get("type") == "tool_use"]
            if msg.stop_reason == "refusal":
                raise PolicyError(f"claude refused at step {ctx.step}")
            # the API refuses empty text blocks in a request: do not echo them back
            echo = [b for b in blocks if not (b.get("type") == "text" and not b.get("text", "").strip())]
            messages.append({"role": "assistant", "content": echo or [{"type": "text", "text": "(no content)"}]})
            if not uses:
                if not (required and tools.missing()):
                    return  # the model ended a step that needs no more calls
                if nudged:
                    raise PolicyError(f"claude stopped at step {ctx.step} without calling "
                                      f"{', '.join(tools.missing())} (after one reminder)")
                nudged = True
                messages.append({"role": "user", "content": [{"type": "text", "text": _nudge(tools)}]})
                continue
            results = [self._run_tool(tools, u) for u in uses]
            if required and tools.done():
                return  # all required calls made; the remaining results need no answer
            content: list[dict] = list(results)
            if required and msg.stop_reason == "max_tokens":
                content.append({"type": "text", "text": "Your answer was cut at max_tokens; continue, briefly."})
            messages.append({"role": "user", "content": content})
        if required and tools.missing():
            raise PolicyError(f"claude used all {max_turns} turns of step {ctx.step} without calling "
                              f"{', '.join(tools.missing())}")
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
    and the parent's outcome (nodes.jsonl)."""
    if ctx.step not in ("prepare", "mutate"):
        return []
    import yaml

    run = Path(ctx.run_dir)
    nodes: dict[int, dict] = {}
    store = run / "nodes.jsonl"
    if store.exists():
        for line in store.read_text().splitlines():
            try:
                rec = json.loads(line)
                nodes[int(rec["id"])] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a torn line of a killed run
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
                brief["parent_outcome"] = (f"{parent.get('classification', '?')}, score {_num(parent.get('score'))}, "
                                           f"from mutation {parent.get('mutation') or 'n/a'}")
                if parent.get("metrics"):
                    brief["parent_metrics"] = ", ".join(f"{k}={_num(v)}" for k, v in parent["metrics"].items())
                if parent.get("observation"):
                    brief["parent_observation"] = parent["observation"]
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
            v = r[k]
            if v is None or v == "" or v == [] or v == {}:
                continue
            lines.append(_format_field(k, v))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _format_field(key: str, v: Any) -> str:
    if key == "metrics" and isinstance(v, dict):
        return "- metrics: " + ", ".join(f"{k}={_num(x)}" for k, x in v.items())
    if key == "degeneracy" and isinstance(v, dict):
        gap = v.get("gap")
        return f"- degeneracy: gap={_num(gap) if gap is not None else 'n/a'} ({v.get('diagnosis', 'n/a')})"
    if key == "config" and isinstance(v, dict):
        # the training section is the search space; the rest is frozen context
        sec = v.get("training", v)
        flat = ", ".join(f"{k}={_num(x)}" for k, x in _flatten(sec).items())
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
        return f"- {key}: {_num(v)}"
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


def _num(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e5):
        return f"{x:.3E}"
    return f"{x:.4g}"


def _nudge(tools: Any) -> str:
    return (f"You have not finished this step: you still must call {', '.join(tools.missing())}. "
            "Call it now (with a reason in its fields if you disagree).")


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


# ----- registration (agent.policies.registry imports this module lazily) -----

#: environment overrides of the per-call deadline and SDK retries (the CLI has no flags for them)
ENV_DEADLINE = "GNN_AGENT_LLM_DEADLINE_S"
ENV_RETRIES = "GNN_AGENT_LLM_MAX_RETRIES"


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
    """Registry factory: uses run_dir, model, max_cost_usd; the deadline and
    retries come from GNN_AGENT_LLM_DEADLINE_S / GNN_AGENT_LLM_MAX_RETRIES
    (defaults 120 s, 2). Other keyword arguments belong to other policies."""
    deadline = _env_number(ENV_DEADLINE, float, 120.0, 0.1)
    retries = _env_number(ENV_RETRIES, int, 2, 0)
    return ClaudePolicy(model=kw.get("model") or DEFAULT_MODEL, run_dir=kw.get("run_dir"),
                        max_cost_usd=kw.get("max_cost_usd"), deadline_s=deadline, max_retries=retries)


def _register() -> None:
    try:
        from agent.policies.registry import register_policy
    except ModuleNotFoundError as e:  # a checkout without the loop's registry: nothing to register in
        if e.name != "agent.policies.registry":
            raise
        return
    register_policy("claude", make_claude_policy)


_register()
