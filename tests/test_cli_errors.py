"""User mistakes: one line naming the problem (and the valid choices), a hint line, exit 2; no traceback."""

import pytest
from fixtures.make_recorded_run import make_recorded_run

from agent.cli import build_parser, main
from agent.run import RunError, resolve_device_profile, resolve_policy

BUILTIN = ["homeostasis", "low_rank_connectivity", "rate_constants", "sparse_connectivity", "stoichiometry"]


def _run(argv, capsys):
    code = main(argv)
    cap = capsys.readouterr()
    return code, cap.out, cap.err.splitlines()


def _one_error(err: list[str]) -> str:
    assert len(err) == 2 and err[0].startswith("error: ") and err[1].startswith("hint: "), err
    assert "Traceback" not in "\n".join(err)
    return err[0]


def test_unknown_regime_lists_the_choices(capsys):
    code, _, err = _run(["run", "--regime", "nosuch"], capsys)
    line = _one_error(err)
    assert code == 2 and "unknown regime 'nosuch'" in line
    assert all(name in line for name in BUILTIN)


def test_unknown_variant_lists_the_variants(capsys):
    code, _, err = _run(["run", "--regime", "sparse_connectivity", "--variant", "n999"], capsys)
    line = _one_error(err)
    assert code == 2 and "unknown variant 'n999'" in line and "n100" in line and "n200" in line


@pytest.mark.parametrize("argv, words", [
    (["run", "--regime", "homeostasis", "--slots", "0"], ["--slots", "at least 1"]),
    (["run", "--regime", "homeostasis", "--slots", "two"], ["--slots", "whole number"]),
    (["run", "--regime", "homeostasis", "--iterations", "-3"], ["--iterations"]),
    (["run", "--regime", "homeostasis", "--policy", "genius"],
     ["--policy", "'genius'", "auto", "claude", "heuristic", "optuna", "random"]),
    (["run", "--regime", "homeostasis", "--profile", "huge"], ["--profile", "quick", "full"]),
    (["run", "--regime", "homeostasis", "--max-cost-usd", "-1"], ["--max-cost-usd"]),
    (["run"], ["--regime", "required"]),
    (["status"], ["RUN_DIR"]),
    (["frobnicate"], ["frobnicate", "run", "status", "report"]),
    (["regimes", "show"], ["needs a regime NAME"]),
    (["new-regime", "bad-name!", "--dir", "x"], ["'bad-name!'"]),
])
def test_usage_mistakes_exit_2_with_one_line(argv, words, capsys):
    code, _, err = _run(argv, capsys)
    line = _one_error(err)
    assert code == 2
    for w in words:
        assert w in line, (w, line)


@pytest.mark.parametrize("cmd", ["status", "report", "resume", "replay"])
def test_missing_run_dir(cmd, tmp_path, capsys):
    missing = tmp_path / "nope"
    code, _, err = _run([cmd, str(missing)] + (["3"] if cmd == "replay" else []), capsys)
    line = _one_error(err)
    assert code == 2 and str(missing) in line and "does not exist" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run([cmd, str(empty)] + (["3"] if cmd == "replay" else []), capsys)
    assert code == 2 and "is not a run directory" in _one_error(err)


def test_replay_unknown_node_names_the_range(tmp_path, capsys):
    run = make_recorded_run(tmp_path / "run")
    code, _, err = _run(["replay", str(run), "42"], capsys)
    assert code == 2 and "node 42 is not in" in _one_error(err) and "1..8" in err[0]


def test_claude_without_key_and_ray_address_without_ray(monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    code, _, err = _run(["run", "--regime", "homeostasis", "--policy", "claude"], capsys)
    assert code == 2 and "ANTHROPIC_API_KEY" in _one_error(err)
    code, _, err = _run(["run", "--regime", "homeostasis", "--ray-address", "auto"], capsys)
    assert code == 2 and "--ray-address needs --executor ray" in _one_error(err)


def test_unexpected_error_is_one_line_with_debug_hint(tmp_path, monkeypatch, capsys):
    run = make_recorded_run(tmp_path / "run")

    def boom(*a, **k):
        raise RuntimeError("disk on fire\nsecond line")

    monkeypatch.setattr("agent.report.write_report", boom)
    monkeypatch.delenv("GNN_AGENT_DEBUG", raising=False)
    code, _, err = _run(["report", str(run)], capsys)
    assert code == 1 and err == ["error: RuntimeError: disk on fire", "hint: run with GNN_AGENT_DEBUG=1 for the traceback"]
    monkeypatch.setenv("GNN_AGENT_DEBUG", "1")
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["report", str(run)])


def test_help_of_every_subcommand_has_description_and_examples(capsys):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert set(sub.choices) == {"run", "resume", "status", "report", "regimes", "new-regime", "replay"}
    for name in sub.choices:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0
        out = capsys.readouterr().out
        assert f"usage: agent {name}" in out and "example" in out, name
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = capsys.readouterr().out
    for flag in ("--regime", "--variant", "--slots", "--iterations", "--profile", "--policy", "--model",
                 "--max-cost-usd", "--executor", "--ray-address", "--device", "--run-dir", "--no-live",
                 "--no-code", "--continue", "--regime-path", "--phase1-checkpoint", "--seed"):
        assert flag in out, flag
    assert "(default: 4)" in out and "Ctrl-C" in out
    assert main([]) == 2 and "usage: agent" in capsys.readouterr().err


def test_profile_and_policy_defaults(monkeypatch):
    assert resolve_device_profile("auto", None, cuda=False)[:2] == ("cpu", "quick")
    assert "no CUDA" in resolve_device_profile("auto", None, cuda=False)[2]
    assert resolve_device_profile("auto", None, cuda=True)[:2] == ("cuda", "full")
    assert resolve_device_profile("cpu", None, cuda=True)[:2] == ("cpu", "quick")
    assert resolve_device_profile("auto", "full", cuda=False) == ("cpu", "full", "--profile full")
    with pytest.raises(RunError, match="no CUDA device"):  # the CLI shows it as a usage error (exit 2)
        resolve_device_profile("cuda", None, cuda=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    assert resolve_policy("auto") == ("heuristic", "no ANTHROPIC_API_KEY")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    assert resolve_policy("auto")[0] == "claude" and resolve_policy("optuna")[0] == "optuna"
