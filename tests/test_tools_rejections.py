"""Every tool rejects bad input with a one-line message and writes nothing."""

import hashlib
import os
import subprocess
from pathlib import Path

import pytest

from agent.run import start_run
from tests.loop_helpers import box, open_ctx, toy_options


@pytest.fixture
def ctx(toy_ctx):
    return toy_ctx  # one batch of the toy regime (nodes 1 and 2), a private copy (tests/conftest.py)


def _digest(run_dir: Path) -> str:
    """Hash of every file the tools may write (and the workspace's commits)."""
    h = hashlib.sha256()
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if p.is_file() and rel.parts[0] not in ("workspace",) and p.name not in ("reasoning.log", "rejected.jsonl"):
            h.update(str(rel).encode() + p.read_bytes())
    refs = subprocess.run(["git", "-C", str(run_dir / "workspace"), "rev-list", "--all"], capture_output=True,
                          text=True).stdout
    h.update(refs.encode())
    return h.hexdigest()


def _rejected(ctx, step, slots, name, args, match, **step_fields):
    before = _digest(ctx.run_dir)
    n_rej = ctx.env.n_rejected()
    tb = box(ctx, step, slots, **step_fields)
    res = tb.call(name, args)
    assert not res.ok, res
    assert match in res.error and "\n" not in res.error
    assert _digest(ctx.run_dir) == before, "a rejected call wrote something"
    assert ctx.env.n_rejected() == n_rej + 1 and tb.n_rejected == 1
    assert "REJECTED" in (ctx.run_dir / "reasoning.log").read_text().splitlines()[-1]
    return res


def test_set_config(ctx):
    m = [0, 1]
    _rejected(ctx, "mutate", m, "set_config", {"slot": 7, "changes": {"training.learning_rate": 0.01}}, "slot 7")
    _rejected(ctx, "mutate", m, "set_config", {"slot": 0, "changes": {"simulation.target_lr": 0.5}}, "frozen")
    _rejected(ctx, "mutate", m, "set_config", {"slot": 0, "changes": {"training.learning_rate": 5.0}}, "out of range")
    _rejected(ctx, "mutate", m, "set_config", {"slot": 0, "changes": {"training.learning_rte": 0.01}}, "unknown")
    _rejected(ctx, "mutate", m, "set_config", {"slot": 0, "changes": {"training.data_augmentation_loop": 80}},
              "budget cap")
    _rejected(ctx, "mutate", m, "set_config", {"slot": 0, "changes": {"claude.n_iter_block": 9}}, "frozen")
    _rejected(ctx, "mutate", m, "set_config", {"slot": 0, "changes": {}}, "changes")
    # a valid change is applied
    res = box(ctx, "mutate", m).call("set_config", {"slot": 1, "changes": {"training.learning_rate": 0.02}})
    assert res.ok and ctx.env.slot_config(1)["training"]["learning_rate"] == 0.02


def test_set_config_slot_fixed(tmp_path):
    d = tmp_path / "h"
    start_run(toy_options(d, regime="toy_homeo", iterations=2))
    c = open_ctx(d)
    _rejected(c, "mutate", [0, 1], "set_config", {"slot": 1, "changes": {"training.n_epochs": 1}}, "slot-fixed")


def test_tool_not_allowed_at_step_and_unknown_tool(ctx):
    _rejected(ctx, "analyse", [0, 1], "set_config", {"slot": 0, "changes": {"training.coeff_reg": 1.0}},
              "not allowed at step analyse")
    _rejected(ctx, "mutate", [0, 1], "launch_rockets", {}, "unknown tool")
    _rejected(ctx, "mutate", [0], "set_config", {"slot": 1, "changes": {"training.coeff_reg": 1.0}},
              "not part of this step")


def test_edit_code_rejections_and_commit(ctx):
    path = "toyfit/train.py"
    good = {"slot": 0, "path": path, "old": "    return lr\n", "new": "    return lr * 2.0\n",
            "change": "double the step", "hypothesis": "escape the plateau"}
    _rejected(ctx, "mutate", [0, 1], "edit_code", good, "first 2 iterations",
              iter_in_block=0)  # inside the warm-up: no code edits yet
    past = {"iter_in_block": 2}
    _rejected(ctx, "mutate", [0, 1], "edit_code", {**good, "path": "../secrets.py"}, "'..'", **past)
    _rejected(ctx, "mutate", [0, 1], "edit_code", {**good, "old": "no such text"}, "occurs 0 times", **past)
    _rejected(ctx, "mutate", [0, 1], "edit_code",
              {**good, "old": "    ap.add_argument(\"--device\", default=\"cpu\")\n",
               "new": "    ap.add_argument(\"--device\", default=\"cuda\")\n"}, "train.py", **past)
    _rejected(ctx, "mutate", [0, 1], "edit_code", {**good, "slot": 3}, "slot 3", **past)
    ctx.env.code_enabled = False  # run-wide (--no-code)
    _rejected(ctx, "mutate", [0, 1], "edit_code", good, "--no-code", **past)
    ctx.env.code_enabled = True
    res = box(ctx, "mutate", [0, 1], iteration=2, **past).call("edit_code", good)
    assert res.ok, res.error
    plan = ctx.env.load_plan(0)
    assert "return lr * 2.0" in ctx.workspace.read(plan.commit, path)
    log = ctx.workspace.log(plan.commit, 1)[0]
    msg = log.get("message") or log.get("subject") or str(log)
    assert "[iter 2 slot 0] double the step — hypothesis: escape the plateau" in msg
    assert plan.code_changes[0].function == "update"
    # show_code marks the editable region
    shown = box(ctx, "mutate", [0, 1]).call("show_code", {"slot": 0, "path": path}).content
    assert any(l.startswith(">") and "return lr * 2.0" in l for l in shown.splitlines())
    assert any(l.startswith(" ") and "def main" in l for l in shown.splitlines())
    # revert_code: back to the parent's version, then nothing left to revert
    assert box(ctx, "mutate", [0, 1]).call("revert_code", {"slot": 0, "path": path}).ok
    assert "return lr * 2.0" not in ctx.workspace.read(ctx.env.load_plan(0).commit, path)
    _rejected(ctx, "mutate", [0, 1], "revert_code", {"slot": 0, "path": path}, "already as in the parent")
    _rejected(ctx, "mutate", [0, 1], "revert_code", {"slot": 0, "path": "toyfit/nope.py"}, "no file")


def test_choose_parent_and_finish_mutation(ctx):
    s = [0, 1]
    _rejected(ctx, "select_parent", s, "choose_parent", {"slot": 0, "parent": 99, "strategy": "exploit"},
              "node 99 does not exist")
    _rejected(ctx, "select_parent", s, "choose_parent", {"slot": 4, "parent": 1, "strategy": "exploit"}, "slot 4")
    _rejected(ctx, "select_parent", s, "choose_parent", {"slot": 0, "parent": "best", "strategy": "exploit"},
              "parent")
    tb = box(ctx, "select_parent", s)
    assert tb.call("choose_parent", {"slot": 0, "parent": 2, "strategy": "explore", "reason": "r"}).ok
    assert not tb.done() and tb.missing() == ["choose_parent(slot=1)"]
    assert ctx.env.load_plan(0).parent == 2
    _rejected(ctx, "mutate", s, "finish_mutation", {"slot": 0, "mutation": ""}, "mutation")


def test_choose_parent_reads_an_unlogged_outcome_as_a_node_of_this_block(ctx):
    """A batch outcome not logged yet is a node of the step's block; its status decides as a record's does."""
    s = [0, 1]
    out = ctx.load_batch(1)[0].model_copy(update={"node": 7, "status": "failed"})
    _rejected(ctx, "select_parent", s, "choose_parent", {"slot": 0, "parent": 7, "strategy": "exploit"},
              "node 7 failed (failed)", batch={0: out}, block=2)
    tb = box(ctx, "select_parent", s, batch={0: out}, block=2)
    assert tb.call("choose_parent", {"slot": 0, "parent": 7, "strategy": "failure-probe"}).ok
    assert ctx.env.load_plan(0).parent == 7


def test_submit_analysis(ctx):
    a = {"slot": 0, "visual": "loss=good", "observation": "fine"}
    _rejected(ctx, "analyse", [0, 1], "submit_analysis", {**a, "classification": "converged"}, "classification")
    _rejected(ctx, "analyse", [0, 1], "submit_analysis", {**a, "slot": 1}, "no finished training",
              batch={0: ctx.load_batch(1)[0]})  # slot 1 has no finished training
    _rejected(ctx, "analyse", [0, 1], "submit_analysis", {**a, "visual": ""}, "visual")


def test_memory_and_instructions(ctx):
    _rejected(ctx, "log", [0, 1], "update_memory", {"section": "Hypothesis", "text": "## new section"}, "headings")
    _rejected(ctx, "log", [0, 1], "update_memory", {"section": "Best Configurations", "text": "x"}, "maintained")
    _rejected(ctx, "log", [0, 1], "update_memory", {"section": "Diary", "text": "x"}, "unknown memory section")
    _rejected(ctx, "log", [0, 1], "edit_instructions", {"old": "Change", "new": "x"}, "not allowed at step log")
    _rejected(ctx, "block_end", [0, 1], "edit_instructions", {"old": "text that is not there", "new": "x"},
              "occurs 0 times")
    tb = box(ctx, "block_end", [0, 1])
    assert tb.call("edit_instructions", {"old": "- Change one parameter per iteration.",
                                         "new": "- Change one parameter per iteration.\n- New rule."}).ok
    assert "- New rule." in (ctx.run_dir / "instructions.md").read_text()


def test_read_file_confined(ctx, tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, ctx.run_dir / "link.txt")
    _rejected(ctx, "analyse", [0, 1], "read_file", {"path": "../secret.txt"}, "'..'")
    _rejected(ctx, "analyse", [0, 1], "read_file", {"path": str(outside)}, "relative")
    _rejected(ctx, "analyse", [0, 1], "read_file", {"path": "link.txt"}, "outside the run directory")
    _rejected(ctx, "analyse", [0, 1], "read_file", {"path": "nope.txt"}, "no file")
    res = box(ctx, "analyse", [0, 1]).call("read_file", {"path": "iterations/iter_001/slot_00/analysis.log"})
    assert res.ok and "fit_R2:" in res.content


def test_view_plot(ctx):
    _rejected(ctx, "analyse", [0, 1], "view_plot", {"slot": 0, "name": "nothing.png"}, "no plot")
    _rejected(ctx, "analyse", [0, 1], "view_plot", {"node": 42, "name": "loss.png"}, "node 42 does not exist")
    _rejected(ctx, "analyse", [0, 1], "view_plot", {"slot": 0, "name": "../../../run.yaml"}, "plots directory")
    _rejected(ctx, "analyse", [0, 1], "view_plot", {"name": "loss.png"}, "exactly one of slot or node")
    res = box(ctx, "analyse", [0, 1]).call("view_plot", {"node": 2, "name": "loss.png"})
    assert res.ok and res.content[1]["type"] == "image" and res.content[1]["media_type"] == "image/png"
    assert res.content[1]["path"] == "iterations/iter_001/slot_01/plots/loss.png"
