"""Mutations are records (rundir.records.Mutation): parsed once from the line finish_mutation gets,
written back in the seeds' format by `Mutation.line()` only; runs made with string mutations load."""

import json
import threading
from pathlib import Path

import pytest

from agent.run import resume_run, start_run
from regimes.registry import get_regime
from rundir.records import CodeChange, ConfigChange, Launch, Mutation, NodeRecord, SlotPlan, mutable_keys
from rundir.store import Store
from tests.loop_helpers import TOY_PLUGINS, at, toy_options

#: the shapes the seeds and the loop write (seeds 000-004: `lr_W: 2E-3 -> 5E-3`, `[code] fn: description`)
LINES = ["lr_W: 2E-3 -> 5E-3", "learning_rate: 1E-3 -> 2E-3 (on the config of best node 3)",
         "seed: 42 -> 57 (seed change: simulation.seed, a new system)", "lr: 1E-3 -> 2E-3; batch_size: 8 -> 16",
         "[code] data_train_signal: short description", "baseline (default config)",
         "recombine: node 3 + node 5 (lr=1E-3, coeff=2)", "none: no admissible one-parameter step",
         "recurrent: False -> True", "activation: relu -> tanh", "lr: 1E-3 -> 2E-3 (halved; then doubled)",
         "lr: 1E-3 -> 2E-3 and batch 8 -> 16", ""]


@pytest.mark.parametrize("line", LINES)
def test_a_line_reads_back_as_written(line):
    m = Mutation.parse(line)
    assert m.line() == line
    assert Mutation.model_validate_json(m.model_dump_json()) == m  # the stored form loads back


def test_the_record_holds_keys_values_and_directions():
    m = Mutation.parse("learning_rate: 1E-3 -> 2E-3 (on the config of best node 3)")
    assert m.changes == [ConfigChange(name="learning_rate", old=1e-3, new=2e-3)]
    assert (m.param, m.direction, m.note) == ("learning_rate", 1, "(on the config of best node 3)")
    assert Mutation.parse("n_epochs: 20 -> 10").direction == -1
    two = Mutation.parse("lr: 1E-3 -> 2E-3; batch_size: 8 -> 16")
    assert [c.name for c in two.changes] == ["lr", "batch_size"] and (two.param, two.direction) == ("lr", 0)
    for other in ("recurrent: False -> True", "activation: relu -> tanh"):  # no number, no direction
        assert Mutation.parse(other).direction == 0 and Mutation.parse(other).param is not None
    code = Mutation.parse("[code] update: double-step")
    assert code.code == CodeChange(file="", function="update", change="double-step") and code.param is None
    for text in ("baseline (default config)", "recombine: node 3 + node 5 (lr=1E-3)", "[system seed=43] replay"):
        assert Mutation.parse(text).param is None and Mutation.parse(text).note == text


def test_the_regime_names_the_keys():
    """'training.learning_rate: a -> b' is recorded under its name (one format in the records); an unknown
    dotted head stays as written."""
    keys = mutable_keys(get_regime("toy", [TOY_PLUGINS]))
    m = Mutation.parse("training.learning_rate: 1E-3 -> 2E-3", keys)
    assert (m.changes[0].name, m.changes[0].key, m.line()) == ("learning_rate", "training.learning_rate",
                                                               "learning_rate: 1E-3 -> 2E-3")
    assert Mutation.parse("learning_rate: 1E-3 -> 2E-3", keys).changes[0].key == "training.learning_rate"
    assert Mutation.parse("training.nope: 1 -> 2", keys).line() == "training.nope: 1 -> 2"
    assert Mutation.parse("training.nope: 1 -> 2", keys).changes[0].key == ""


def test_one_renderer_writes_every_line():
    """set_config's suggested line, the baselines' and a record built in code are the same text."""
    from agent.policies.baselines import mutation_line

    built = Mutation(changes=[ConfigChange.of("training.learning_rate_k", 1e-3, 5e-3)]).line()
    assert built == mutation_line({"training.learning_rate_k": 1e-3}, {"training.learning_rate_k": 5e-3}) \
        == "learning_rate_k: 1E-3 -> 5E-3"
    assert Mutation(code=CodeChange(file="f.py", function="update", change="x")).line() == "[code] update: x"


def test_string_mutations_of_older_runs_load():
    """nodes.jsonl lines, plans and launch.json written before the record held the line itself."""
    node = NodeRecord.model_validate({"id": 1, "parent": None, "block": 1, "iter_in_block": 1, "iteration": 1,
                                      "slot": 0, "mutation": "lr: 1E-3 -> 2E-3"})
    assert node.mutation.param == "lr" and node.mutation.line() == "lr: 1E-3 -> 2E-3"
    assert SlotPlan.model_validate({"slot": 0, "mutation": ""}).mutation == Mutation()
    launch = Launch.model_validate({"node": 1, "iteration": 1, "slot": 0, "commit": "c", "mutation": "[code] f: g"})
    assert launch.mutation.code.function == "f"
    assert Mutation.of(None) == Mutation() and Mutation.of({"bad": 1}).note == "{'bad': 1}"


def _as_strings(run_dir: Path) -> None:
    """Rewrite a run's mutations in the string form runs had before the record."""
    def flat(d: dict) -> dict:
        return {**d, "mutation": Mutation.of(d["mutation"]).line()}

    lines = [json.dumps(flat(json.loads(x))) for x in (run_dir / "nodes.jsonl").read_text().splitlines()]
    (run_dir / "nodes.jsonl").write_text("\n".join(lines) + "\n")
    for p in [*run_dir.glob("plans/*.json"), *run_dir.glob("iterations/*/*/launch.json")]:
        p.write_text(json.dumps(flat(json.loads(p.read_text()))))


def test_a_run_with_string_mutations_resumes_as_it_would_have_run(tmp_path):
    """Resume after the format change: the heuristic reads the old lines' keys and directions and
    takes the decisions it takes on records (same parents, strategies, mutations, configs)."""
    def run(name: str, old_format: bool) -> list[tuple]:
        d = tmp_path / name
        stop = threading.Event()
        start_run(toy_options(d, iterations=8, seed=4), stop=stop,
                  on_event=lambda ev: ev["type"] == "batch_logged" and ev["iteration"] == 2 and stop.set())
        assert len(Store(d / "nodes.jsonl")) == 4
        if old_format:
            _as_strings(d)
            assert isinstance(json.loads((d / "nodes.jsonl").read_text().splitlines()[2])["mutation"], str)
        resume_run(d)
        return [(n.parent, n.strategy, n.mutation.line(), n.config) for n in Store(d / "nodes.jsonl").nodes()]

    new, old = run("records", False), run("strings", True)
    assert len(new) == 8 and old == new
    assert any(" -> " in m for _, _, m, _ in new[2:])  # the resumed batches did change parameters


def test_the_search_tree_holds_the_unlogged_batch_in_its_block(toy_ctx):
    """At analyse and select_parent the batch is not logged yet: the policy sees it as the node records
    the log step writes (this block). The heuristic's old adapter gave it block 0, so a best node just
    found in block 3 read as 'best unchanged since block 0' (cross-seed-optimize's trigger)."""
    (toy_ctx.run_dir / "nodes.jsonl").write_text("")
    toy_ctx.store.refresh()
    step = at(toy_ctx, "select_parent", block=3, iter_in_block=4)
    nodes = toy_ctx.step_context(step, []).nodes
    assert [(n.id, n.block, n.iter_in_block, n.iteration) for n in nodes] == [(1, 3, 5, 1), (2, 3, 6, 1)]
    assert [n.mutation for n in nodes] == [step.batch[s].mutation for s in sorted(step.batch)]
