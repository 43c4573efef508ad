"""benchmarks/search_quality.py end to end at a tiny budget (toy regime): every policy, the
noise floor, budgets read off one run, resuming a run to a larger budget, the summary."""

import json
from pathlib import Path

from tests._bench import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests/fixtures/toy_regime/plugins")


def _load():
    return load_benchmark("search_quality")


def test_curve_helpers():
    sq = _load()
    curve = sq.best_so_far([{"id": 2, "score": 0.5}, {"id": 1, "score": 0.2}, {"id": 3, "score": 0.4}])
    assert curve == [0.2, 0.5, 0.5]
    assert sq.iterations_to_fraction(curve) == 2
    assert sq.iterations_to_fraction([0.0, 0.0]) is None
    assert sq.parse_target("stoichiometry:tied") == ("stoichiometry", "tied")
    assert sq.parse_target("rate_constants") == ("rate_constants", None)


def test_noise_floor_and_gain_judged_against_it():
    sq = _load()
    rows = [{"kind": "repeat", "target": "t", "policy": "default", "seed": k, "score": s}
            for k, s in enumerate([0.50, 0.55, 0.60])]
    rows += [{"kind": "policy", "target": "t", "policy": "optuna", "seed": 0, "curve": [0.5, 0.62, 0.70],
              "wall_s": 60.0, "cost_usd": 0.0},
             {"kind": "policy", "target": "t", "policy": "random", "seed": 0, "curve": [0.5, 0.58, 0.6],
              "wall_s": 60.0, "cost_usd": 0.0}]
    nf = sq.noise_floor(rows, "t")
    assert nf["median"] == 0.55 and abs(nf["floor"] - 0.10) < 1e-12
    table = sq.summarise(rows, ["t"], ["optuna", "random", "claude"], [2, 3], has_key=False)
    lines = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in table.splitlines() if line.startswith("| ")}
    assert "+0.1500 | yes" in lines[("optuna", "3")]   # 0.70 - 0.55 > 0.10
    assert "+0.0700 | no" in lines[("optuna", "2")]    # 0.62 - 0.55 is inside the floor
    assert "+0.0500 | no" in lines[("random", "3")]
    assert "not run (no ANTHROPIC_API_KEY)" in table


def test_benchmark_runs_end_to_end_resumes_and_summarises(tmp_path, monkeypatch):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    sq = _load()
    out = tmp_path / "sq"
    base = ["--regime", "toy", "--regime-path", TOY, "--slots", "2", "--seeds", "1", "--repeats", "2",
            "--out", str(out)]
    assert sq.main(base + ["--budget", "1", "--budget", "2"]) == 0
    rows = sq.read_results(out)
    pols = [r for r in rows if r["kind"] == "policy"]
    assert sorted(r["policy"] for r in pols) == ["cmaes", "heuristic", "optuna", "random"]
    assert sorted(r["seed"] for r in rows if r["kind"] == "repeat") == [0, 1]
    for r in pols:
        assert r["n_nodes"] == 2 and len(r["curve"]) == 2 and 0.0 <= r["curve"][-1] <= 1.0
        nodes = [json.loads(l) for l in (Path(r["run_dir"]) / "nodes.jsonl").read_text().splitlines()]
        if r["policy"] != "heuristic":
            assert [n["strategy"] for n in nodes] == [r["policy"]] * 2
        assert "## Iter 1:" in (Path(r["run_dir"]) / "analysis.md").read_text()
    table = (out / "search_quality.md").read_text()
    assert "Noise floor (default config, 2 training seeds)" in table
    for pol in ("heuristic", "optuna", "cmaes", "random"):
        assert f"| {pol} | 1 |" in table and f"| {pol} | 2 |" in table
    assert (out / "best_so_far_toy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a larger budget resumes the same runs (their first trainings are kept) and skips the repeats
    first = {r["policy"]: [json.loads(l)["id"] for l in (Path(r["run_dir"]) / "nodes.jsonl").read_text().splitlines()]
             for r in pols}
    assert sq.main(base + ["--budget", "4", "--policy", "optuna", "--policy", "cmaes"]) == 0
    rows = sq.read_results(out)
    assert len([r for r in rows if r["kind"] == "repeat"]) == 2
    longer = [r for r in rows if r["kind"] == "policy" and len(r["curve"]) == 4]
    assert sorted(r["policy"] for r in longer) == ["cmaes", "optuna"]
    for r in longer:
        ids = [json.loads(l)["id"] for l in (Path(r["run_dir"]) / "nodes.jsonl").read_text().splitlines()]
        assert ids[:2] == first[r["policy"]] and len(ids) == 4
    assert sq.main(["--out", str(out), "--summary", "--budget", "2", "--budget", "4"]) == 0
    table = (out / "search_quality.md").read_text()
    assert "| cmaes | 4 | 1 |" in table and "| cmaes | 2 | 1 |" in table  # the resumed run counts once
