"""A thin client over the anthropic SDK (no LangChain): one Messages API call
with prompt caching, an overall deadline, cost accounting and a call log.

- Prompt caching: the request is tools, system blocks, messages (the API's
  prefix order). The stable prefix is cached by a breakpoint on the system
  prompt block (tools + system prompt: the same for the whole run) and one on
  the last system block (+ the regime instructions: they change only when a
  block end edits them); both carry ``ttl`` "1h" when the caller asks for it
  (trainings longer than the 5-minute lifetime). The last message block gets
  a 5-minute breakpoint only when the caller says a later request of the same
  step will read it (`cache_messages`): an unread breakpoint costs a 1.25x write.
- Errors: the SDK retries what is retryable (429, 5xx, 529, timeouts,
  connection errors) inside ONE overall deadline per call (``deadline_s``);
  past it `LLMUnavailable` is raised with the fault class (the loop falls back
  to the heuristic for the step). A non-retryable answer (400, 401, 403, 404,
  413, 422) raises `LLMRefused`: the loop stops the run (resumable) with its
  one line, since every later call would be refused the same way.
- `preflight()`: a one-token call at run start, so a bad key, model or base
  URL is one line and exit 2 instead of a run of fallbacks.
- Cost: every call appends a record to ``llm_calls.jsonl`` (ts, step, model,
  the usage fields, cost_usd, latency_s, stop_reason, ok/error/fault). The
  running total includes earlier records of the same file (a resumed run keeps
  its spend). Before each call the worst case of that call (an upper bound of
  its input tokens, all written to the cache, plus max_tokens of output) is
  added to the spend; past ``max_cost_usd`` `CostLimitReached` is raised
  without calling the API, so the limit holds.
- ``ANTHROPIC_BASE_URL`` / ``ANTHROPIC_API_KEY`` are honoured: None arguments
  are never passed on to the SDK as explicit values.
"""

from __future__ import annotations

import copy
import json
import math
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from agent.policies.base import PolicyError

EPHEMERAL = {"type": "ephemeral"}
#: HTTP statuses that no retry or fallback can fix: the key, the model, the
#: permission or the request itself is wrong
REFUSED_STATUSES = (400, 401, 402, 403, 404, 422)
#: fault classes of a call that got no answer (status.json / the report count fallbacks by them);
#: too_large (HTTP 413): this step's request is too big (e.g. images) — the step falls back, the run goes on
Fault = Literal["deadline", "rate_limit", "overloaded", "server_error", "connection", "too_large", "refused"]


class LLMUnavailable(PolicyError):
    """The model did not answer within the call's deadline (after the SDK's
    retries of a retryable error). The loop falls back to the heuristic policy
    for the step. `fault`: deadline, rate_limit, overloaded, server_error, connection."""

    def __init__(self, message: str, fault: str = "deadline"):
        super().__init__(message)
        self.fault = fault


class LLMRefused(RuntimeError):
    """The API refused the call for a reason no retry fixes (bad key, unknown
    model, no permission, invalid request; or, at the preflight, an
    unreachable base URL). Not a PolicyError: the loop stops the run
    (resumable) with `str(self)`, one line naming the problem."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class CostLimitReached(RuntimeError):
    """The run's spend reached --max-cost-usd. Not a PolicyError on purpose:
    the loop must stop the run cleanly (resumable), not fall back."""


# ----- prices -----

class Price(BaseModel):
    """USD per million tokens. Cache writes cost `cache_write_mult` x input
    (5-minute TTL) or `cache_write_1h_mult` x input (1-hour TTL), cache reads
    `cache_read_mult` x input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input: float
    output: float
    cache_write_mult: float = 1.25
    cache_write_1h_mult: float = 2.0
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
    """USD cost of one call from its usage fields (`cache_creation_1h_input_tokens`:
    the part of the cache writes made with the 1-hour TTL)."""
    p, _ = price_for(model)
    mtok = 1e-6
    w1h = min(usage.get("cache_creation_1h_input_tokens", 0), usage.get("cache_creation_input_tokens", 0))
    w5m = usage.get("cache_creation_input_tokens", 0) - w1h
    return (usage.get("input_tokens", 0) * p.input
            + w5m * p.input * p.cache_write_mult + w1h * p.input * p.cache_write_1h_mult
            + usage.get("cache_read_input_tokens", 0) * p.input * p.cache_read_mult
            + usage.get("output_tokens", 0) * p.output) * mtok


def worst_case_usd(model: str, input_tokens: int, max_tokens: int, ttl_1h: bool = True) -> float:
    """The most one call can cost: every input token written to the cache (at
    the dearer TTL), plus `max_tokens` of output."""
    p, _ = price_for(model)
    mult = max(p.cache_write_mult, p.cache_write_1h_mult if ttl_1h else 0.0, 1.0)
    return (input_tokens * p.input * mult + max_tokens * p.output) * 1e-6


#: upper bound of the tokens of one image block (the API scales images to about 1.15 megapixels: ~1600 tokens)
IMAGE_TOKENS_MAX = 1600
#: characters per token assumed when bounding a request's size (real text averages about 4)
CHARS_PER_TOKEN_BOUND = 3.0


def estimate_input_tokens(request: dict) -> int:
    """An upper bound of a request's input tokens from its size: JSON text at
    3 characters per token (English and JSON average about 4), images at the
    API's per-image maximum. No API call (count_tokens would be one more
    round trip per call)."""
    images = 0

    def strip(x: Any) -> Any:
        nonlocal images
        if isinstance(x, dict):
            if x.get("type") == "image":
                images += 1
                return {"type": "image"}
            return {k: strip(v) for k, v in x.items()}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    text = json.dumps(strip({k: request.get(k) for k in ("system", "tools", "messages")}))
    return math.ceil(len(text) / CHARS_PER_TOKEN_BOUND) + images * IMAGE_TOKENS_MAX


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
    cache_creation_1h_input_tokens: int = 0
    cost_usd: float = 0.0
    total_cost_usd: float = 0.0
    latency_s: float
    attempts: int = 0  # HTTP attempts the SDK made (1 + retries)
    stop_reason: str | None = None
    ok: bool
    error: str | None = None
    fault: str | None = None  # deadline, rate_limit, overloaded, server_error, connection, refused
    price_note: str | None = None
    cache_ttl: str | None = None  # "1h" when the stable prefix was sent with the 1-hour TTL


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
            raise LLMRefused(f"Claude API: no Anthropic credentials: {_one_line(str(e))}") from e
        if self._sdk.api_key is None and self._sdk.auth_token is None and self._sdk.credentials is None:
            raise LLMRefused("Claude API: no Anthropic credentials (set ANTHROPIC_API_KEY or pass api_key)")
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
    def build_request(system: str | list[str], tools: list[dict], messages: list[dict],
                      prefix_ttl: str | None = None, cache_messages: bool = True) -> dict:
        """The cached request parts (copies; the inputs are not changed).

        Breakpoints: the first system block (tools + system prompt) and the
        last one (+ regime instructions), with `prefix_ttl` ("1h") when given;
        the last message block (5 minutes) when `cache_messages`."""
        texts = [system] if isinstance(system, str) else [s for s in system if s]
        sys_blocks = [{"type": "text", "text": t} for t in texts if t]
        cc = dict(EPHEMERAL, ttl=prefix_ttl) if prefix_ttl else dict(EPHEMERAL)
        if sys_blocks:
            sys_blocks[0]["cache_control"] = dict(cc)
            sys_blocks[-1]["cache_control"] = dict(cc)
        tools_out = [dict(t) for t in tools]
        if tools_out and not sys_blocks:  # nothing after the tools: cache them on their own
            tools_out[-1]["cache_control"] = dict(cc)
        msgs = copy.deepcopy(messages)
        if msgs and cache_messages:
            last = msgs[-1]
            if isinstance(last.get("content"), str):
                last["content"] = [{"type": "text", "text": last["content"]}]
            if last.get("content"):
                last["content"][-1]["cache_control"] = dict(EPHEMERAL)
        return {"system": sys_blocks, "tools": tools_out, "messages": msgs}

    def check_budget(self, step: str, request: dict, max_tokens: int) -> None:
        """Raise CostLimitReached when this call, at its worst, would take the
        spend past max_cost_usd."""
        if self.max_cost_usd is None:
            return
        est = estimate_input_tokens(request)
        worst = worst_case_usd(self.model, est, max_tokens)
        if self.total_cost_usd + worst > self.max_cost_usd:
            raise CostLimitReached(
                f"LLM spend ${self.total_cost_usd:.4f} + up to ${worst:.4f} for the next call "
                f"(<= {est} input tokens, {max_tokens} output) would pass --max-cost-usd "
                f"${self.max_cost_usd:.4f}; stopping before step {step}")

    # ----- the call -----

    def create(self, step: str, system: str | list[str], tools: list[dict], messages: list[dict],
               max_tokens: int | None = None, prefix_ttl: str | None = None, cache_messages: bool = True,
               deadline_s: float | None = None) -> Any:
        """Send one Messages API request and return the SDK's `Message`.

        Raises `CostLimitReached` (before calling) when the call could take the
        spend past the limit, `LLMUnavailable` when no answer came within the
        deadline (`deadline_s`, default the client's; SDK retries included),
        `LLMRefused` when the API refused it for good (400/401/403/404/...).
        """
        req = self.build_request(system, tools, messages, prefix_ttl=prefix_ttl, cache_messages=cache_messages)
        mt = max_tokens or self.max_tokens
        self.check_budget(step, req, mt)
        kwargs = dict(model=self.model, max_tokens=mt, messages=req["messages"], system=req["system"])
        if req["tools"]:
            kwargs["tools"] = req["tools"]
        return self._send(step, kwargs, deadline_s or self.deadline_s, prefix_ttl)

    def preflight(self, deadline_s: float = 30.0) -> LLMCallRecord | None:
        """A one-token call (about $0.00005) before the run starts.

        Raises `LLMRefused` with one line naming the key, the model, the
        permission or the base URL when the API refuses it or cannot be
        reached at all; returns the call record otherwise (ok False when the
        API was only temporarily unavailable: the run starts, its steps fall
        back while that lasts; None, without a call, when the spend limit
        leaves no room for it)."""
        kwargs = dict(model=self.model, max_tokens=1, messages=[{"role": "user", "content": "ping"}])
        if self.max_cost_usd is not None and self.total_cost_usd + worst_case_usd(self.model, 16, 1) > self.max_cost_usd:
            return None  # the limit is reached already: no call at all (the first step stops the run)
        try:
            self._send("preflight", kwargs, min(deadline_s, self.deadline_s), None, preflight=True)
        except LLMUnavailable:
            pass  # temporary: recorded; the caller says so
        return self.last_record

    def _send(self, step: str, kwargs: dict, deadline_s: float, ttl: str | None, preflight: bool = False) -> Any:
        import anthropic

        t0 = time.monotonic()
        guard = _Deadline(t0 + deadline_s, self.connect_timeout_s)
        client = self._sdk.with_middleware(guard)
        kwargs = dict(kwargs, timeout=deadline_s)
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
        finished = done.wait(deadline_s + 0.5)
        latency = time.monotonic() - t0
        if not finished or "err" in box:
            e = box.get("err")
            if e is not None and not isinstance(e, (_DeadlinePassed, anthropic.AnthropicError)):
                self._record(step, None, latency, guard.attempts, f"{type(e).__name__}: {_one_line(str(e))}",
                             "connection", ttl)
                raise e
            fault, err = self.classify(e, deadline_s, guard.attempts)
            self._record(step, None, latency, guard.attempts, err, fault, ttl)
            if fault == "refused" or (preflight and fault == "connection"):
                raise LLMRefused(self.refusal_line(e, err), getattr(e, "status_code", None)) from e
            raise LLMUnavailable(f"LLM unavailable at step {step}: {err}", fault) from e
        msg = box["msg"]
        self._record(step, msg, latency, guard.attempts, None, None, ttl)
        return msg

    @staticmethod
    def classify(e: BaseException | None, deadline_s: float, attempts: int) -> tuple[str, str]:
        """(fault class, one-line error) of a call that got no answer."""
        import anthropic

        if e is None or isinstance(e, (_DeadlinePassed, anthropic.APITimeoutError)):
            return "deadline", f"no answer within the {deadline_s:g}s deadline ({attempts} attempt(s))"
        if isinstance(e, anthropic.APIStatusError):
            code = e.status_code
            kind = getattr(e, "type", None) or ""
            text = _one_line(getattr(e, "api_message", None) or e.message)
            err = f"HTTP {code}{' ' + kind if kind else ''}: {text}"
            if code in REFUSED_STATUSES:
                return "refused", err
            if code == 413:
                return "too_large", err
            if code == 429:
                return "rate_limit", err
            if code == 529 or kind == "overloaded_error":
                return "overloaded", err
            return "server_error", err
        if isinstance(e, anthropic.APIConnectionError):
            cause = e.__cause__ or e.__context__
            why = f"{type(cause).__name__}: {_one_line(str(cause))}" if cause else _one_line(str(e))
            return "connection", f"APIConnectionError: {why}"
        return "refused", f"{type(e).__name__}: {_one_line(str(e))}"  # e.g. credentials the SDK cannot load

    def refusal_line(self, e: BaseException | None, err: str) -> str:
        """One line naming what is wrong (the key, the model, the permission, the URL)."""
        code = getattr(e, "status_code", None)
        if code == 401:
            return f"Claude API: the API key was rejected ({err}); check ANTHROPIC_API_KEY"
        if code == 403:
            return f"Claude API: the key may not use model {self.model} ({err}); check the key's permissions"
        if code == 404:
            what = f"model {self.model!r} does not exist" if "model" in err.lower() else f"not found at {self.base_url}"
            return f"Claude API: {what} ({err}); check --model and ANTHROPIC_BASE_URL"
        if code in (402,):
            return f"Claude API: billing ({err}); check the account's credit"
        if code is None:
            return f"Claude API unreachable at {self.base_url} ({err}); check ANTHROPIC_BASE_URL and the network"
        return f"Claude API refused the request ({err})"

    def _record(self, step: str, msg: Any, latency: float, attempts: int, error: str | None,
                fault: str | None = None, ttl: str | None = None) -> LLMCallRecord:
        _, note = price_for(self.model)
        u = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
             "cache_creation_1h_input_tokens": 0}
        if msg is not None and getattr(msg, "usage", None) is not None:
            for k in ("input_tokens", "output_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"):
                u[k] = int(getattr(msg.usage, k, 0) or 0)
            cc = getattr(msg.usage, "cache_creation", None)
            if cc is not None:
                u["cache_creation_1h_input_tokens"] = int(getattr(cc, "ephemeral_1h_input_tokens", 0) or 0)
        c = cost_usd(self.model, u)
        with self._lock:
            self.total_cost_usd += c
            self.n_calls += 1
            rec = LLMCallRecord(
                ts=datetime.now(timezone.utc).isoformat(timespec="milliseconds"), step=step, model=self.model,
                **u, cost_usd=round(c, 8), total_cost_usd=round(self.total_cost_usd, 8),
                latency_s=round(latency, 4), attempts=attempts,
                stop_reason=getattr(msg, "stop_reason", None) if msg is not None else None,
                ok=error is None, error=error, fault=fault, price_note=note, cache_ttl=ttl)
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
