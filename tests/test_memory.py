"""memory.md structure, section edits, code-rendered analysis.md entries."""

import re

import pytest

from agent.memory import best_configs_table, initial_memory, render_entry
from rundir.memory import SECTIONS, ComparisonRow, Memory, MemoryError_, parse_comparison, upsert_comparison
from rundir.records import NodeRecord
from tests.loop_helpers import TOY_PLUGINS
from regimes.registry import get_regime


@pytest.fixture(scope="module")
def toy():
    return get_regime("toy", [TOY_PLUGINS])


@pytest.fixture(scope="module")
def homeo():
    return get_regime("toy_homeo", [TOY_PLUGINS])


def _headings(text):
    return [ln for ln in text.splitlines() if ln.startswith("#")]


def _rec(**kw):
    base = dict(id=12, parent=7, block=2, iter_in_block=3, iteration=6, slot=1, strategy="exploit",
                mutation="learning_rate: 1E-3 -> 5E-3", parent_rule="highest UCB",
                config={"training": {"seed": 42, "learning_rate": 0.005, "coeff_reg": 2.0, "batch_size": 8,
                                     "n_epochs": 2, "data_augmentation_loop": 10}},
                commit="abc", status="ok", classification="partial", score=0.8123,
                metrics={"fit_R2": 0.8123, "test_R2": 0.71, "test_pearson": 0.93, "final_loss": 0.0012},
                visual="loss=good: smooth decay", observation="higher lr helped", next="12")
    base.update(kw)
    return NodeRecord(**base)


def test_sections_in_order_and_emerging_last(toy):
    text = initial_memory(toy, "default").render(block=3)
    assert _headings(text) == ["# Working Memory", "## Knowledge Base", "### Best Configurations",
                               "### Established Principles", "### Open Questions",
                               "## Previous Block Summary (Block 2)", "## Current Block (Block 3)",
                               "### Block Info", "### Hypothesis", "### Iterations This Block",
                               "### Emerging Observations"]
    assert Memory.parse(text).render(block=3) == text  # round trip


def test_section_edits_cannot_break_structure(toy):
    mem = initial_memory(toy, "default")
    mem.update("Emerging Observations", "- first", "append")
    mem.update("Emerging Observations", "- second", "append")
    mem.update("Hypothesis", "lr near 1E-2 is best", "replace")
    text = mem.render()
    assert text.rstrip().endswith("- first\n- second")
    assert "lr near 1E-2 is best" in text and "[Prediction for this block]" not in text
    for bad, msg in [(("Nonsense", "x"), "unknown memory section"),
                     (("Best Configurations", "| a |"), "maintained by the loop"),
                     (("Hypothesis", "## Sneaky heading\ntext"), "headings"),
                     (("Hypothesis", "x", "prepend"), "mode")]:
        with pytest.raises(MemoryError_, match=msg):
            mem.update(*bad)
    assert mem.render() == text  # nothing changed


def test_entry_log_form(toy):
    text = render_entry(toy, _rec())
    assert text == (
        "## Iter 12: partial\n"
        "Node: id=12, parent=7\n"
        "Mode/Strategy: exploit\n"
        "Config: seed=42, lr=5E-3, coeff_reg=2, batch_size=8, n_epochs=2, data_augmentation_loop=10\n"
        "Metrics: fit_R2=0.8123, test_R2=0.7100, test_pearson=0.9300, final_loss=1.2E-3\n"
        "Visual: loss=good: smooth decay\n"
        "Mutation: learning_rate: 1E-3 -> 5E-3\n"
        "Parent rule: highest UCB\n"
        "Observation: higher lr helped\n"
        "Next: parent=12\n\n")


def test_entry_code_modification_and_failed(toy):
    rec = _rec(parent=None, strategy="code-modification", mutation="[code] step_scale: double-step",
               code_changes=[{"file": "toyfit/train.py", "function": "update", "change": "double the step",
                              "hypothesis": "escape the plateau", "strategy": "double-step"}])
    lines = render_entry(toy, rec).splitlines()
    i = lines.index("CODE MODIFICATION:")
    assert lines[1] == "Node: id=12, parent=root"
    assert lines[i - 1].startswith("Config: ") and lines[i + 5].startswith("Metrics: ")
    assert lines[i + 1:i + 5] == ["  File: toyfit/train.py", "  Function: update", "  Change: double the step",
                                  "  Hypothesis: escape the plateau"]
    failed = render_entry(toy, _rec(status="failed", classification="failed", reason="exit 3: diverged"))
    assert "Metrics: training failed: exit 3: diverged" in failed


def test_entry_homeostasis_form_has_slot_and_strategy_lines(homeo):
    rec = _rec(slot=1, config={"training": {"n_epochs": 2, "learning_rate": 0.005}})
    lines = render_entry(homeo, rec).splitlines()
    assert lines[2:4] == ["Mode/Strategy: exploit", "Slot: slot_1 (n_epochs=2)"]
    assert "Strategy: hyperparameter-only" in lines and not any(l.startswith("Parent rule") for l in lines)


def test_best_configurations_table_from_store(toy):
    nodes = [_rec(id=i, score=s, metrics={"fit_R2": s}) for i, s in [(1, 0.2), (2, 0.9), (3, 0.5)]]
    table = best_configs_table(toy, nodes, k=2)
    rows = table.splitlines()
    assert rows[0].startswith("| Blk | Node | seed | lr |") and len(rows) == 4
    assert re.match(r"\| 2 \| 2 \|", rows[2]) and re.match(r"\| 2 \| 3 \|", rows[3])


def test_regime_comparison_one_row_per_regime_variant(toy):
    mem = initial_memory(toy, "n100")
    upsert_comparison(mem, ComparisonRow(regime="sparse", variant="n100", run="r1", iterations=8, best_node=5,
                                         best_primary=0.91, best_score=0.91, best_config="lr=1E-3"))
    upsert_comparison(mem, ComparisonRow(regime="sparse", variant="n200", run="r2", iterations=4, best_node=2,
                                         best_primary=0.5, best_score=0.5))
    upsert_comparison(mem, ComparisonRow(regime="sparse", variant="n200", run="r2", iterations=8, best_node=7,
                                         best_primary=0.6, best_score=0.6))
    text = mem.render()
    assert "### Regime Comparison" in text
    assert _headings(text).index("### Regime Comparison") == _headings(text).index("### Open Questions") + 1
    rows = parse_comparison(Memory.parse(text).bodies["Regime Comparison"])
    assert [(r.variant, r.iterations, r.best_node) for r in rows] == [("n100", 8, 5), ("n200", 8, 7)]
