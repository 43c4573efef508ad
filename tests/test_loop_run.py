"""End-to-end loop on the toy regime with the heuristic policy (real sandbox and validation)."""

import json
import math
import re

import pytest
import yaml

from rundir.memory import Memory
from agent.run import resume_run, start_run
from rundir.store import Store
from tests.loop_helpers import toy_options

ENTRY_LINES = ["Node: ", "Mode/Strategy: ", "Config: ", "Metrics: ", "Visual: ", "Mutation: ", "Parent rule: ",
               "Observation: ", "Next: parent="]


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """2 slots, 3 batches, n_iter_block = 4: block 1 = batches 1-2, block 2 starts at batch 3."""
    d = tmp_path_factory.mktemp("loop") / "run"
    seen = {}

    def on_event(ev):
        if ev["type"] == "batch_logged":
            seen[ev["iteration"]] = (d / "ucb_scores.txt").read_text()

    start_run(toy_options(d, iterations=6), on_event=on_event)
    return d, seen


def _entries(text):
    return [e for e in re.split(r"(?m)^(?=## Iter )", text) if e.strip()]


def test_run_dir_layout(run3):
    d, _ = run3
    for name in ("run.yaml", "instructions.md", "memory.md", "analysis.md", "ucb_scores.txt", "reasoning.log",
                 "nodes.jsonl", "llm_calls.jsonl", "status.json", "state.sqlite", "configs/slot_00.yaml",
                 "configs/slot_01.yaml", "workspace/.git", "iterations/iter_003/slot_01/config.yaml",
                 "iterations/iter_003/slot_01/metrics.json", "iterations/iter_003/slot_01/plots/loss.png"):
        assert (d / name).exists(), name
    info = yaml.safe_load((d / "run.yaml").read_text())
    assert info["profile"] == "quick" and "no CUDA" in info["profile_reason"]
    assert "no CUDA" in (d / "reasoning.log").read_text().splitlines()[0]
    st = json.loads((d / "status.json").read_text())
    assert st["phase"] == "done" and st["iterations_done"] == 6 and st["block"] == 2 and not st["fallback"]
    assert set(st) >= {"run_id", "regime", "variant", "profile", "policy", "model", "phase", "block", "iter_in_block",
                       "n_iter_block", "iterations_done", "iterations_total", "started_at", "updated_at",
                       "cost_usd", "best", "slots", "message", "fallback"}
    assert set(st["slots"][0]) == {"slot", "node", "parent", "strategy", "mutation", "status", "out_dir", "score",
                                   "started_at"}


def test_one_record_per_iteration_and_log_form(run3):
    d, _ = run3
    nodes = Store(d / "nodes.jsonl").nodes()
    assert [n.id for n in nodes] == [1, 2, 3, 4, 5, 6]
    assert [(n.iteration, n.slot) for n in nodes] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert [n.block for n in nodes] == [1, 1, 1, 1, 2, 2]
    assert [n.iter_in_block for n in nodes] == [1, 2, 3, 4, 1, 2]
    entries = _entries((d / "analysis.md").read_text())
    assert len(entries) == 6
    for n, e in zip(nodes, entries):
        lines = e.strip().splitlines()
        assert lines[0] == f"## Iter {n.id}: {n.classification}"
        # every line of the log form, once, in the seeds' order
        assert [l.split(":")[0] + ":" for l in lines[1:]] == [p.split(":")[0] + ":" for p in ENTRY_LINES]
        assert lines[1] == f"Node: id={n.id}, parent={'root' if n.parent is None else n.parent}"
        assert lines[-1] == f"Next: parent={n.next}"
        assert re.search(r"^Config: seed=\d+, lr=[0-9.E-]+, coeff_reg=", lines[3])
        assert n.visual.startswith("metrics-derived (the heuristic policy cannot see plots)")
        m = re.search(r"fit_R2=([0-9.]+)", e)
        assert abs(float(m.group(1)) - n.metrics["fit_R2"]) < 1e-4
    # the first batch starts at root; later parents are earlier nodes of the same block, or root at a block start
    assert nodes[0].parent is None and nodes[1].parent is None
    assert all(n.parent in (1, 2) for n in nodes[2:4])
    assert nodes[4].parent is None and nodes[5].parent is None  # block 2 starts from root
    # Next: of each node names the parent the slot used next
    assert [n.next for n in nodes[:2]] == [str(nodes[2].parent), str(nodes[3].parent)]
    assert [n.next for n in nodes[2:4]] == ["root", "root"]
    # one parameter changes per iteration (heuristic), inside its range
    for n in nodes[2:4]:
        parent = nodes[n.parent - 1]
        diff = {k for k in n.config["training"] if n.config["training"][k] != parent.config["training"][k]}
        assert len(diff) == 1, (n.mutation, diff)


def test_memory_sections_in_order(run3):
    d, _ = run3
    text = (d / "memory.md").read_text()
    heads = [l for l in text.splitlines() if l.startswith("#")]
    assert heads == ["# Working Memory", "## Knowledge Base", "### Best Configurations",
                     "### Established Principles", "### Open Questions", "## Previous Block Summary (Block 1)",
                     "## Current Block (Block 2)", "### Block Info", "### Hypothesis", "### Iterations This Block",
                     "### Emerging Observations"]
    mem = Memory.parse(text)
    # block 2's iterations only (cleared at the block boundary)
    assert [l.split()[2] for l in mem.bodies["Iterations This Block"].splitlines()] == ["5", "6"]
    assert mem.bodies["Previous Block Summary"].startswith("Block 1: 4 iterations")
    best = max(Store(d / "nodes.jsonl").nodes(), key=lambda n: n.score)
    assert mem.bodies["Best Configurations"].splitlines()[2].startswith(f"| {best.block} | {best.id} |")


def test_ucb_file_hand_computed_and_block_boundaries(run3):
    d, seen = run3
    nodes = {n.id: n for n in Store(d / "nodes.jsonl").nodes()}
    c = 1.414
    # after batch 1 (block 1, N = 2, both children of root, V = 1): UCB = score + c*sqrt(2)/2
    exp1 = sorted(((nodes[i].score + c * math.sqrt(2) / 2, i) for i in (1, 2)), key=lambda t: (-t[0], t[1]))
    assert seen[1] == "".join(
        f"Node {i}: UCB={u:.3f}, parent=root, visits=1, score={nodes[i].score:.4f}, Mutation={nodes[i].mutation.line()}\n"
        for u, i in exp1)
    # batch 2 closed block 1: the file was emptied and the next parents were root
    assert seen[2] == ""
    # batch 3 = first of block 2: only block-2 nodes
    assert [l.split(":")[0] for l in seen[3].splitlines()] == sorted(
        ["Node 5", "Node 6"], key=lambda s: -nodes[int(s.split()[1])].score)
    # block_end ran: snapshot of memory and instructions, memory rewritten by the policy
    snap = d / "blocks" / "block_001"
    assert (snap / "memory.md").is_file() and (snap / "instructions.md").is_file()
    assert "### Iterations This Block" in (snap / "memory.md").read_text()
    assert "- Iter 3 (" in (snap / "memory.md").read_text()
    log = (d / "reasoning.log").read_text()
    assert "[block_end] CALL update_memory" in log and "block 1 closes" in log


def test_resume_with_a_larger_budget_continues(run3, tmp_path):
    import shutil
    d, _ = run3
    d2 = tmp_path / "more"
    shutil.copytree(d, d2)
    # run_id (LangGraph thread) stays; the copied run carries on from the finished graph
    resume_run(d2, iterations=8)
    nodes = Store(d2 / "nodes.jsonl").nodes()
    assert [n.id for n in nodes] == list(range(1, 9))
    assert (d2 / "iterations" / "iter_004" / "slot_01" / "metrics.json").is_file()
    assert json.loads((d2 / "status.json").read_text())["iterations_done"] == 8


def test_queued_slots_are_pending_until_their_training_reports(tmp_path):
    """With more slots than parallel places, a slot shows 'running' only once its training reports progress."""
    import json as _json

    from agent.run import start_run
    from loop_helpers import toy_options
    from sandbox.runner import RunResult

    run = tmp_path / "run"
    seen = {}

    class OneAtATime:
        def run_batch(self, specs, on_progress=None, cancel=None):
            out = []
            for i, sp in enumerate(specs):
                before = {s["slot"]: s["status"] for s in _json.loads((run / "status.json").read_text())["slots"]}
                on_progress(sp.slot, {"step": 1, "total": 2, "loss": 1.0, "elapsed_s": 0.1})
                after = {s["slot"]: s["status"] for s in _json.loads((run / "status.json").read_text())["slots"]}
                seen.setdefault(i, (before, after))
                m = {"fit_R2": 0.5, "test_pearson": 0.6, "test_R2": 0.4, "final_loss": 0.5}
                (sp.out_dir / "metrics.json").write_text(_json.dumps(m))
                out.append(RunResult(slot=sp.slot, node_id=sp.node_id, status="ok", exit_code=0, reason="",
                                     traceback_tail="", metrics=m, duration_s=0.0, out_dir=sp.out_dir))
            return out

        def shutdown(self):
            pass

    start_run(toy_options(run, iterations=2), executor=OneAtATime())
    (before0, after0), (before1, after1) = seen[0], seen[1]
    assert before0 == {0: "pending", 1: "pending"} and after0[0] == "running" and after0[1] == "pending"
    assert before1[1] == "pending" and after1[1] == "running"
