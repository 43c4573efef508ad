"""continue_from (Regime Comparison), failed trainings, heuristic strategy conditions."""

import json
from types import SimpleNamespace as NS

import yaml

from rundir.memory import Memory, parse_comparison
from agent.policies.heuristic import HeuristicPolicy
from agent.run import start_run
from regimes.base import Degeneracy
from rundir.records import NodeRecord
from rundir.store import Store
from tests.loop_helpers import toy_options


def test_continue_carries_knowledge_and_compares_variants(tmp_path):
    a = tmp_path / "a"
    start_run(toy_options(a, iterations=4))
    mem_a = Memory.load(a / "memory.md")
    mem_a.update("Established Principles", "- lr near 1E-2 works (evidence: 3 iterations)", "replace")
    mem_a.save(a / "memory.md")
    b = tmp_path / "b"
    start_run(toy_options(b, variant="hold", iterations=2, continue_from=a))
    mem = Memory.load(b / "memory.md")
    assert "lr near 1E-2 works" in mem.bodies["Established Principles"]
    assert mem.bodies["Previous Block Summary"].startswith("Continued from run a (toy, variant default)")
    rows = {(r.regime, r.variant): r for r in parse_comparison(mem.bodies["Regime Comparison"])}
    assert set(rows) == {("toy", "default"), ("toy", "hold")}
    best_a = Store(a / "nodes.jsonl").best()
    assert rows[("toy", "default")].best_node == best_a.id and rows[("toy", "default")].iterations == 4
    assert rows[("toy", "hold")].run == "b" and rows[("toy", "hold")].iterations == 2
    heads = [l for l in (b / "memory.md").read_text().splitlines() if l.startswith("#")]
    assert heads.index("### Regime Comparison") == heads.index("### Open Questions") + 1
    assert heads[-1] == "### Emerging Observations"


def test_failed_training_is_recorded_and_logged(tmp_path):
    script = [{"step": "prepare", "calls": [
        {"tool": "finish_mutation", "args": {"slot": 0, "mutation": "baseline"}},
        {"tool": "set_config", "args": {"slot": 1, "changes": {"training.learning_rate": 0.1}}},
        {"tool": "finish_mutation", "args": {"slot": 1, "mutation": "learning_rate: 1E-3 -> 1E-1"}}]}]
    sp = tmp_path / "s.json"
    sp.write_text(json.dumps(script))
    d = tmp_path / "run"
    start_run(toy_options(d, policy="scripted", script=sp, iterations=4))
    nodes = Store(d / "nodes.jsonl").nodes()
    assert (nodes[1].status, nodes[1].classification, nodes[1].score) == ("failed", "failed", 0.0)
    assert "diverged" in nodes[1].reason or "exit" in nodes[1].reason
    entry = (d / "analysis.md").read_text().split("## Iter 2:")[1].split("## Iter 3:")[0]
    assert "Metrics: training failed: " in entry
    assert all(n.parent != 2 for n in nodes[2:])  # the heuristic never builds on a failed node


def _hist(scores, muts=None, gaps=None, parents=None):
    out = []
    for i, s in enumerate(scores, 1):
        out.append(NodeRecord(id=i, parent=(parents or {}).get(i), block=1, iter_in_block=i, iteration=i, slot=0,
                              score=s, mutation=(muts or {}).get(i, f"p{i}: 1 -> 2"), status="ok",
                              degeneracy=Degeneracy(gap=(gaps or {}).get(i), diagnosis="n/a")))
    return out


def test_strategy_table_conditions():
    ctx = NS(regime=NS(code_strategies=[], editable=[]), code_enabled=True)
    h = HeuristicPolicy()
    assert h._conditions(ctx, _hist([0.95, 0.92, 0.91], parents={2: 1, 3: 2})) == "failure-probe"
    assert h._conditions(ctx, _hist([0.5, 0.6, 0.55], gaps={1: 0.4, 2: 0.5, 3: 0.35})) == "degeneracy-break"
    same = {i: f"lr: {i} -> {i + 1}" for i in range(1, 5)}
    assert h._conditions(ctx, _hist([0.1, 0.3, 0.5, 0.7], muts=same)) == "switch-dimension"
    assert h._conditions(ctx, _hist([0.95, 0.2, 0.93])) == "recombine"
    assert h._conditions(ctx, _hist([0.2, 0.5, 0.52, 0.51])) == "forced-branch"
    ctx.regime = NS(code_strategies=["x"], editable=["f"])
    assert h._conditions(ctx, _hist([0.2, 0.5, 0.52, 0.51])) == "code-modification"
    assert h._conditions(ctx, _hist([0.1, 0.5])) is None


def test_block_end_regime_gets_code_edits_only_between_blocks(tmp_path, monkeypatch):
    seen = []
    orig = HeuristicPolicy.act

    def spy(self, ctx, tools):
        if ctx.step == "mutate":
            seen.append((ctx.block, ctx.iter_in_block, ctx.code_allowed))
        return orig(self, ctx, tools)

    monkeypatch.setattr(HeuristicPolicy, "act", spy)
    monkeypatch.setattr(HeuristicPolicy, "_plateaued", staticmethod(lambda nodes: True))
    d = tmp_path / "run"
    start_run(toy_options(d, regime="toy_homeo", iterations=6))  # block 1 = batches 1-2
    assert seen == [(1, 2, False), (2, 0, True)]
    nodes = Store(d / "nodes.jsonl").nodes()
    assert nodes[5].slot == 1 and nodes[5].parent is None
    assert nodes[5].strategy == "code-modification" and nodes[5].mutation.line().startswith("[code] update: double-step")
    assert nodes[5].commit != nodes[4].commit
    entry = (d / "analysis.md").read_text().split("## Iter 6:")[1]
    assert "CODE MODIFICATION:\n  File: toyfit/train.py\n  Function: update" in entry
    assert "Strategy: double-step" in entry and "Slot: slot_1 (n_epochs=2)" in entry
