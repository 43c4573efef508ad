"""The loop on a real regime (rate_constants, quick profile, tiny training budget). Slow: run with -m slow."""

import json
import re

import pytest
import yaml

from rundir.memory import Memory
from agent.run import RunOptions, start_run
from rundir.store import Store

pytestmark = pytest.mark.slow


def test_rate_constants_two_slots_two_batches(tmp_path):
    # the scripted prepare shrinks the training budget through the real validation; later steps fall back
    # to the heuristic (the scripted policy's script ends), so the analysis is the heuristic's
    small = {"training.data_augmentation_loop": 10}
    script = [{"step": "prepare", "calls": [
        {"tool": "set_config", "args": {"slot": 0, "changes": small}},
        {"tool": "finish_mutation", "args": {"slot": 0, "mutation": "data_augmentation_loop: 300 -> 10"}},
        {"tool": "set_config", "args": {"slot": 1, "changes": {**small, "training.learning_rate_k": 0.01}}},
        {"tool": "set_config", "args": {"slot": 1, "changes": {"training.learning_rate_k": 0.5}}},  # out of range
        {"tool": "finish_mutation", "args": {"slot": 1, "mutation": "learning_rate_k: 5E-3 -> 1E-2"}}]}]
    sp = tmp_path / "script.yaml"
    sp.write_text(yaml.safe_dump(script))
    d = tmp_path / "run"
    start_run(RunOptions(regime="rate_constants", slots=2, iterations=4, policy="scripted", script=sp,
                         run_dir=d, profile="quick", device="cpu"))
    nodes = Store(d / "nodes.jsonl").nodes()
    assert [n.id for n in nodes] == [1, 2, 3, 4]
    assert all(n.status == "ok" and "rate_constants_R2" in n.metrics for n in nodes)
    assert nodes[1].config["training"]["learning_rate_k"] == 0.01
    entries = re.findall(r"(?m)^## Iter (\d+): (converged|partial|failed)$", (d / "analysis.md").read_text())
    assert [int(i) for i, _ in entries] == [1, 2, 3, 4]
    text = (d / "analysis.md").read_text()
    assert re.search(r"(?m)^Config: sim_seed=\d+, seed=\d+", text) and "Metrics: rate_constants_R2=" in text
    heads = [l for l in (d / "memory.md").read_text().splitlines() if l.startswith("#")]
    assert heads[-1] == "### Emerging Observations" and "### Best Configurations" in heads
    rej = [json.loads(l) for l in (d / "rejected.jsonl").read_text().splitlines()]
    assert [(r["tool"], "out of range" in r["error"]) for r in rej] == [("set_config", True)]
    assert (d / "iterations" / "iter_002" / "slot_01" / "plots").is_dir()
    # n_iter_block is 8: the block is still open, the UCB file lists the block's 4 nodes
    ucb = (d / "ucb_scores.txt").read_text().splitlines()
    assert sorted(int(l.split(":")[0].split()[1]) for l in ucb) == [1, 2, 3, 4]
    assert len(Memory.load(d / "memory.md").bodies["Iterations This Block"].splitlines()) == 4
