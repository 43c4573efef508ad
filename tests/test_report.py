"""`agent report` on recorded runs: Markdown plus valid, non-empty PNGs."""

import json
import re

import pytest
from fixtures.make_recorded_run import make_recorded_run

from agent.cli import main
from agent.report import ReportError, lineage, tree_layout, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = path.read_bytes()
    assert len(data) > 8 and data[:8] == PNG_MAGIC, path


def test_report_on_recorded_two_batch_run(tmp_path, capsys):
    run = make_recorded_run(tmp_path / "run")
    assert main(["report", str(run)]) == 0
    md_path = run / "report" / "report.md"
    md = md_path.read_text()
    assert "wrote" in capsys.readouterr().out
    for section in ("# Run report: homeostasis [default]", "## Score per iteration", "## Best so far",
                    "## UCB tree", "## Parameters versus score", "## Strategies", "## Top nodes",
                    "## Best node: 5", "### Config", "### Code", "### Plots"):
        assert section in md, section
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert {"scores.png", "best_so_far.png", "ucb_tree.png", "params.png"} <= set(images)
    assert "best_plots/MLP_node.png" in images and "best_plots/embedding.png" in images
    for rel in images:
        _assert_png(md_path.parent / rel)
    # the best node's config is the YAML of node 5; the lineage goes root -> 2 -> 5
    assert "learning_rate_node_homeostasis: 0.005" in md
    assert ("Lineage: root → 2 (learning_rate_node_homeostasis: 1E-3 -> 3E-3) → "
            "5 (learning_rate_node_homeostasis: 3E-3 -> 5E-3)") in md
    # one parameter panel per mutable key of the regime that varied (slot-fixed time steps are not mutable)
    assert "## Parameters versus score\n\n![parameters versus score](params.png)" in md
    assert "No workspace in this run directory" in md
    # top nodes are ordered by score
    top = md.split("## Top nodes")[1].split("## Best node")[0]
    ids = [int(m) for m in re.findall(r"^\| (\d+) \|", top, flags=re.M)]
    assert ids[:3] == [5, 6, 2] and len(ids) == 8


def test_report_for_baseline_policies_without_prose(tmp_path):
    """optuna/random runs write nodes without strategy prose, all from root; the report still works."""
    run = make_recorded_run(tmp_path / "run", state="done")
    recs = [json.loads(x) for x in (run / "nodes.jsonl").read_text().splitlines()]
    for r in recs:
        r.update(parent=None, strategy="optuna", visual="", observation="", next="", commit=None)
    recs[3]["status"], recs[3]["score"] = "failed", 0.0
    (run / "nodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    path = write_report(run, out_dir=tmp_path / "out")
    md = path.read_text()
    assert path == tmp_path / "out" / "report.md"
    assert "| optuna | 8 |" in md and "Failed trainings: 1." in md
    for png in ("scores.png", "best_so_far.png", "ucb_tree.png", "params.png"):
        _assert_png(tmp_path / "out" / png)


def test_report_without_nodes_is_a_usage_error(tmp_path, capsys):
    run = make_recorded_run(tmp_path / "run")
    (run / "nodes.jsonl").write_text("")
    with pytest.raises(ReportError, match="no finished node"):
        write_report(run)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: ") and "nodes.jsonl has no finished node" in err[0] and err[1].startswith("hint:")


def test_tree_layout_and_lineage():
    nodes = [{"id": 1, "parent": None}, {"id": 2, "parent": None}, {"id": 3, "parent": 1},
             {"id": 4, "parent": 1}, {"id": 5, "parent": 4}, {"id": 6, "parent": 77}]
    pos = tree_layout(nodes)
    assert {i: d for i, (_, d) in pos.items()} == {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 1}
    assert pos[1][0] == (pos[3][0] + pos[4][0]) / 2 and pos[4][0] == pos[5][0]
    xs = sorted(x for x, _ in pos.values())
    assert len(set(pos[i][0] for i in (3, 5, 2, 6))) == 4  # leaves do not overlap
    assert [n["id"] for n in lineage(nodes, 5)] == [1, 4, 5] and xs[0] == 0.0


def test_report_shows_code_diff_from_workspace(tmp_path):
    """With a workspace, the best node's commit is diffed against root."""
    from pathlib import Path

    from regimes.base import MetricSpec, ParamSpec, Regime
    from sandbox.workspace import Workspace

    pkg = tmp_path / "src" / "regimes" / "toyws"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text("def step(x):\n    return x * 2\n")
    instr = tmp_path / "toy.md"
    instr.write_text("toy")
    regime = Regime(name="toyws", title="t", description="d", package="regimes.toyws", package_dir=pkg,
                    train_entry="regimes.toyws.train",
                    mutable=[ParamSpec(key="training.lr", type="float", low=1e-4, high=1e-1, log=True)],
                    metrics=[MetricSpec(name="r2")], primary_metric="r2", instructions=instr)
    run = make_recorded_run(tmp_path / "run", state="done")
    ws = Workspace.create(run / "workspace", regime)
    rel = next(p for p in ws.files(ws.root_commit) if p.endswith("toyws/train.py"))
    commit = ws.commit_edit(ws.root_commit, rel, "def step(x):\n    return x * 3\n", "[iter 5 slot 0] x3")
    recs = [json.loads(x) for x in (run / "nodes.jsonl").read_text().splitlines()]
    for r in recs:
        r["commit"] = commit if r["id"] == 5 else ws.root_commit
        if r["id"] == 5:
            r["code_changes"] = [{"file": rel, "function": "step", "change": "x3", "hypothesis": "faster",
                                  "strategy": "", "commit": commit}]
    (run / "nodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    md = write_report(run).read_text()
    code = md.split("### Code")[1].split("### Plots")[0]
    assert f"- node 5: `{rel}` step — x3 (hypothesis: faster)" in code
    assert "```diff" in code and "-    return x * 2" in code and "+    return x * 3" in code
    assert Path(run / "report" / "report.md").exists()


def test_param_panels_follow_the_regimes_mutable_keys(tmp_path):
    from rundir.store import read_nodes
    from agent.report import param_keys
    from regimes.registry import get_regime

    nodes = read_nodes(make_recorded_run(tmp_path / "run"))
    assert param_keys(nodes, get_regime("homeostasis")) == [
        "training.learning_rate_node_homeostasis", "training.learning_rate_embedding_homeostasis"]
    # without the regime: every training key that varied (here also the slot-fixed time step)
    assert param_keys(nodes, None) == ["training.homeostasis_time_step", "training.learning_rate_embedding_homeostasis",
                                       "training.learning_rate_node_homeostasis"]
