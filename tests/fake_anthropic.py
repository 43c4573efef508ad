"""A fake Anthropic Messages API server for tests (loopback only).

It speaks enough of `POST /v1/messages` for the real anthropic SDK: every
request body (and its headers) is recorded, and each request is answered by
the next entry of a scripted queue:

- a message (`reply`, `tool_use`, `text`): content blocks, stop_reason, usage
  (the four usage fields, cache fields included);
- an HTTP error (`error(status)`), e.g. 500 (the SDK retries it);
- a stall (`stall(seconds)`): the handler sleeps (longer than the client's
  timeout) and closes the connection without an answer;
- a callable `fn(body) -> dict` building the message from the request.

When the queue is empty the `otherwise` action answers (default: HTTP 400
"script exhausted", which the SDK does not retry, so a test that sends more
requests than it scripted fails fast and says why).

Bounded: binds 127.0.0.1 on a random free port, daemon handler threads,
stalls wake up when the server stops; the `fake_anthropic` fixture stops it at
teardown and points the SDK at it through ANTHROPIC_BASE_URL /
ANTHROPIC_API_KEY=test-key (monkeypatch).
"""

from __future__ import annotations

import itertools
import json
import threading
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


def usage(input_tokens: int = 100, output_tokens: int = 20, cache_creation: int = 0, cache_read: int = 0) -> dict:
    """A Messages API usage object with the four token fields."""
    return {"input_tokens": input_tokens, "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_creation, "cache_read_input_tokens": cache_read}


class FakeAnthropic:
    """Threaded HTTP server answering POST /v1/messages from a scripted queue."""

    def __init__(self) -> None:
        self.requests: list[dict] = []  # parsed JSON bodies, in arrival order
        self.headers: list[dict] = []  # request headers, same order
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
        msg = {"content": blocks, "stop_reason": stop_reason, "usage": usage_ or usage()}
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
        with self._lock:
            self.requests.append(body)
            self.headers.append({k.lower(): v for k, v in h.headers.items()})
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
            etype = "api_error" if action.status >= 500 else "invalid_request_error"
            self._send(h, action.status, _err(etype, f"fake_anthropic: scripted HTTP {action.status}"))
            return
        msg = action.fn(body) if action.kind == "fn" else action.message
        out = {
            "id": f"msg_fake_{len(self.requests):04d}",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "unknown"),
            "content": msg["content"],
            "stop_reason": msg.get("stop_reason", "end_turn"),
            "stop_sequence": None,
            "usage": msg.get("usage") or usage(),
        }
        self._send(h, 200, out)

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
