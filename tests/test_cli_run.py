"""The `make run` code path end to end through `agent.cli.main`, on the toy regime fixture.

`agent run ... --no-live` -> `agent report` / `agent status` / `agent replay` / `agent resume`
on the directory it leaves; Ctrl-C stops cleanly and the run resumes. The real
homeostasis quick profile is in a `slow` test.
"""

import json
import os
import signal
from pathlib import Path

import pytest

from agent.cli import main

try:  # the fake Messages API server (tests/fake_anthropic.py) and its fixture
    from fake_anthropic import fake_anthropic, usage  # noqa: F401
except ImportError:  # pragma: no cover - run from the repository root as a package
    from tests.fake_anthropic import fake_anthropic, usage  # noqa: F401

TOY_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "toy_regime" / "plugins"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _nodes(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "nodes.jsonl").read_text().splitlines() if x.strip()]


def _toy_run(run: Path, *extra: str) -> list[str]:
    return ["run", "--regime", "toy", "--regime-path", str(TOY_PLUGINS), "--slots", "2", "--iterations", "4",
            "--policy", "heuristic", "--no-live", "--run-dir", str(run), *extra]


def test_run_then_report_status_replay_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_toy_run(run)) == 0
    out = capsys.readouterr().out
    assert "gnn-agent run: regime toy [default], 2 slots, 4 iterations" in out
    assert "profile quick" in out and "policy heuristic" in out
    assert out.count("batch start") == 2 and out.count(" finished: node ") == 4
    assert "run done: 4 iterations" in out and f"agent report {run}" in out
    assert [n["id"] for n in _nodes(run)] == [1, 2, 3, 4]
    assert not (run / "run.pid").exists()

    assert main(["report", str(run)]) == 0
    capsys.readouterr()
    md = (run / "report" / "report.md").read_text()
    assert "# Run report: toy [default]" in md and "### Code" in md
    for png in ("scores.png", "best_so_far.png", "ucb_tree.png", "params.png"):
        data = (run / "report" / png).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_MAGIC

    assert main(["status", str(run)]) == 0
    text = capsys.readouterr().out
    assert "finished (done)" in text and "best nodes (of 4)" in text

    best = max(_nodes(run), key=lambda n: n["score"])
    assert main(["replay", str(run), str(best["id"])]) == 0
    text = capsys.readouterr().out
    assert "recorded vs replay" in text and "outputs:" in text
    replayed = json.loads(next((run / "replays").glob("node_*/slot_*/metrics.json")).read_text())
    assert replayed["fit_R2"] == pytest.approx(best["metrics"]["fit_R2"], abs=1e-9)  # same config + code

    assert main(["resume", str(run), "--iterations", "6", "--no-live"]) == 0
    assert len(_nodes(run)) == 6

    assert main(_toy_run(run)) == 2  # the directory already holds a run
    assert "already holds a run" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_the_run_resumes(tmp_path, monkeypatch, capsys):
    import agent.run as run_mod

    real_start = run_mod.start_run

    def start_with_ctrl_c(opts, stop=None, kill=None, on_event=None, **kw):
        def on_event_(ev):
            # The user presses Ctrl-C as soon as the first batch is recorded.
            if ev.get("type") == "status" and ev["status"].get("iterations_done", 0) >= 2 and not stop.is_set():
                os.kill(os.getpid(), signal.SIGINT)
        return real_start(opts, stop=stop, kill=kill, on_event=on_event_, **kw)

    monkeypatch.setattr(run_mod, "start_run", start_with_ctrl_c)
    run = tmp_path / "run"
    assert main(_toy_run(run)) == 130
    out = capsys.readouterr().out
    assert "stopping after the current step" in out and f"agent resume {run}" in out
    status = json.loads((run / "status.json").read_text())
    assert status["phase"] == "stopped" and len(_nodes(run)) < 4
    assert main(["status", str(run)]) == 0
    assert "continue with: agent resume" in capsys.readouterr().out
    (run / "run.pid").write_text(str(os.getpid()))  # as if another `agent run` still owned it
    assert main(["resume", str(run), "--no-live"]) == 2
    assert "is still running (process" in capsys.readouterr().err
    (run / "run.pid").unlink()
    assert main(["resume", str(run), "--no-live"]) == 0
    assert [n["id"] for n in _nodes(run)] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.timeout(3600)  # the first run trains and caches the phase-1 model
def test_make_run_path_on_real_homeostasis(tmp_path, capsys):
    """`agent run --regime homeostasis --slots 2 --iterations 2 --no-live` (quick profile) and its report."""
    run = tmp_path / "run"
    code = main(["run", "--regime", "homeostasis", "--slots", "2", "--iterations", "2", "--no-live",
                 "--policy", "heuristic", "--device", "cpu", "--run-dir", str(run)])
    assert code == 0, capsys.readouterr()
    assert len(_nodes(run)) == 2
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "report.md").is_file()


def test_regimes_listing_show_config_and_new_regime(tmp_path, capsys):
    assert main(["regimes"]) == 0
    out = capsys.readouterr().out
    for name in ("homeostasis", "low_rank_connectivity", "rate_constants", "sparse_connectivity", "stoichiometry"):
        assert any(line.startswith(name + " ") for line in out.splitlines()), name
    assert main(["new-regime", "my_toy", "--dir", str(tmp_path)]) == 0
    assert "agent run --regime my_toy" in capsys.readouterr().out
    assert main(["new-regime", "my_toy", "--dir", str(tmp_path)]) == 2  # exists: one line, exit 2
    assert "already exists" in capsys.readouterr().err.splitlines()[0]
    assert main(["regimes", "--regime-path", str(tmp_path)]) == 0
    assert any(line.startswith("my_toy ") for line in capsys.readouterr().out.splitlines())
    assert main(["regimes", "show", "my_toy", "--regime-path", str(tmp_path)]) == 0
    assert "my_toy" in capsys.readouterr().out
    assert main(["regimes", "config", "my_toy", "--regime-path", str(tmp_path)]) == 0
    import yaml

    cfg = yaml.safe_load(capsys.readouterr().out)
    assert set(cfg) >= {"simulation", "training", "claude"} and "n_iter_block" in cfg["claude"]
    assert main(["regimes", "show", "nosuch"]) == 2
    assert "unknown regime 'nosuch'" in capsys.readouterr().err


def test_a_crash_inside_the_run_is_one_line_and_says_resume(tmp_path, monkeypatch, capsys):
    import agent.run as run_mod

    real_start = run_mod.start_run

    def crashing(opts, stop=None, kill=None, on_event=None, **kw):
        real_start(opts.model_copy(update={"iterations": 2}), stop=stop, kill=kill, on_event=on_event, **kw)
        raise RuntimeError("executor lost\ndetails")  # the loop dies after writing its run directory

    monkeypatch.setattr(run_mod, "start_run", crashing)
    monkeypatch.delenv("GNN_AGENT_DEBUG", raising=False)
    run = tmp_path / "run"
    assert main(_toy_run(run)) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "RuntimeError: executor lost" in err[0] and f"agent resume {run}" in err[1]


def test_claude_policy_through_the_cli_fallback_and_spend_limit(fake_anthropic, tmp_path, monkeypatch, capsys):
    """--policy claude against the fake Messages API: a stalled server falls back (shown as a line),
    a spend limit stops cleanly and says how to resume."""
    monkeypatch.setenv("GNN_AGENT_LLM_DEADLINE_S", "0.8")
    monkeypatch.setenv("GNN_AGENT_LLM_MAX_RETRIES", "1")
    fake_anthropic.error(500).otherwise("stall", seconds=30)
    run = tmp_path / "stalled"
    argv = _toy_run(run)
    argv[argv.index("--policy") + 1] = "claude"
    argv[argv.index("--iterations") + 1] = "2"
    assert main(argv + ["--model", "claude-sonnet-4-6"]) == 0
    out = capsys.readouterr().out
    assert "policy claude (claude-sonnet-4-6) (--policy claude)" in out
    fb = [ln.split("] ", 1)[-1] for ln in out.splitlines() if ln.split("] ", 1)[-1].startswith("fallback ")]
    # one line per fallback, each with its step and fault class
    assert [ln.split(" (")[0] for ln in fb] == [f"fallback {i}: heuristic answered step {s}" for i, s in
                                              enumerate(("prepare", "analyse", "select_parent", "log"), 1)]
    assert all("(deadline:" in ln or "(server_error:" in ln for ln in fb)
    assert "run done: 2 iterations" in out and "0 of 4 steps answered by claude; 4 fell back to heuristic" in out
    assert main(["status", str(run)]) == 0
    st_out = capsys.readouterr().out
    assert "FALLBACK→heuristic" in st_out and "0 of 4 steps answered by claude" in st_out

    fake_anthropic.otherwise("error", status=400)
    fake_anthropic.tool_use(("finish_mutation", {"slot": 0, "mutation": "baseline (default config)"}),
                            usage_=usage(10, 100_000))
    run = tmp_path / "limited"
    argv = _toy_run(run)
    argv[argv.index("--policy") + 1] = "claude"
    assert main(argv + ["--max-cost-usd", "1"]) == 0  # the default --model
    out = capsys.readouterr().out
    assert "budget $1" in out and "stopped: cost limit reached" in out and f"agent resume {run}" in out
