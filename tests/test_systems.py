"""The system (simulation seed) as a dimension of the search (issue 15): per-system comparisons,
recipe robustness, the seed strategies of the heuristic, and what the run's files show."""

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from agent import systems as S
from agent.memory import best_configs_table, config_line, memory_line
from agent.policies.heuristic import HeuristicPolicy
from agent.report import write_report
from agent.run import start_run
from rundir.records import NodeRecord
from rundir.store import Store
from agent.ucb import tag_systems, ucb_scores
from regimes.registry import get_regime
from tests.loop_helpers import TOY_PLUGINS, at, open_ctx, toy_options
from tools.toolbox import ToolBox

REGIME = get_regime("toy_systems", [TOY_PLUGINS])


def _cfg(seed: int, lr: float = 1e-3, aug: int = 10) -> dict:
    cfg = REGIME.default_config()
    cfg["simulation"]["seed"] = seed
    cfg["training"]["learning_rate"] = lr
    cfg["training"]["data_augmentation_loop"] = aug
    return cfg


def _node(i, parent, seed, score, lr=1e-3, strategy="exploit", block=1, mutation="", **kw) -> dict:
    return dict(id=i, parent=parent, block=block, iter_in_block=i, iteration=i, slot=0, strategy=strategy,
                mutation=mutation, config=_cfg(seed, lr), commit="c0", score=score, classification="partial",
                metrics={"fit_R2": score, "test_R2": 0.5 + seed / 1000}, **kw)


def _rec(**d) -> NodeRecord:
    return NodeRecord(**d)


# ----- systems.py: per system, robustness -----

def test_robustness_groups_a_recipe_over_its_systems_mean_and_worst():
    nodes = [_node(1, None, 42, 0.8), _node(2, 1, 43, 0.3), _node(3, 1, 42, 0.6, lr=2e-3),
             _node(4, 3, 44, 0.5, lr=2e-3), _node(5, 1, 43, 0.5)]  # node 5 reruns node 2's recipe on system 43
    rob = S.robustness(nodes)
    r1 = next(r for r in rob if 1 in r.node_ids)
    assert r1.node_ids == [1, 2, 5] and r1.per_system == {42: 0.8, 43: 0.4}  # two runs on 43: their mean
    assert (round(r1.mean, 6), r1.worst, r1.worst_system) == (0.6, 0.4, 43)
    # the most robust first: both ran on 2 systems; the lr=2e-3 recipe's worst (0.5) beats 0.4
    assert rob[0].node_ids == [3, 4] and rob[1] is r1
    assert "2 systems (seeds 42 0.8000, 43 0.4000): mean 0.6000, worst 0.4000 (seed 43)" in S.robustness_line(r1)
    per = {r.system: r for r in S.by_system(nodes, identifiability=["test_R2"])}
    assert (per[42].best_id, per[43].best_id, per[43].nodes) == (1, 5, 2)
    assert per[43].identifiability == {"test_R2": 0.543}


def test_a_code_change_is_another_recipe():
    a, b = _node(1, None, 42, 0.8), _node(2, None, 43, 0.3)
    b["commit"] = "c1"
    assert S.recipe_of(a) != S.recipe_of(b) and all(r.n_systems == 1 for r in S.robustness([a, b]))


def test_ucb_names_the_system_only_when_the_block_mixes_them():
    nodes = [_rec(**_node(1, None, 42, 0.8)), _rec(**_node(2, 1, 43, 0.3))]
    one = tag_systems(ucb_scores(nodes[:1], 1.0), {1: "42"})
    assert "system=" not in one[0].line()
    both = tag_systems(ucb_scores(nodes, 1.0), {1: "42", 2: "43"})
    assert [e.line().split("score=")[1].split(", Mutation")[0] for e in both] == ["0.8000, system=42",
                                                                                  "0.3000, system=43"]


def test_memory_records_results_per_system_and_the_config_line_names_it():
    recs = [_rec(**_node(1, None, 42, 0.8)), _rec(**_node(2, 1, 43, 0.3, mutation="seed: 42 -> 43"))]
    assert config_line(REGIME, recs[1].config).startswith("sim_seed=43, seed=0, lr=1E-3")
    assert "parent=1, exploit, system=43): seed: 42 -> 43" in memory_line(REGIME, recs[1])
    table = best_configs_table(REGIME, recs)
    assert table.splitlines()[0].startswith("| Blk | Node | system | seed | lr |")
    assert "| 1 | 2 | 43 | 0 |" in table
    assert "- system 42: 1 nodes, best node 1 score 0.8000; data: test_R2=0.542" in table
    assert "- recipe of node 1 (nodes 1, 2): 2 systems (seeds 42 0.8000, 43 0.3000): mean 0.5500, worst 0.3000" in table


def test_a_regime_with_a_fixed_system_keeps_its_tables():
    toy = get_regime("toy", [TOY_PLUGINS])
    recs = [_rec(**{**_node(1, None, 42, 0.8), "config": toy.default_config()})]
    assert "system" not in best_configs_table(toy, recs) and "sim_seed" not in config_line(toy, recs[0].config)


# ----- the heuristic's seed strategies: triggers -----

def _cond(nodes: list[dict], block: int = 1, code_enabled: bool = True, regime=REGIME):
    ctx = SimpleNamespace(block=block, regime=regime, code_enabled=code_enabled)
    return HeuristicPolicy()._seed_condition(ctx, {d["id"]: _rec(**d) for d in nodes})


def test_seed_robustness_when_every_perturbation_of_the_best_degrades():
    nodes = [_node(1, None, 42, 0.8), _node(2, 1, 42, 0.7, lr=2e-3), _node(3, 1, 42, 0.6, lr=5e-4)]
    strategy, parent, reason = _cond(nodes)
    assert (strategy, parent) == ("seed-robustness", 1) and "[system simulation.seed=43]" in reason
    nodes[2]["score"] = 0.9  # one perturbation improved: no trigger (node 3 is the new best, no children)
    assert _cond(nodes) is None
    nodes[2]["score"] = 0.6  # once replayed at a new seed it is not replayed again
    assert _cond(nodes + [_node(4, 1, 43, 0.3, strategy="seed-robustness")])[0] != "seed-robustness"


def test_universal_recipe_validate_when_a_recipe_beats_the_old_at_two_seeds():
    nodes = [_node(1, None, 42, 0.5), _node(2, 1, 43, 0.3), _node(3, 1, 44, 0.4),  # old recipe at 3 systems
             _node(4, 1, 42, 0.7, lr=2e-3), _node(5, 4, 43, 0.6, lr=2e-3)]  # new recipe better at 42 and 43
    strategy, parent, reason = _cond(nodes)
    assert (strategy, parent) == ("universal-recipe-validate", 4) and "[system simulation.seed=44]" in reason
    # tested at every system of the run: nothing left to validate
    done = _cond(nodes + [_node(6, 4, 44, 0.55, lr=2e-3, strategy="universal-recipe-validate")])
    assert done is None or done[0] != "universal-recipe-validate"


def test_variance_reduction_identifiability_and_cross_seed_triggers():
    # one recipe, range 0.5 over two systems -> vary aug/epochs at its worst run (system 43)
    nodes = [_node(1, None, 42, 0.8), _node(2, 1, 43, 0.3)]
    assert _cond(nodes)[:2] == ("variance-reduction", 2)
    # a plateau after every code strategy was tried -> identifiability-test on the best, at a new seed
    flat = [_node(1, None, 42, 0.50), _node(2, 1, 42, 0.52, lr=2e-3, code_changes=[{"file": "toyfit/train.py", "strategy": "double-step"}]),
            _node(3, 2, 42, 0.51, lr=3e-3)]
    strategy, parent, reason = _cond(flat)
    assert (strategy, parent) == ("identifiability-test", 2) and "[system simulation.seed=43]" in reason
    flat[1]["code_changes"] = []  # a code strategy is left: not yet
    assert _cond(flat) is None
    # best unchanged for 2+ blocks with two systems -> tune at the weaker system's best node
    # (node 5 already reduced the variance of node 1's recipe; no plateau; node 1 has one child on its system)
    old = [_node(1, None, 42, 0.8), _node(2, 1, 43, 0.3), _node(3, 2, 43, 0.35, lr=2e-3, block=2),
           _node(4, 1, 42, 0.7, lr=3e-3, block=3), _node(5, 2, 43, 0.31, lr=4e-3, strategy="variance-reduction", block=3),
           _node(6, 3, 42, 0.79, lr=5e-3, block=3)]
    assert _cond(old, block=3)[:2] == ("cross-seed-optimize", 3)
    assert _cond(old, block=2) is None  # the best (block 1) is only one block old
    # a regime whose system is fixed (homeostasis, toy): never
    assert _cond(nodes, regime=get_regime("toy", [TOY_PLUGINS])) is None


# ----- the loop: a seed change travels to the files, the live view and the report -----

def test_seed_mutation_moves_the_slot_to_the_named_system(tmp_path):
    d = tmp_path / "run"
    start_run(toy_options(d, regime="toy_systems", iterations=2))
    ctx = open_ctx(d)
    env = ctx.env
    env.save_plan(env.load_plan(1).model_copy(update={
        "parent": 1, "strategy": "seed-robustness", "commit": ctx.workspace.root_commit,
        "reason": "all perturbations degrade [system simulation.seed=57]"}))
    env.save_slot_config(1, ctx.store.get(1).config)
    env.save_plan(env.load_plan(0).model_copy(update={"parent": 1, "strategy": "exploit",
                                                      "commit": ctx.workspace.root_commit}))
    env.save_slot_config(0, ctx.store.get(1).config)
    step = at(ctx, "mutate", [0, 1], iter_in_block=2, iterations_done=2)
    tools = ToolBox(env, step)
    HeuristicPolicy(seed=0).act(ctx.step_context(step, []), tools)
    assert tools.done()
    plan = env.load_plan(1)
    assert plan.mutation.line() == "seed: 42 -> 57 (seed change: simulation.seed, a new system)"
    assert env.slot_config(1)["simulation"]["seed"] == 57
    assert env.slot_config(1)["training"] == ctx.store.get(1).config["training"]  # the same recipe
    assert env.slot_config(0)["simulation"]["seed"] == 42  # exploit stays on its system


def test_a_run_over_two_systems_says_so_everywhere(tmp_path):
    script = [{"step": "prepare", "calls": [
        {"tool": "finish_mutation", "args": {"slot": 0, "mutation": "baseline"}},
        {"tool": "set_config", "args": {"slot": 1, "changes": {"simulation.seed": 43}}},
        {"tool": "finish_mutation", "args": {"slot": 1, "mutation": "seed: 42 -> 43 (seed change)"}}]}]
    sp = tmp_path / "script.yaml"
    sp.write_text(yaml.safe_dump(script))
    d = tmp_path / "run"
    start_run(toy_options(d, regime="toy_systems", policy="scripted", script=sp, iterations=6))
    nodes = Store(d / "nodes.jsonl").nodes()
    assert [n.config["simulation"]["seed"] for n in nodes[:2]] == [42, 43]
    analysis = (d / "analysis.md").read_text()
    assert "## Iter 2: " in analysis and "Config: sim_seed=43, seed=0, lr=1E-3" in analysis
    memory = (d / "memory.md").read_text()
    assert "| Blk | Node | system |" in memory and "- system 43: " in memory
    assert "- recipe of node 1 (nodes 1, 2): 2 systems (seeds 42 " in memory
    assert "system=" in (d / "ucb_scores.txt").read_text()
    st = json.loads((d / "status.json").read_text())
    assert {s["system"] for s in st["slots"]} <= {"42", "43", "44"} and all("system" in s for s in st["slots"])
    report = write_report(d).read_text()
    assert "## Systems and robustness" in report and "- Robustness over 2 systems (simulation.seed)" in report
    assert "| node | parent | block | slot | system |" in report
    # the heuristic's analysis of later nodes never reads a seed change as a config effect
    for n in nodes[2:]:
        parent = next((p for p in nodes if p.id == n.parent), None)
        if parent is not None and parent.config["simulation"]["seed"] != n.config["simulation"]["seed"]:
            assert "a seed change, not a config effect" in n.observation


def test_live_view_shows_each_slots_system(tmp_path):
    from agent.live import render
    from rich.console import Console

    d = tmp_path / "run"
    start_run(toy_options(d, regime="toy_systems", iterations=2))
    console = Console(width=140, record=True)
    console.print(render(d, width=140))
    text = console.export_text()
    assert "system" in text and " 42 " in text


def test_variance_reduction_and_cross_seed_mutate_the_tables_keys(tmp_path):
    d = tmp_path / "run"
    start_run(toy_options(d, regime="toy_systems", iterations=2))
    ctx = open_ctx(d)
    env = ctx.env
    for slot, strategy in ((0, "variance-reduction"), (1, "cross-seed-optimize")):
        env.save_plan(env.load_plan(slot).model_copy(update={"parent": 1, "strategy": strategy,
                                                             "commit": ctx.workspace.root_commit}))
        env.save_slot_config(slot, ctx.store.get(1).config)
    step = at(ctx, "mutate", [0, 1], iter_in_block=2, iterations_done=2)
    tools = ToolBox(env, step)
    HeuristicPolicy(seed=0).act(ctx.step_context(step, []), tools)
    assert tools.done()
    # variance-reduction: longer training (aug/epochs up), on the same system
    vr = env.load_plan(0).mutation.line()
    assert vr.split(":")[0] in ("data_augmentation_loop", "n_epochs") and env.slot_config(0)["simulation"]["seed"] == 42
    assert float(vr.split("->")[1].split()[0]) > float(vr.split(":")[1].split("->")[0])
    # cross-seed-optimize: the toy has batch_size of the table's keys (n_epochs_init, batch_size, lr_W)
    assert env.load_plan(1).mutation.line().startswith("batch_size: ")
