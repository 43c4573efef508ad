"""The confinement in force is recorded in run.yaml and shown by `agent run`'s header, the
live/status header and `agent replay`; `--no-confine` (debugging) shows as such."""

import json
from pathlib import Path

import yaml

from agent.cli import main
from sandbox import confine

TOY_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "toy_regime" / "plugins"


def _run_args(run: Path, *extra: str) -> list[str]:
    return ["run", "--regime", "toy", "--regime-path", str(TOY_PLUGINS), "--slots", "1", "--iterations", "1",
            "--policy", "heuristic", "--no-live", "--run-dir", str(run), *extra]


def test_confinement_in_run_yaml_header_status_resume_and_replay(tmp_path, capsys):
    here = confine.describe(True)
    run = tmp_path / "run"
    assert main(_run_args(run)) == 0
    assert f"confinement {here}" in capsys.readouterr().out
    info = yaml.safe_load((run / "run.yaml").read_text())
    assert info["confine"] is True and info["confinement"] == here
    assert main(["status", str(run)]) == 0
    assert f"confinement {here}" in capsys.readouterr().out

    # a debugging resume without confinement says so everywhere
    assert main(["resume", str(run), "--iterations", "2", "--no-live", "--no-confine"]) == 0
    assert f"confinement {confine.OFF_LABEL}" in capsys.readouterr().out
    info = yaml.safe_load((run / "run.yaml").read_text())
    assert info["confine"] is False and info["confinement"] == confine.OFF_LABEL
    assert main(["status", str(run)]) == 0
    assert confine.OFF_LABEL in capsys.readouterr().out
    nodes = [json.loads(x) for x in (run / "nodes.jsonl").read_text().splitlines() if x.strip()]
    assert len(nodes) == 2

    assert main(["replay", str(run), str(nodes[0]["id"]), "--no-confine"]) == 0
    assert f"confinement {confine.OFF_LABEL}" in capsys.readouterr().out

    # the flag does not stick: a plain resume confines again
    assert main(["resume", str(run), "--iterations", "3", "--no-live"]) == 0
    assert f"confinement {here}" in capsys.readouterr().out
    assert yaml.safe_load((run / "run.yaml").read_text())["confinement"] == here


def test_no_confine_at_start_is_recorded(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_run_args(run, "--no-confine")) == 0
    assert f"confinement {confine.OFF_LABEL}" in capsys.readouterr().out
    assert yaml.safe_load((run / "run.yaml").read_text())["confinement"] == confine.OFF_LABEL
