"""A thin client over the anthropic SDK (no LangChain): one Messages API call
with prompt caching, an overall deadline, cost accounting and a call log.

- Prompt caching: the stable prefix (tools, then the system prompt and the
  regime instructions) carries ``cache_control: {"type": "ephemeral"}`` on its
  last tool and its last system block; the last block of the conversation gets
  one too, so a multi-turn tool loop re-reads its own history from the cache.
- Deadline: the SDK retries (``max_retries``) and times out each attempt
  inside ONE overall deadline per call (``deadline_s``); when it passes, or the
  API keeps failing, `LLMUnavailable` is raised (the loop then falls back to
  the heuristic policy for that step).
- Cost: every call appends a record to ``llm_calls.jsonl`` (ts, step, model,
  the four usage fields, cost_usd, latency_s, stop_reason, ok/error). The
  running total includes earlier records of the same file (a resumed run keeps
  its spend). Once the total reaches ``max_cost_usd`` the next call raises
  `CostLimitReached` without calling the API: the loop stops the run cleanly.
- ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY`` are honoured: None arguments
  are never passed on to the SDK as explicit values.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from agent.policies.base import PolicyError

EPHEMERAL = {"type": "ephemeral"}


class LLMUnavailable(PolicyError):
    """The model did not answer within the call's deadline (after the SDK's
    retries), or the API refused the call. The loop falls back to the
    heuristic policy for the step."""


class CostLimitReached(RuntimeError):
    """The run's spend reached --max-cost-usd. Not a PolicyError on purpose:
    the loop must stop the run cleanly (resumable), not fall back."""


# ----- prices -----

class Price(BaseModel):
    """USD per million tokens. Cache writes (5-minute TTL) cost
    `cache_write_mult` x input, cache reads `cache_read_mult` x input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float
    output: float
    cache_write_mult: float = 1.25
    cache_read_mult: float = 0.10


#: model-name prefix -> price (longest matching prefix wins); public list prices per MTok
PRICES: dict[str, Price] = {
    "claude-opus-4-0": Price(input=15.0, output=75.0),
    "claude-opus-4-1": Price(input=15.0, output=75.0),
    "claude-opus-4-2025": Price(input=15.0, output=75.0),
    "claude-opus": Price(input=5.0, output=25.0),  # opus 4.5 and later
    "claude-sonnet": Price(input=3.0, output=15.0),
    "claude-3-5-haiku": Price(input=0.80, output=4.0),
    "claude-haiku": Price(input=1.0, output=5.0),
}
#: unknown model families are priced like the most expensive known one, so a
#: --max-cost-usd limit errs on the safe side; the call record says so
FALLBACK_PRICE = Price(input=15.0, output=75.0)


def price_for(model: str) -> tuple[Price, str | None]:
    """The price of `model` and a note when it is the fallback price."""
    best = None
    for prefix, price in PRICES.items():
        if model.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, price)
    if best is None:
        return FALLBACK_PRICE, (f"unknown model {model!r}: priced at the fallback "
                                f"${FALLBACK_PRICE.input:g}/${FALLBACK_PRICE.output:g} per MTok in/out")
    return best[1], None


def cost_usd(model: str, usage: dict) -> float:
    """USD cost of one call from its four usage fields."""
    p, _ = price_for(model)
    mtok = 1e-6
    return (usage.get("input_tokens", 0) * p.input
            + usage.get("cache_creation_input_tokens", 0) * p.input * p.cache_write_mult
            + usage.get("cache_read_input_tokens", 0) * p.input * p.cache_read_mult
            + usage.get("output_tokens", 0) * p.output) * mtok


# ----- the call record -----

class LLMCallRecord(BaseModel):
    """One line of llm_calls.jsonl."""

    model_config = ConfigDict(extra="forbid")

    ts: str
    step: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    latency_s: float
    attempts: int = 0  # HTTP attempts the SDK made (1 + retries)
    stop_reason: str | None = None
    ok: bool
    error: str | None = None
    price_note: str | None = None


class _Deadline:
    """SDK middleware: gives each HTTP attempt only the time left before the
    call's deadline, and stops retrying once it has passed."""

    def __init__(self, deadline: float, connect_s: float):
        self.deadline = deadline
        self.connect_s = connect_s
        self.attempts = 0

    def __call__(self, request, call_next):
        import httpx2

        left = self.deadline - time.monotonic()
        if left <= 0.05:
            # a plain exception: the SDK does not retry it
            raise _DeadlinePassed("deadline passed before the next attempt")
        self.attempts += 1
        timeout = httpx2.Timeout(left, connect=min(self.connect_s, left))
        return call_next(request.copy(timeout=timeout))


class _DeadlinePassed(Exception):
    pass


class LLMClient:
    """One Messages API client per run (see the module docstring).

    `api_key` / `base_url` None: the SDK reads ANTHROPIC_API_KEY /
    ANTHROPIC_BASE_URL. `log_path` None: no call log is written.
    """

    def __init__(self, model: str, api_key: str | None = None, base_url: str | None = None,
                 max_retries: int = 2, deadline_s: float = 120.0, max_cost_usd: float | None = None,
                 log_path: Path | None = None, max_tokens: int = 4096, connect_timeout_s: float = 5.0):
        import anthropic

        if not model:
            raise ValueError("LLMClient: model is empty")
        if deadline_s <= 0:
            raise ValueError(f"LLMClient: deadline_s must be > 0, got {deadline_s}")
        if max_retries < 0:
            raise ValueError(f"LLMClient: max_retries must be >= 0, got {max_retries}")
        if max_cost_usd is not None and max_cost_usd < 0:
            raise ValueError(f"LLMClient: max_cost_usd must be >= 0, got {max_cost_usd}")
        self.model = model
        self.max_retries = max_retries
        self.deadline_s = float(deadline_s)
        self.max_cost_usd = max_cost_usd
        self.max_tokens = max_tokens
        self.connect_timeout_s = connect_timeout_s
        self.log_path = Path(log_path) if log_path is not None else None
        kwargs: dict[str, Any] = {"max_retries": max_retries}
        # only explicit values: a None here would hide the environment's settings
        if api_key is not None:
            kwargs["api_key"] = api_key
        if base_url is not None:
            kwargs["base_url"] = base_url
        try:
            self._sdk = anthropic.Anthropic(**kwargs)
        except anthropic.AnthropicError as e:  # e.g. a named profile that does not exist
            raise LLMUnavailable(f"LLMClient: no Anthropic credentials: {_one_line(str(e))}") from e
        if self._sdk.api_key is None and self._sdk.auth_token is None and self._sdk.credentials is None:
            raise LLMUnavailable("LLMClient: no Anthropic credentials (set ANTHROPIC_API_KEY or pass api_key)")
        self._lock = threading.Lock()
        self.total_cost_usd = self._previous_cost()
        self.n_calls = 0
        self.last_record: LLMCallRecord | None = None

    @property
    def base_url(self) -> str:
        return str(self._sdk.base_url)

    @property
    def cost_exceeded(self) -> bool:
        return self.max_cost_usd is not None and self.total_cost_usd >= self.max_cost_usd

    def _previous_cost(self) -> float:
        if self.log_path is None or not self.log_path.exists():
            return 0.0
        total = 0.0
        for line in self.log_path.read_text().splitlines():
            try:
                total += float(json.loads(line).get("cost_usd", 0.0))
            except (ValueError, AttributeError):
                continue  # a torn last line of a killed run
        return total

    # ----- request building -----

    @staticmethod
    def build_request(system: str | list[str], tools: list[dict], messages: list[dict]) -> dict:
        """The cached request parts: system blocks, tools, messages, each with
        cache_control on its last block (copies; the inputs are not changed)."""
        texts = [system] if isinstance(system, str) else [s for s in system if s]
        sys_blocks = [{"type": "text", "text": t} for t in texts if t]
        if sys_blocks:
            sys_blocks[-1]["cache_control"] = dict(EPHEMERAL)
        tools_out = [dict(t) for t in tools]
        if tools_out:
            tools_out[-1]["cache_control"] = dict(EPHEMERAL)
        msgs = copy.deepcopy(messages)
        if msgs:
            last = msgs[-1]
            if isinstance(last.get("content"), str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            if last.get("content"):
                last["content"][-1]["cache_control"] = dict(EPHEMERAL)
        return {"system": sys_blocks, "tools": tools_out, "messages": msgs}

    # ----- the call -----

    def create(self, step: str, system: str | list[str], tools: list[dict], messages: list[dict],
               max_tokens: int | None = None) -> Any:
        """Send one Messages API request and return the SDK's `Message`.

        Raises `CostLimitReached` (before calling) when the spend limit is
        reached, `LLMUnavailable` when no answer came within `deadline_s`
        (SDK retries included) or the API refused the call.
        """
        import anthropic

        if self.cost_exceeded:
            raise CostLimitReached(f"LLM spend ${self.total_cost_usd:.4f} reached --max-cost-usd "
                                   f"${self.max_cost_usd:.4f}; stopping before step {step}")
        req = self.build_request(system, tools, messages)
        t0 = time.monotonic()
        guard = _Deadline(t0 + self.deadline_s, self.connect_timeout_s)
        client = self._sdk.with_middleware(guard)
        kwargs = dict(model=self.model, max_tokens=max_tokens or self.max_tokens, messages=req["messages"],
                      system=req["system"], timeout=self.deadline_s)
        if req["tools"]:
            kwargs["tools"] = req["tools"]
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["msg"] = client.messages.create(**kwargs)
            except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
                box["err"] = e
            finally:
                done.set()

        # the SDK sleeps between retries without looking at our deadline; a
        # worker thread lets the caller return at the deadline regardless
        worker = threading.Thread(target=work, name=f"llm-{step}", daemon=True)
        worker.start()
        finished = done.wait(self.deadline_s + 0.5)
        latency = time.monotonic() - t0
        if not finished:
            err = f"no answer within the {self.deadline_s:g}s deadline ({guard.attempts} attempt(s))"
            self._record(step, None, latency, guard.attempts, err)
            raise LLMUnavailable(f"LLM unavailable at step {step}: {err}")
        if "err" in box:
            e = box["err"]
            if isinstance(e, _DeadlinePassed) or isinstance(e, anthropic.APITimeoutError):
                err = f"no answer within the {self.deadline_s:g}s deadline ({guard.attempts} attempt(s))"
            elif isinstance(e, anthropic.APIStatusError):
                err = f"HTTP {e.status_code}: {_one_line(e.message)}"
            else:
                err = f"{type(e).__name__}: {_one_line(str(e))}"
            self._record(step, None, latency, guard.attempts, err)
            # any SDK error (HTTP, connection, missing credentials) means "no answer": fall back
            if isinstance(e, (_DeadlinePassed, anthropic.AnthropicError)):
                raise LLMUnavailable(f"LLM unavailable at step {step}: {err}") from e
            raise e
        msg = box["msg"]
        self._record(step, msg, latency, guard.attempts, None)
        return msg

    def _record(self, step: str, msg: Any, latency: float, attempts: int, error: str | None) -> LLMCallRecord:
        _, note = price_for(self.model)
        u = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}
        if msg is not None and getattr(msg, "usage", None) is not None:
            for k in u:
                u[k] = int(getattr(msg.usage, k, 0) or 0)
        c = cost_usd(self.model, u)
        with self._lock:
            self.total_cost_usd += c
            self.n_calls += 1
            rec = LLMCallRecord(
                ts=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), step=step, model=self.model,
                **u, cost_usd=round(c, 8), total_cost_usd=round(self.total_cost_usd, 8),
                latency_s=round(latency, 4), attempts=attempts,
                stop_reason=getattr(msg, "stop_reason", None) if msg is not None else None,
                ok=error is None, error=error, price_note=note)
            self.last_record = rec
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                with self.log_path.open("a") as f:
                    f.write(rec.model_dump_json() + "\n")
        return rec

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._sdk.close()


def _one_line(s: str, limit: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= limit else s[:limit] + "…"
