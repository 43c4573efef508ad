"""agent.llm.LLMClient through the real anthropic SDK against the fake Messages API server."""

from __future__ import annotations

import json
import time

import pytest

from agent.llm import (FALLBACK_PRICE, CostLimitReached, LLMClient, LLMRefused, LLMUnavailable, cost_usd,
                       estimate_input_tokens, price_for, worst_case_usd)
from agent.policies.base import PolicyError

try:
    from tests.fake_anthropic import fake_anthropic, usage  # noqa: F401 (fixture)
except ImportError:  # tests/ itself on sys.path
    from fake_anthropic import fake_anthropic, usage  # noqa: F401

TOOLS = [
    {"name": "choose_parent", "description": "pick a parent",
     "input_schema": {"type": "object", "properties": {"slot": {"type": "integer"}}, "required": ["slot"]}},
    {"name": "read_file", "description": "read a file",
     "input_schema": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]}},
]


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_call_sends_cached_prefix_and_records_usage_cost_latency(fake_anthropic, tmp_path):
    fake_anthropic.text("hello", usage_=usage(input_tokens=1000, output_tokens=200,
                                              cache_creation=3000, cache_read=50_000))
    log = tmp_path / "llm_calls.jsonl"
    client = LLMClient("claude-sonnet-4-6", max_retries=0, deadline_s=10, log_path=log)
    assert client.base_url.rstrip("/") == fake_anthropic.url  # ANTHROPIC_BASE_URL honoured
    msgs = [{"role": "user", "content": "do the step"}]
    msg = client.create("analyse", ["SYSTEM PROMPT", "REGIME INSTRUCTIONS"], TOOLS, msgs)
    assert msg.content[0].text == "hello"
    assert msgs == [{"role": "user", "content": "do the step"}]  # caller's list untouched

    body = fake_anthropic.requests[0]
    hdr = fake_anthropic.headers[0]  # ANTHROPIC_API_KEY honoured (this SDK sends it as a bearer token)
    assert hdr.get("x-api-key") == "test-key" or hdr.get("authorization") == "Bearer test-key"
    assert body["model"] == "claude-sonnet-4-6"
    assert [t["name"] for t in body["tools"]] == ["choose_parent", "read_file"]
    assert body["tools"][0]["input_schema"]["required"] == ["slot"]
    # tools come first in the prefix: the system breakpoints cache them too
    assert not any("cache_control" in t for t in body["tools"])
    assert [b["text"] for b in body["system"]] == ["SYSTEM PROMPT", "REGIME INSTRUCTIONS"]
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert body["system"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][-1]["content"][-1]["cache_control"] == {"type": "ephemeral"}

    (rec,) = _records(log)
    assert rec["step"] == "analyse" and rec["model"] == "claude-sonnet-4-6" and rec["ok"] is True
    assert (rec["input_tokens"], rec["output_tokens"], rec["cache_creation_input_tokens"],
            rec["cache_read_input_tokens"]) == (1000, 200, 3000, 50_000)
    # sonnet: $3 in, $15 out per MTok; cache write 1.25x, read 0.1x
    expected = (1000 * 3 + 200 * 15 + 3000 * 3 * 1.25 + 50_000 * 3 * 0.1) / 1e6
    assert rec["cost_usd"] == pytest.approx(expected)
    assert rec["total_cost_usd"] == pytest.approx(expected)
    assert rec["latency_s"] > 0 and rec["attempts"] == 1
    assert rec["stop_reason"] == "end_turn" and rec["error"] is None and rec["price_note"] is None
    assert client.total_cost_usd == pytest.approx(expected)


def test_message_breakpoint_only_when_asked_and_one_hour_prefix():
    msgs = [{"role": "user", "content": "a"}]
    req = LLMClient.build_request(["sys", "instr"], [{"name": "t"}], msgs, prefix_ttl="1h", cache_messages=False)
    assert [b.get("cache_control") for b in req["system"]] == [{"type": "ephemeral", "ttl": "1h"}] * 2
    assert "cache_control" not in req["tools"][0] and req["messages"] == msgs


def test_only_last_message_block_carries_cache_control():
    msgs = [{"role": "user", "content": [{"type": "text", "text": "a"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "b"}]},
            {"role": "user", "content": [{"type": "text", "text": "c"}, {"type": "text", "text": "d"}]}]
    req = LLMClient.build_request("sys", [], msgs)
    marks = [(i, j) for i, m in enumerate(req["messages"]) for j, b in enumerate(m["content"])
             if "cache_control" in b]
    assert marks == [(2, 1)]
    assert "cache_control" not in msgs[2]["content"][1]
    assert req["tools"] == []


def test_prices_by_family_and_fallback():
    assert price_for("claude-opus-4-5")[0].input == 5.0
    assert price_for("claude-opus-4-1-20250805")[0].input == 15.0
    assert price_for("claude-haiku-4-5")[0].output == 5.0
    p, note = price_for("claude-fable-5")
    assert p == FALLBACK_PRICE and "unknown model" in note
    assert cost_usd("claude-haiku-4-5", {"input_tokens": 1_000_000}) == pytest.approx(1.0)


def test_500_then_stall_raises_unavailable_within_deadline(fake_anthropic, tmp_path):
    fake_anthropic.error(500).otherwise("stall", seconds=30)
    log = tmp_path / "llm_calls.jsonl"
    client = LLMClient("claude-sonnet-4-6", max_retries=2, deadline_s=1.5, log_path=log)
    t0 = time.monotonic()
    with pytest.raises(LLMUnavailable, match="deadline") as ei:
        client.create("mutate", "sys", TOOLS, [{"role": "user", "content": "go"}])
    elapsed = time.monotonic() - t0
    assert isinstance(ei.value, PolicyError)  # the loop's fallback catches PolicyError
    assert elapsed < 1.5 + 1.0
    assert len(fake_anthropic.requests) >= 2  # the 500 was retried by the SDK
    (rec,) = _records(log)
    assert rec["ok"] is False and "deadline" in rec["error"] and rec["cost_usd"] == 0.0


def test_persistent_500_after_retries_names_the_status(fake_anthropic, tmp_path):
    fake_anthropic.otherwise("error", status=503)
    client = LLMClient("claude-sonnet-4-6", max_retries=1, deadline_s=10, log_path=tmp_path / "l.jsonl")
    with pytest.raises(LLMUnavailable, match="HTTP 503"):
        client.create("log", "sys", [], [{"role": "user", "content": "go"}])
    assert len(fake_anthropic.requests) == 2  # 1 + max_retries
    assert client.last_record.attempts == 2


def test_max_cost_stops_before_the_next_call_and_survives_resume(fake_anthropic, tmp_path):
    # 100k output tokens on sonnet = $1.50 > the $1 limit (the server may answer more than max_tokens here)
    fake_anthropic.text("expensive", usage_=usage(input_tokens=10, output_tokens=100_000))
    log = tmp_path / "llm_calls.jsonl"
    client = LLMClient("claude-sonnet-4-6", max_retries=0, deadline_s=10, max_cost_usd=1.0, log_path=log)
    client.create("prepare", "sys", [], [{"role": "user", "content": "go"}])
    assert client.cost_exceeded
    with pytest.raises(CostLimitReached, match="max-cost-usd"):
        client.create("analyse", "sys", [], [{"role": "user", "content": "go"}])
    assert len(fake_anthropic.requests) == 1  # the limit is checked before calling
    assert not isinstance(CostLimitReached("x"), PolicyError)  # stops the run, no fallback
    resumed = LLMClient("claude-sonnet-4-6", max_retries=0, deadline_s=10, max_cost_usd=1.0, log_path=log)
    assert resumed.total_cost_usd == pytest.approx(1.5 + 10 * 3 / 1e6)
    with pytest.raises(CostLimitReached):
        resumed.create("analyse", "sys", [], [{"role": "user", "content": "go"}])


def test_limit_holds_from_the_worst_case_of_the_next_call(fake_anthropic, tmp_path):
    """A call is sent only if its worst case (input bound, all written to the cache, + max_tokens) fits."""
    fake_anthropic.text("ok")  # usage computed by the fake from the request
    msgs = [{"role": "user", "content": "x" * 3000}]  # <= 1000 + a few input tokens
    req = LLMClient.build_request("sys", [], msgs)
    est = estimate_input_tokens(req)
    assert 1000 <= est <= 1100
    worst = worst_case_usd("claude-sonnet-4-6", est, 500)  # 1h writes are the dearest input: 2x $3/MTok
    assert worst == pytest.approx((est * 3 * 2 + 500 * 15) / 1e6)
    client = LLMClient("claude-sonnet-4-6", max_retries=0, deadline_s=10, max_cost_usd=worst * 1.01,
                       log_path=tmp_path / "l.jsonl")
    client.create("log", "sys", [], msgs, max_tokens=500)  # fits: sent (the fake's computed usage is far less)
    spent = client.total_cost_usd
    assert 0 < spent < worst
    with pytest.raises(CostLimitReached, match=r"up to \$0\.0\d+ for the next call"):
        client.create("log", "sys", [], msgs, max_tokens=500)  # spent + worst > limit: not sent
    assert len(fake_anthropic.requests) == 1 and client.total_cost_usd <= client.max_cost_usd


def test_one_hour_cache_writes_cost_twice_the_input_price():
    u = {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 3000,
         "cache_creation_1h_input_tokens": 1000, "cache_read_input_tokens": 0}
    assert cost_usd("claude-sonnet-4-6", u) == pytest.approx((2000 * 3 * 1.25 + 1000 * 3 * 2.0) / 1e6)


@pytest.mark.parametrize("status, fault, refused", [(400, "refused", True), (401, "refused", True),
                                                   (403, "refused", True), (404, "refused", True),
                                                   (413, "too_large", False),
                                                   (429, "rate_limit", False), (529, "overloaded", False),
                                                   (503, "server_error", False)])
def test_error_classes_refused_vs_retryable(fake_anthropic, tmp_path, status, fault, refused):
    fake_anthropic.otherwise("error", status=status)
    client = LLMClient("claude-sonnet-4-6", max_retries=1, deadline_s=10, log_path=tmp_path / "l.jsonl")
    exc = LLMRefused if refused else LLMUnavailable
    with pytest.raises(exc) as ei:
        client.create("mutate", "sys", [], [{"role": "user", "content": "go"}])
    assert f"HTTP {status}" in str(ei.value) and client.last_record.fault == fault
    retried = status not in (400, 401, 403, 404, 413)
    assert len(fake_anthropic.requests) == (2 if retried else 1)  # the SDK retries only what is retryable
    assert isinstance(ei.value, PolicyError) is (not refused)  # refused: not a fallback, the run stops


def test_preflight_names_a_bad_key_model_or_url(fake_anthropic, tmp_path, monkeypatch):
    ok = LLMClient("claude-sonnet-4-6", max_retries=0, deadline_s=10)
    rec = ok.preflight()
    assert rec.ok and rec.step == "preflight" and len(fake_anthropic.pings) == 1
    assert fake_anthropic.pings[0]["max_tokens"] == 1 and not fake_anthropic.requests
    with pytest.raises(LLMRefused, match="model 'claude-nope' does not exist .*HTTP 404.*check --model"):
        LLMClient("claude-nope", max_retries=0, deadline_s=10).preflight()
    monkeypatch.setenv("ANTHROPIC_API_KEY", "wrong")
    t0 = time.monotonic()
    with pytest.raises(LLMRefused, match="API key was rejected .*HTTP 401.*check ANTHROPIC_API_KEY"):
        LLMClient("claude-sonnet-4-6", max_retries=2, deadline_s=10).preflight()
    assert time.monotonic() - t0 < 2.0  # not retried
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LLMRefused, match=f"unreachable at http://127.0.0.1:{port}.*ANTHROPIC_BASE_URL"):
        LLMClient("claude-sonnet-4-6", base_url=f"http://127.0.0.1:{port}", max_retries=0, deadline_s=5).preflight()


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="deadline_s"):
        LLMClient("claude-sonnet-4-6", deadline_s=0)
    with pytest.raises(ValueError, match="max_cost_usd"):
        LLMClient("claude-sonnet-4-6", max_cost_usd=-1)


def test_missing_credentials_is_unavailable(monkeypatch, tmp_path):
    for var in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))  # no profile on disk
    with pytest.raises(LLMRefused, match="no Anthropic credentials"):
        LLMClient("claude-sonnet-4-6")


def test_connection_refused_is_unavailable(monkeypatch, tmp_path):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = LLMClient("claude-sonnet-4-6", base_url=f"http://127.0.0.1:{port}", max_retries=0, deadline_s=5,
                       log_path=tmp_path / "l.jsonl")
    with pytest.raises(LLMUnavailable, match="APIConnectionError"):
        client.create("log", "sys", [], [{"role": "user", "content": "go"}])
    assert client.last_record.ok is False


def test_fake_api_models_cache_reads_writes_and_lifetimes(fake_anthropic, tmp_path):
    """The loopback server's cache model (what the cache-share figures rest on): prefix up to a
    breakpoint, a read refreshes it, 5-minute vs 1-hour lifetime, the look-back to earlier breakpoints."""
    client = LLMClient("claude-sonnet-4-6", max_retries=0, deadline_s=10, log_path=tmp_path / "l.jsonl")
    system = ["S" * 6000, "I" * 2000]  # ~1500 + ~500 tokens: above the 1024-token minimum
    msgs = [{"role": "user", "content": "step prompt " * 50}]

    def call(ttl=None, messages=msgs, cache_messages=False):
        fake_anthropic.text("ok")
        client.create("log", system, TOOLS, messages, prefix_ttl=ttl, cache_messages=cache_messages)
        r = client.last_record
        return r.input_tokens, r.cache_creation_input_tokens, r.cache_read_input_tokens

    fresh, written, read = call()
    assert read == 0 and written > 1900 and fresh > 100  # tools + both system blocks written, the prompt not
    assert call() == (fresh, 0, written)  # read back
    fake_anthropic.advance(299)
    assert call()[2] == written  # within 5 minutes (and the read refreshed the lifetime)
    fake_anthropic.advance(301)
    assert call() == (fresh, written, 0)  # expired: written again
    fake_anthropic.advance(301)
    assert call(ttl="1h")[2] == 0 and client.last_record.cache_creation_1h_input_tokens == written
    fake_anthropic.advance(1800)
    assert call(ttl="1h")[2] == written  # half an hour later, still there
    # a conversation: turn 2 reads turn 1's message breakpoint (look-back), writes only its own delta
    _, w1, _ = call(ttl="1h", cache_messages=True)
    turn2 = msgs + [{"role": "assistant", "content": [{"type": "text", "text": "a"}]},
                    {"role": "user", "content": [{"type": "text", "text": "b"}]}]
    _, w2, r2 = call(ttl="1h", messages=turn2, cache_messages=True)
    assert w1 > 100 and r2 == written + w1 and 0 < w2 < 40
