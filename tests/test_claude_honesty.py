"""The Claude policy fails honestly, shows every fallback, keeps its budgets and shares one cached prefix.

Through the real SDK against tests/fake_anthropic.py (loopback, cache model),
on the toy regime:
- a bad key / model / base URL is one line and exit 2 at `agent run`, before
  any run directory exists;
- a key refused in the middle of a run stops it cleanly (exit 2, resumable);
  resumed with the key fixed, Claude answers the rest;
- `agent resume --max-cost-usd X` raises the limit (recorded in run.yaml),
  and the resume prints no stale stop line and ends with "run done";
- a model that follows the prompts literally gets no rejected call, the
  memory gets one line per node, every request carries the same tools array,
  and with 8-minute batches most input tokens are read from the cache;
- which tools act at a step is checked when called; the plain view prints one
  line per fallback with its reason.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import anthropic  # noqa: F401 - imported up front: the timing below is of the check, not of the SDK's import
import pytest
import yaml

from agent.cli import main
from agent.live import PlainReporter
from rundir.records import Mutation
from tests.loop_helpers import TOY_PLUGINS, box, open_ctx, toy_options

try:
    from tests.fake_anthropic import fake_anthropic  # noqa: F401 (fixture)
    from tests.literal_claude import LiteralClaude
except ImportError:
    from fake_anthropic import fake_anthropic  # noqa: F401
    from literal_claude import LiteralClaude

MODEL = "claude-sonnet-4-6"


def _argv(run: Path, *extra: str) -> list[str]:
    return ["run", "--regime", "toy", "--regime-path", str(TOY_PLUGINS), "--slots", "2", "--iterations", "4",
            "--policy", "claude", "--model", MODEL, "--no-live", "--run-dir", str(run), *extra]


def _errors(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.parametrize("case", ["key", "model", "url"])
def test_bad_key_model_or_url_is_one_line_and_exit_2_before_anything_runs(fake_anthropic, tmp_path, monkeypatch,
                                                                          capsys, case):
    argv = _argv(tmp_path / "run")
    if case == "key":
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-wrong")
        want = r"the API key was rejected \(HTTP 401 authentication_error: invalid x-api-key\); check ANTHROPIC_API_KEY"
    elif case == "model":
        argv[argv.index("--model") + 1] = "claude-nope-9"
        want = r"model 'claude-nope-9' does not exist \(HTTP 404 not_found_error: model: claude-nope-9\)"
    else:
        import socket
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        monkeypatch.setenv("ANTHROPIC_BASE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("GNN_AGENT_LLM_MAX_RETRIES", "0")
        want = rf"unreachable at http://127.0.0.1:{port}.*check ANTHROPIC_BASE_URL"
    t0 = time.monotonic()
    assert main(argv) == 2
    elapsed = time.monotonic() - t0
    err = _errors(capsys.readouterr().err)
    assert len(err) == 2 and err[0].startswith("error: Claude API") and re.search(want, err[0]), err
    assert err[1] == "hint: nothing was started; fix the setting named above and run again"
    assert not (tmp_path / "run").exists()  # no half-made run directory to clean up
    assert elapsed < 5.0  # one refused call (not retried), no torch/langgraph imports before it
    assert fake_anthropic.requests == []


def test_key_refused_mid_run_stops_resumably_then_claude_finishes_it(fake_anthropic, tmp_path, capsys):
    brain = LiteralClaude(fake_anthropic)
    n = {"calls": 0}

    def revoke_after_prepare(body):
        n["calls"] += 1
        if n["calls"] == 2:  # the second prepare answer: then the key stops working
            fake_anthropic.keys = ("revoked",)
        return brain.respond(body)

    for _ in range(2):
        fake_anthropic.respond_with(revoke_after_prepare)
    run = tmp_path / "run"
    assert main(_argv(run)) == 2
    out = capsys.readouterr().out
    line = [ln for ln in out.splitlines() if ln.startswith("stopped:")]
    assert line == [f"stopped: Claude API: the API key was rejected (HTTP 401 authentication_error: invalid "
                    f"x-api-key); check ANTHROPIC_API_KEY. fix it, then resume with: agent resume {run}"]
    st = json.loads((run / "status.json").read_text())
    assert st["phase"] == "stopped" and st["stopped_by"] == "llm_refused"
    assert st["policy_steps"]["fallbacks"] == 0  # no heuristic run in Claude's name
    # the first batch trained, then analyse stopped (nodes are recorded at the log step)
    assert len(list(run.glob("iterations/iter_001/slot_*/result.json"))) == 2
    assert (run / "nodes.jsonl").read_text() == ""
    assert "FALLBACK" not in (run / "reasoning.log").read_text()

    fake_anthropic.keys = ("test-key",)
    brain.arm(60)
    assert main(["resume", str(run), "--no-live"]) == 0
    out = capsys.readouterr().out
    assert "run stopped" not in out and "run done: 4 iterations" in out
    st = json.loads((run / "status.json").read_text())
    assert st["phase"] == "done" and st["policy_steps"]["answered"] == st["policy_steps"]["total"]
    assert "steps answered by claude" in out


def test_resume_with_a_higher_cost_limit_recorded_in_run_yaml(fake_anthropic, tmp_path, capsys):
    LiteralClaude(fake_anthropic).arm(80)
    run = tmp_path / "run"
    assert main(_argv(run, "--max-cost-usd", "0.03")) == 0
    out = capsys.readouterr().out
    assert re.search(r"stopped: cost limit reached: LLM spend \$0\.\d+ \+ up to \$0\.\d+ for the next call", out)
    assert f"resume with: agent resume {run} --max-cost-usd X (a higher limit)" in out
    calls = [json.loads(x) for x in (run / "llm_calls.jsonl").read_text().splitlines()]
    assert sum(c["cost_usd"] for c in calls) <= 0.03  # the limit holds: no call past it

    assert main(["resume", str(run), "--max-cost-usd", "5", "--iterations", "6", "--no-live"]) == 0
    out = capsys.readouterr().out
    info = yaml.safe_load((run / "run.yaml").read_text())
    assert info["budget"] == {"iterations": 6, "max_cost_usd": 5.0}
    assert "run stopped" not in out and "run done: 6 iterations" in out
    assert not any(ln.split("] ", 1)[-1].startswith("stopped") for ln in out.splitlines())
    assert "changed: iterations 4 -> 6; max_cost_usd 0.03 -> 5" in (run / "reasoning.log").read_text()


def test_a_literal_model_gets_no_rejection_and_reads_the_prefix_from_cache(tmp_path, monkeypatch):
    from benchmarks.claude_cache import measure

    run = tmp_path / "run"
    m = measure(slots=2, iterations=6, batch_minutes=8.0, run_dir=run)
    assert m["phase"] == "done" and m["iterations"] == 6
    assert m["rejected_calls"] == 0 and not (run / "rejected.jsonl").exists()
    assert m["steps_answered_by_claude"] == m["steps_total"] == 12
    assert m["distinct_tool_arrays"] == 1  # one tools array for every step
    assert m["cache_read_share"] >= 0.6, m  # 8-minute batches: the 1-hour prefix is read across iterations
    calls = [json.loads(x) for x in (run / "llm_calls.jsonl").read_text().splitlines()]
    assert {c["cache_ttl"] for c in calls if c["step"] == "analyse"} == {"1h"}
    memory = (run / "memory.md").read_text()
    iter_lines = re.findall(r"^- Iter (\d+) \(", memory, re.M)
    assert len(iter_lines) == len(set(iter_lines)) > 0  # one line per node, written by the loop only
    lines = [Mutation.of(json.loads(x)["mutation"]).line() for x in (run / "nodes.jsonl").read_text().splitlines()]
    # one mutation format in the records: 'name: old -> new', the key without its section
    assert all(re.fullmatch(r"learning_rate: [0-9.E-]+ -> [0-9.E-]+", m) for m in lines if m != "baseline"), lines
    log = (run / "reasoning.log").read_text()
    assert "-> rolled back" not in log and "REJECTED" not in log


def test_tools_array_is_the_same_at_every_step_and_scoped_when_called(tmp_path):
    from agent.run import start_run

    run = tmp_path / "run"
    start_run(toy_options(run, iterations=2))
    ctx = open_ctx(run)
    arrays = {json.dumps(box(ctx, step, [0, 1]).all_schemas(), sort_keys=True)
              for step in ("prepare", "analyse", "log", "select_parent", "block_end", "mutate")}
    assert len(arrays) == 1
    text = arrays.pop()
    for foreign in ("learning_rate_k", "metabolism", "MLP_sub"):  # no other regime's keys or paths
        assert foreign not in text
    assert "learning_rate: 1E-3 -> 2E-3" in text and "toyfit/train.py" in text  # the toy's own examples
    res = box(ctx, "log", [0, 1]).call("set_config", {"slot": 0, "changes": {"training.coeff_reg": 1.0}})
    assert not res.ok and res.error == ("tool set_config is not allowed at step log; allowed: update_memory, "
                                        "read_file")


def test_plain_view_prints_each_fallback_with_its_reason_and_a_clean_resume(tmp_path):
    run = tmp_path / "run"
    run.mkdir()

    def status(**kw):
        st = {"run_id": "r", "regime": "toy", "policy": "claude", "phase": "analyse", "block": 1,
              "iterations_done": 2, "iterations_total": 4, "slots": [], "fallback": False,
              "policy_steps": {"total": 0, "answered": 0, "fallbacks": 0, "faults": {}}}
        st.update(kw)
        (run / "status.json").write_text(json.dumps(st))

    status()
    rep = PlainReporter(run)
    rep.poll()
    fb1 = {"step": "analyse", "fault": "deadline", "reason": "no answer within the 120s deadline"}
    status(fallback=True, policy_steps={"total": 3, "answered": 2, "fallbacks": 1, "faults": {"deadline": 1},
                                        "last_fallback": fb1})
    assert rep.poll() == ["fallback 1: heuristic answered step analyse (deadline: no answer within the 120s deadline)"]
    fb2 = {"step": "log", "fault": "repeated_rejection", "reason": "claude repeated a rejected call"}
    status(fallback=True, policy_steps={"total": 4, "answered": 2, "fallbacks": 2,
                                        "faults": {"deadline": 1, "repeated_rejection": 1}, "last_fallback": fb2})
    assert rep.poll() == ["fallback 2: heuristic answered step log (repeated_rejection: claude repeated a rejected call)"]
    status(fallback=False, policy_steps={"total": 5, "answered": 3, "fallbacks": 2,
                                         "faults": {"deadline": 1, "repeated_rejection": 1}, "last_fallback": fb2})
    assert rep.poll() == ["claude answers again (3 of 5 steps answered by claude; 2 fell back to heuristic "
                          "(1 deadline, 1 repeated_rejection))"]
    status(phase="stopped", message="cost limit reached")
    assert [ln.split(":")[0] for ln in rep.poll()] == ["run stopped"]
    # a resume's view: the old stop is not news; its own end is
    resumed = PlainReporter(run, history=False)
    assert resumed.poll() == []
    status(phase="analyse")
    resumed.poll()
    status(phase="done", iterations_done=4)
    assert [ln.split(":")[0] for ln in resumed.poll()] == ["run done"]
