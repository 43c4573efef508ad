"""A fake Anthropic Messages API server for tests (loopback only).

It speaks enough of `POST /v1/messages` for the real anthropic SDK: every
request body (and its headers) is recorded, and each request is answered by
the next entry of a scripted queue:

- a message (`reply`, `tool_use`, `text`): content blocks, stop_reason, usage
  (the four usage fields, cache fields included);
- an HTTP error (`error(status)`), e.g. 500 (the SDK retries it);
- a stall (`stall(seconds)`): the handler sleeps (longer than the client's
  timeout) and closes the connection without an answer;
- a callable `fn(body) -> dict` building the message from the request (its
  usage, when it gives none, is computed as below).

When the queue is empty the `otherwise` action answers (default: HTTP 400
"script exhausted", which the SDK does not retry, so a test that sends more
requests than it scripted fails fast and says why).

Like the real API it also checks, before the script: the key (`keys`; a
wrong one gets HTTP 401 authentication_error) and the model (`models`; an
unknown one gets HTTP 404 not_found_error "model: NAME"). A one-token
request (`max_tokens == 1`, the client's preflight) is answered by itself and
recorded in `pings`, not `requests`, unless a scripted error or stall is due.

Usage: a scripted message with explicit usage returns it as is; otherwise the
server computes it the way the Messages API does (`cache=True`):
- tokens: about 4 characters of a block's JSON per token (cache_control
  left out), PNG images w*h/750 (at most 1600), the output likewise;
- the prompt is the sequence tools, system blocks, message blocks; a
  `cache_control` breakpoint caches the prefix up to and including its block
  (only when that prefix has at least `min_cache_tokens`), for its `ttl`
  ("5m" default or "1h"); a request reads the longest cached prefix that ends
  at a breakpoint or at most 20 blocks before one (the API's look-back),
  and a read refreshes the entry's lifetime;
- cache_read_input_tokens = that prefix; cache_creation_input_tokens = the
  tokens from there to the last cacheable breakpoint (split by TTL in
  usage.cache_creation); input_tokens = the rest.
The cache clock is `time.monotonic()` plus `advance(seconds)`, so a test can
let "trainings" last longer than the 5-minute lifetime without waiting.

Bounded: binds 127.0.0.1 on a random free port, daemon handler threads,
stalls wake up when the server stops; the `fake_anthropic` fixture stops it at
teardown and points the SDK at it through ANTHROPIC_BASE_URL /
ANTHROPIC_API_KEY=test-key (monkeypatch).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import math
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import pytest


@dataclass
class _Action:
    kind: str  # "message" | "error" | "stall" | "fn"
    message: dict | None = None
    status: int = 500
    seconds: float = 0.0
    fn: Callable[[dict], dict] | None = None
    headers: dict = field(default_factory=dict)


#: models the fake knows (others get HTTP 404, like the real API)
KNOWN_MODELS = frozenset({"claude-sonnet-4-6", "claude-sonnet-4-5", "claude-opus-4-5", "claude-opus-4-1",
                          "claude-opus-4-1-20250805", "claude-haiku-4-5"})
TTL_S = {"5m": 300.0, "1h": 3600.0}
LOOKBACK_BLOCKS = 20


def usage(input_tokens: int = 100, output_tokens: int = 20, cache_creation: int = 0, cache_read: int = 0) -> dict:
    """A Messages API usage object with the four token fields."""
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_creation, "cache_read_input_tokens": cache_read}


class FakeAnthropic:
    """Threaded HTTP server answering POST /v1/messages from a scripted queue."""

    def __init__(self, keys: tuple[str, ...] | None = ("test-key",), models: frozenset[str] | None = KNOWN_MODELS,
                 cache: bool = True, min_cache_tokens: int = 1024) -> None:
        self.requests: list[dict] = []  # parsed JSON bodies, in arrival order
        self.headers: list[dict] = []  # request headers, same order
        self.pings: list[dict] = []  # one-token requests answered by the server itself
        self.usages: list[dict] = []  # the usage answered to each of `requests`
        self.keys = keys
        self.models = models
        self.cache = cache
        self.min_cache_tokens = min_cache_tokens
        self._cache: dict[str, tuple[float, str]] = {}  # prefix hash -> (expires at, ttl)
        self._offset = 0.0
        self._queue: deque[_Action] = deque()
        self._otherwise = _Action("error", status=400)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ids = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ----- lifecycle -----

    def start(self) -> "FakeAnthropic":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):  # noqa: N802 (http.server API)
                fake._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-anthropic",
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; stalled handlers wake up and drop their connection."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ----- scripting -----

    def reply(self, content: list[dict], stop_reason: str = "end_turn", usage_: dict | None = None) -> "FakeAnthropic":
        """Queue a message with these content blocks (tool_use blocks get ids if they have none)."""
        blocks = []
        for b in content:
            b = dict(b)
            if b.get("type") == "tool_use" and "id" not in b:
                b["id"] = self.new_tool_id()
            blocks.append(b)
        msg = {"content": blocks, "stop_reason": stop_reason, "usage": usage_}  # None: computed
        with self._lock:
            self._queue.append(_Action("message", message=msg))
        return self

    def text(self, text: str, stop_reason: str = "end_turn", usage_: dict | None = None) -> "FakeAnthropic":
        """Queue a text-only answer."""
        return self.reply([{"type": "text", "text": text}], stop_reason, usage_)

    def tool_use(self, *calls: tuple[str, dict], text: str | None = None, usage_: dict | None = None,
                 ids: list[str] | None = None) -> "FakeAnthropic":
        """Queue one answer calling the given tools `(name, input)` in order (stop_reason tool_use)."""
        blocks: list[dict] = [{"type": "text", "text": text}] if text else []
        for i, (name, inp) in enumerate(calls):
            tid = ids[i] if ids else self.new_tool_id()
            blocks.append({"type": "tool_use", "id": tid, "name": name, "input": inp})
        return self.reply(blocks, "tool_use", usage_)

    def error(self, status: int = 500, times: int = 1) -> "FakeAnthropic":
        """Queue `times` HTTP error answers with an API error body."""
        with self._lock:
            for _ in range(times):
                self._queue.append(_Action("error", status=status))
        return self

    def stall(self, seconds: float = 30.0, times: int = 1) -> "FakeAnthropic":
        """Queue `times` requests that get no answer for `seconds` (then the connection closes)."""
        with self._lock:
            for _ in range(times):
                self._queue.append(_Action("stall", seconds=seconds))
        return self

    def respond_with(self, fn: Callable[[dict], dict]) -> "FakeAnthropic":
        """Queue a callable: fn(request_body) -> {content, stop_reason, usage}."""
        with self._lock:
            self._queue.append(_Action("fn", fn=fn))
        return self

    def otherwise(self, kind: str, status: int = 500, seconds: float = 30.0) -> "FakeAnthropic":
        """What to do once the queue is empty: 'error' (HTTP status) or 'stall'."""
        if kind not in ("error", "stall"):
            raise ValueError(f"otherwise: kind must be 'error' or 'stall', got {kind!r}")
        self._otherwise = _Action(kind, status=status, seconds=seconds)
        return self

    def advance(self, seconds: float) -> None:
        """Move the cache clock forward (cache entries expire as if `seconds` had passed)."""
        with self._lock:
            self._offset += seconds

    def now(self) -> float:
        return time.monotonic() + self._offset

    def pending(self) -> int:
        """Scripted answers not yet consumed."""
        with self._lock:
            return len(self._queue)

    def new_tool_id(self) -> str:
        return f"toolu_fake_{next(self._ids):04d}"

    # ----- serving -----

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("content-length") or 0)
        raw = h.rfile.read(n) if n else b""
        try:
            body = json.loads(raw or b"{}")
        except json.JSONDecodeError:
            self._send(h, 400, _err("invalid_request_error", "fake_anthropic: body is not JSON"))
            return
        if h.path.split("?")[0] != "/v1/messages":
            self._send(h, 404, _err("not_found_error", f"fake_anthropic: no route {h.path}"))
            return
        headers = {k.lower(): v for k, v in h.headers.items()}
        key = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        if self.keys is not None and key not in self.keys:
            self._send(h, 401, _err("authentication_error", "invalid x-api-key"), {"x-should-retry": "false"})
            return
        if self.models is not None and body.get("model") not in self.models:
            self._send(h, 404, _err("not_found_error", f"model: {body.get('model')}"), {"x-should-retry": "false"})
            return
        ping = body.get("max_tokens") == 1
        with self._lock:
            head = self._queue[0] if self._queue else None
            if ping and not (head is not None and head.kind in ("error", "stall")) and not (
                    head is None and (self._otherwise.kind == "stall" or self._otherwise.status != 400)):
                self.pings.append(body)
                action = _Action("message", message={"content": [{"type": "text", "text": "o"}],
                                                     "stop_reason": "max_tokens"})
            else:
                (self.pings if ping else self.requests).append(body)
                if not ping:
                    self.headers.append(headers)
                action = self._queue.popleft() if self._queue else None
        if action is None:
            action = self._otherwise
            if action.kind == "error" and action.status == 400:
                self._send(h, 400, _err("invalid_request_error",
                                        f"fake_anthropic: script exhausted at request {len(self.requests)}"),
                           {"x-should-retry": "false"})
                return
        if action.kind == "stall":
            self._stop.wait(action.seconds)
            h.close_connection = True
            return
        if action.kind == "error":
            self._send(h, action.status, _err(ERROR_TYPES.get(action.status, "api_error" if action.status >= 500
                                                              else "invalid_request_error"),
                                              f"fake_anthropic: scripted HTTP {action.status}"))
            return
        msg = action.fn(body) if action.kind == "fn" else action.message
        u = msg.get("usage") or self._usage(body, msg["content"])
        if not ping:
            with self._lock:
                self.usages.append(u)
        out = {
            "id": f"msg_fake_{len(self.requests):04d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": msg["content"],
            "stop_reason": msg.get("stop_reason", "end_turn"),
            "stop_sequence": None,
            "usage": u,
        }
        self._send(h, 200, out)

    # ----- the cache model (see the module docstring) -----

    def _usage(self, body: dict, content: list[dict]) -> dict:
        blocks = prompt_blocks(body)
        toks = [block_tokens(b) for b in blocks]
        cum = list(itertools.accumulate(toks))
        total = cum[-1] if cum else 0
        out_tokens = max(1, math.ceil(len(json.dumps(content)) / 4))
        if not self.cache:
            return usage(total, out_tokens)
        hashes, h = [], hashlib.sha256(str(body.get("model")).encode())
        for b in blocks:
            h = h.copy()
            h.update(json.dumps(_strip_cc(b), sort_keys=True).encode())
            hashes.append(h.hexdigest())
        bps = [(i, (b.get("cache_control") or {}).get("ttl", "5m")) for i, b in enumerate(blocks)
               if isinstance(b.get("cache_control"), dict)]
        now = self.now()
        with self._lock:
            hit = -1
            for b, _ in bps:  # the longest live prefix at a breakpoint or within the look-back before one
                for j in range(b, max(-1, b - LOOKBACK_BLOCKS - 1), -1):
                    e = self._cache.get(hashes[j])
                    if e is not None and e[0] > now:
                        hit = max(hit, j)
                        break
            read = cum[hit] if hit >= 0 else 0
            if hit >= 0:
                ttl = self._cache[hashes[hit]][1]
                self._cache[hashes[hit]] = (now + TTL_S[ttl], ttl)
            created = {"5m": 0, "1h": 0}
            start = read
            for b, ttl in bps:
                if b <= hit or cum[b] < self.min_cache_tokens:
                    continue
                self._cache[hashes[b]] = (now + TTL_S.get(ttl, 300.0), ttl)
                created[ttl] = created.get(ttl, 0) + cum[b] - start
                start = cum[b]
        write = sum(created.values())
        u = usage(total - read - write, out_tokens, write, read)
        u["cache_creation"] = {"ephemeral_5m_input_tokens": created["5m"], "ephemeral_1h_input_tokens": created["1h"]}
        return u

    def _send(self, h: BaseHTTPRequestHandler, status: int, obj: dict, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            h.send_header("request-id", f"req_fake_{len(self.requests)}")
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): nothing to do
            pass


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 413: "request_too_large", 429: "rate_limit_error", 500: "api_error",
               529: "overloaded_error"}


def prompt_blocks(body: dict) -> list[dict]:
    """The prompt as the API caches it: tools, then system blocks, then every message block."""
    out = [dict(t) for t in body.get("tools") or []]
    system = body.get("system")
    if isinstance(system, str):
        out.append({"type": "text", "text": system})
    else:
        out += [dict(b) for b in system or []]
    for m in body.get("messages") or []:
        c = m.get("content")
        if isinstance(c, str):
            out.append({"type": "text", "text": c, "role": m.get("role")})
        else:
            out += [dict(b, role=m.get("role")) for b in c or []]
    return out


def _strip_cc(obj):
    if isinstance(obj, dict):
        return {k: _strip_cc(v) for k, v in obj.items() if k != "cache_control"}
    if isinstance(obj, list):
        return [_strip_cc(v) for v in obj]
    return obj


def block_tokens(block: dict) -> int:
    """About 4 characters per token; images by their pixel count (PNG), like the API's w*h/750."""
    images = []

    def strip_images(x):
        if isinstance(x, dict):
            if x.get("type") == "image":
                images.append(x)
                return {"type": "image"}
            return {k: strip_images(v) for k, v in x.items() if k != "cache_control"}
        if isinstance(x, list):
            return [strip_images(v) for v in x]
        return x

    text = json.dumps(strip_images(block))
    n = math.ceil(len(text) / 4)
    for img in images:
        n += _image_tokens(img)
    return n


def _image_tokens(img: dict) -> int:
    try:
        raw = base64.b64decode(img["source"]["data"][:64])
        if raw[:8] == b"\x89PNG\r\n\x1a\n":
            w, h = struct.unpack(">II", raw[16:24])
            return max(1, min(1600, math.ceil(w * h / 750)))
    except (KeyError, TypeError, ValueError, struct.error):
        pass
    return 1600


def _err(etype: str, message: str) -> dict:
    return {"type": "error", "error": {"type": etype, "message": message}}


# ----- request inspection helpers -----

def tool_results(body: dict) -> list[dict]:
    """The tool_result blocks of the last user message of a recorded request."""
    last = body["messages"][-1]
    content = last["content"] if isinstance(last["content"], list) else []
    return [b for b in content if b.get("type") == "tool_result"]


def image_blocks(obj: Any) -> list[dict]:
    """Every image block anywhere inside a recorded request (messages, tool results)."""
    found: list[dict] = []

    def walk(x: Any) -> None:
        if isinstance(x, dict):
            if x.get("type") == "image":
                found.append(x)
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(obj)
    return found


@pytest.fixture
def fake_anthropic(monkeypatch):
    """A started FakeAnthropic; the SDK reaches it through ANTHROPIC_BASE_URL (key: test-key)."""
    server = FakeAnthropic().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    try:
        yield server
    finally:
        server.stop()
