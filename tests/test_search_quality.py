"""benchmarks/search_quality.py end to end at a tiny budget (toy regime)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("search_quality", ROOT / "benchmarks" / "search_quality.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_curve_helpers():
    sq = _load()
    curve = sq.best_so_far([{"id": 2, "score": 0.5}, {"id": 1, "score": 0.2}, {"id": 3, "score": 0.4}])
    assert curve == [0.2, 0.5, 0.5]
    assert sq.iterations_to_fraction(curve) == 2
    assert sq.iterations_to_fraction([0.0, 0.0]) is None


def test_benchmark_runs_end_to_end_at_a_tiny_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    sq = _load()
    out = tmp_path / "sq"
    rc = sq.main(["--regime", "toy", "--regime-path", str(ROOT / "tests/fixtures/toy_regime/plugins"),
                  "--iterations", "2", "--slots", "2", "--seeds", "1", "--out", str(out)])
    assert rc == 0
    rows = json.loads((out / "search_quality.json").read_text())
    assert {r["policy"] for r in rows} == {"heuristic", "optuna", "random"}
    for r in rows:
        assert r["n_nodes"] == 2 and len(r["curve"]) == 2 and 0.0 <= r["best"] <= 1.0
        nodes = [json.loads(l) for l in (Path(r["run_dir"]) / "nodes.jsonl").read_text().splitlines()]
        assert [n["strategy"] for n in nodes if r["policy"] != "heuristic"] in ([], [r["policy"]] * 2)
        assert "## Iter 1:" in (Path(r["run_dir"]) / "analysis.md").read_text()
    table = (out / "search_quality.md").read_text()
    for pol in ("heuristic", "optuna", "random"):
        assert f"| toy | {pol} |" in table
    png = out / "best_so_far_toy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
