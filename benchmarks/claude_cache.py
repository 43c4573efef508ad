"""Prompt-cache share and cost per iteration of the Claude policy, measured
against the loopback Messages API (tests/fake_anthropic.py: it models cache
reads and writes from the request's cache_control breakpoints, 5-minute and
1-hour lifetimes) answered by a model that follows the prompts literally
(tests/literal_claude.py). No network, no key.

    python -m benchmarks.claude_cache [--slots 2] [--iterations 6] [--batch-minutes 8] [--faults]

`--batch-minutes`: how long each batch of trainings "takes" for the cache
clock (the fake's clock is moved on by that much per batch; the trainings
themselves are the toy regime's, seconds). Prints one JSON line: requests,
tool calls, rejected calls, input tokens (uncached / written / read), the
cache-read share of input tokens, cost in total and per iteration, steps
answered by Claude. `--faults`: the API misbehaves at four steps of the run
(analyse: 529 overloaded; select_parent: 429 rate limit; log: no answer
within the deadline; mutate: the model repeats a rejected call), to count
fallbacks by fault class.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def measure(slots: int, iterations: int, batch_minutes: float, run_dir: Path, model: str = "claude-sonnet-4-6",
            faults: bool = False) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_anthropic import FakeAnthropic  # noqa: E402
    from literal_claude import LiteralClaude  # noqa: E402

    from agent.llm import cost_usd
    from agent.run import start_run
    from sandbox.executors import make_executor
    from tests.loop_helpers import toy_options

    import agent.policies.claude as claude_mod

    fake = FakeAnthropic().start()
    saved = {k: os.environ.get(k) for k in ("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "GNN_AGENT_LLM_DEADLINE_S",
                                            "GNN_AGENT_LLM_MAX_RETRIES")}
    saved_now = getattr(claude_mod, "_now", None)
    claude_mod._now = fake.now  # the policy sees the batches last as long as the cache clock says
    os.environ["ANTHROPIC_BASE_URL"] = fake.url
    os.environ["ANTHROPIC_API_KEY"] = "test-key"
    brain = LiteralClaude(fake)
    if faults:  # the literal model's request order: prepare (2), analyse (1), select_parent (1), log (2), mutate (2)
        os.environ["GNN_AGENT_LLM_DEADLINE_S"], os.environ["GNN_AGENT_LLM_MAX_RETRIES"] = "3", "1"
        fake.respond_with(brain.respond).respond_with(brain.respond)  # prepare
        fake.error(529, times=2)  # analyse: overloaded, also on the SDK's retry
        fake.error(429, times=2)  # select_parent: rate limited
        fake.stall(30)  # log: no answer within the deadline
        bad = {"content": [{"type": "tool_use", "id": "x", "name": "set_config",
                            "input": {"slot": 0, "changes": {"simulation.target_lr": 0.5}}}], "stop_reason": "tool_use"}
        for _ in range(2):  # mutate: the same rejected call (a frozen key) twice
            fake.respond_with(lambda body: {**bad, "content": [dict(bad["content"][0], id=fake.new_tool_id())]})
    brain.arm(400)

    class Clocked:
        """The local executor, with the cache clock moved on by one batch's duration."""

        def __init__(self):
            self.inner = make_executor("local", slots)

        def run_batch(self, specs, on_progress=None, cancel=None):
            out = self.inner.run_batch(specs, on_progress, cancel)
            fake.advance(batch_minutes * 60)
            return out

        def shutdown(self):
            self.inner.shutdown()

    try:
        start_run(toy_options(run_dir, policy="claude", model=model, slots=slots, iterations=iterations),
                  executor=Clocked())
    finally:
        fake.stop()
        if saved_now is not None:
            claude_mod._now = saved_now
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    calls = [json.loads(x) for x in (run_dir / "llm_calls.jsonl").read_text().splitlines()]
    calls = [c for c in calls if c["step"] != "preflight"]
    fresh = sum(c["input_tokens"] for c in calls)
    written = sum(c["cache_creation_input_tokens"] for c in calls)
    read = sum(c["cache_read_input_tokens"] for c in calls)
    total_in = fresh + written + read
    cost = sum(c["cost_usd"] for c in calls)
    rejected = (run_dir / "rejected.jsonl")
    n_rej = len(rejected.read_text().splitlines()) if rejected.exists() else 0
    status = json.loads((run_dir / "status.json").read_text())
    nodes = len((run_dir / "nodes.jsonl").read_text().splitlines())
    ps = status.get("policy_steps") or {}
    answered = ps.get("answered")
    if answered is None:  # a checkout without the step counts: count the fallback lines
        log = (run_dir / "reasoning.log").read_text()
        answered = f"{log.count('FALLBACK')} fallbacks"
    return {"slots": slots, "iterations": nodes, "batch_minutes": batch_minutes, "requests": len(calls),
            "tool_calls": sum(len(t[1]) for t in brain.turns), "rejected_calls": n_rej,
            "input_tokens": total_in, "uncached": fresh, "cache_written": written, "cache_read": read,
            "cache_read_share": round(read / total_in, 4) if total_in else None,
            "output_tokens": sum(c["output_tokens"] for c in calls),
            "cost_usd": round(cost, 5), "cost_per_iteration_usd": round(cost / max(1, nodes), 5),
            "cost_if_uncached_usd": round(sum(cost_usd(model, {"input_tokens": c["input_tokens"]
                                                              + c["cache_creation_input_tokens"]
                                                              + c["cache_read_input_tokens"],
                                                              "output_tokens": c["output_tokens"]})
                                              for c in calls), 5),
            "steps_answered_by_claude": answered, "steps_total": ps.get("total"), "phase": status.get("phase"),
            "fallbacks_by_fault": ps.get("faults"),
            "distinct_tool_arrays": len({json.dumps(b.get("tools"), sort_keys=True) for b in fake.requests})}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--batch-minutes", type=float, default=8.0)
    ap.add_argument("--run-dir", type=Path, default=None)
    ap.add_argument("--faults", action="store_true", help="inject one fault of each retryable class and a repeat")
    a = ap.parse_args(argv)
    run_dir = a.run_dir or Path(tempfile.mkdtemp(prefix="claude-cache-")) / "run"
    print(json.dumps(measure(a.slots, a.iterations, a.batch_minutes, run_dir, faults=a.faults)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
