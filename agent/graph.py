"""The exploration loop as a LangGraph StateGraph (docs/architecture.md, "One batch").

    START -> prepare (once) -> run_slots -> read_memory -> analyse -> select_parent
          -> log -> [block_end] -> mutate -> run_slots -> ...     (END when the budget is reached)

select_parent runs before log so the `Next: parent=P` line and the node
record's `next` field carry the parent actually chosen; ucb_scores.txt
already includes the batch just finished. Each node has a deterministic part
(files, counters) and a policy part (tools). The state holds counters and ids
only; every node is idempotent from files, so a resumed run repeats at most
the step that was interrupted, and never a finished training.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from agent import ucb as ucb_mod
from agent.driver import run_env
from agent.memory import best_configs_table, block_info, comparison_row, memory_line, render_entry
from agent.runctx import RunCtx, RunStopped
from agent.state import LoopState
from regimes.base import format_value
from rundir import paths
from rundir.io import TIME_FORMAT, dump_json_atomic, dump_yaml_atomic, read_json, utc_now, write_text_atomic
from rundir.memory import Memory, upsert_comparison
from rundir.paths import slot_dir
from rundir.records import Launch, NodeRecord, SlotOutcome, SlotPlan, SlotResult
from tools.env import Step


def _all_slots(ctx: RunCtx) -> list[int]:
    return list(range(ctx.info.slots))


def _step(ctx: RunCtx, state: LoopState, name: str, slots: list[int] | None = None, **fields) -> Step:
    """The node's one frozen Step (what the ToolBox and the policy see), from the graph state."""
    base = dict(iteration=state.get("iteration", 1), block=state.get("block", 1),
                iter_in_block=state.get("iter_in_block", 0), iterations_done=state.get("iterations_done", 0),
                slots=tuple(_all_slots(ctx) if slots is None else slots))
    return Step(name=name, **{**base, **fields})


def closes_block(ctx: RunCtx, state: LoopState) -> bool:
    """The batch under analysis closes its block (a block closes after the batch that reaches n_iter_block)."""
    return state["iter_in_block"] + ctx.info.slots >= ctx.info.n_iter_block


# The graph's nodes: module-level functions of (state, runtime); `runtime.context` is the run's RunCtx,
# passed by `graph.stream(..., context=ctx)` (LangGraph runtime context).

# ----- node: prepare -----
def prepare(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    ctx.set_status(phase="prepare", block=1, iter_in_block=0)
    overrides = ctx.regime.prepare(ctx.run_dir, ctx.base_config, ctx.info.device, log=ctx.env.reasoning) or {}
    if overrides:
        from regimes.base import set_dotted
        for k, v in overrides.items():
            set_dotted(ctx.base_config, k, v)
        dump_yaml_atomic(ctx.run_dir / "base_config.yaml", ctx.base_config)
    for s in _all_slots(ctx):
        ctx.env.save_slot_config(s, ctx.root_slot_config(s))
        ctx.env.save_plan(SlotPlan(slot=s, iteration=1, parent=None, strategy="baseline",
                                   parent_rule="first batch: root", commit=ctx.workspace.root_commit))
    ctx.run_policy_step(_step(ctx, state, "prepare"), [])
    _announce(ctx, 1)
    return {"prepared": True, "phase": "run_slots", "iteration": 1, "block": 1, "iter_in_block": 0}

# ----- node: run_slots -----
def run_slots(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    from sandbox.runner import RunSpec, regime_entries

    ctx = runtime.context
    info = ctx.info
    it = state["iteration"]
    ctx.set_status(phase="run_slots")
    specs, nodes = [], []
    for s in _all_slots(ctx):
        nid = ctx.node_id(it, s)
        nodes.append(nid)
        d = slot_dir(ctx.run_dir, it, s)
        launch_p = d / paths.LAUNCH
        if not launch_p.exists():  # first launch of this (iteration, slot): freeze config + plan
            plan = ctx.env.load_plan(s, it)
            commit = plan.commit or ctx.env.node_commit(plan.parent)
            d.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ctx.env.config_path(s), d / paths.SLOT_CONFIG)
            dump_json_atomic(launch_p, Launch.of_plan(plan, nid, it, commit, utc_now()).model_dump(mode="json"))
        launch = Launch.model_validate_json(launch_p.read_text())
        if ctx.workspace.node_commit(nid) != launch.commit:
            # checked on every attempt: a kill between launch.json and the tag left it missing
            ctx.workspace.tag_node(nid, launch.commit)
        if (d / paths.RESULT).exists():
            continue  # finished before a crash: never re-run
        if (metrics := _valid_metrics(d / "metrics.json")) is not None:
            # the training finished but the loop died before collecting it
            _write_result(d, SlotResult(status="ok", exit_code=0, reason="collected on resume", metrics=metrics,
                                        duration_s=_collected_duration(launch, d / "metrics.json")))
            continue
        for stale in ("metrics.json", "progress.jsonl"):
            if (d / stale).exists():
                (d / stale).unlink()
        code_dir = _code_checkout(ctx, launch.commit)
        timeout_s, memory_mb = ctx.training_limits()
        specs.append(RunSpec(slot=s, node_id=nid, config_path=d / paths.SLOT_CONFIG, out_dir=d, code_dir=code_dir,
                             train_entry=ctx.regime.train_entry, **regime_entries(ctx.regime),
                             confine=info.confine, device=info.device,
                             threads=max(1, _cpu_count() // max(1, info.slots)),
                             timeout_s=timeout_s, memory_limit_mb=memory_mb,
                             extra_env=run_env(ctx.run_dir)))  # the tag `agent resume` finds leftovers by
        ctx.set_status(slots={s: {"node": nid, "parent": launch.parent, "strategy": launch.strategy,
                                  "mutation": launch.mutation.line(), "status": "pending", "out_dir": str(d),
                                  "score": None, "started_at": None}})
    if specs:
        ctx.emit({"type": "batch_start", "iteration": it, "slots": [sp.slot for sp in specs]})

        started: set[int] = set()

        def on_progress(slot: int, rec: dict) -> None:
            # queued slots (more slots than parallel places) stay "pending" until their training reports
            if slot not in started:
                started.add(slot)
                ctx.set_status(slots={slot: {"status": "running", "started_at": utc_now()}})
            ctx.emit({"type": "progress", "slot": slot, **rec})

        results = ctx.executor.run_batch(specs, on_progress=on_progress, cancel=ctx.kill)
        for spec, res in zip(specs, results):
            d = spec.out_dir
            if res.status == "killed" or ctx.kill.is_set():
                continue  # cancelled: re-run on resume
            _write_result(d, SlotResult(status=res.status, exit_code=res.exit_code, reason=res.reason,
                                        traceback_tail=res.traceback_tail, metrics=res.metrics,
                                        duration_s=res.duration_s))
            score = ctx.regime.score(res.metrics) if res.status == "ok" else 0.0
            ctx.set_status(slots={spec.slot: {"status": "done" if res.status == "ok" else res.status,
                                              "score": score}})
        if ctx.kill.is_set():
            raise RunStopped("killed during run_slots")
    return {"batch_nodes": nodes, "phase": "read_memory"}

# ----- node: read_memory -----
def read_memory(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    ctx.set_status(phase="read_memory")
    batch = ctx.load_batch(state["iteration"])
    missing = [s for s in _all_slots(ctx) if s not in batch]
    if missing:
        raise RuntimeError(f"iteration {state['iteration']}: no result for slots {missing}")
    return {"phase": "analyse"}

# ----- node: analyse -----
def analyse(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    ctx.set_status(phase="analyse")
    batch = ctx.load_batch(state["iteration"])
    ctx.run_policy_step(_step(ctx, state, "analyse", sorted(batch), batch=batch), _results(batch))
    return {"phase": "select_parent"}

# ----- node: select_parent -----
def select_parent(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    closes = closes_block(ctx, state)
    ctx.set_status(phase="select_parent")
    batch = ctx.load_batch(state["iteration"])
    ucb_path = ctx.run_dir / "ucb_scores.txt"
    if closes:
        # block boundary: the UCB file is emptied and every next parent is root
        write_text_atomic(ucb_path, "")
        for s in _all_slots(ctx):
            ctx.env.save_plan(SlotPlan(slot=s, iteration=state["iteration"] + 1, parent=None,
                                       strategy="exploit", parent_rule="block start: UCB file empty, parent=root"))
        ctx.env.reasoning(f"[select_parent] block {state['block']} closes: ucb_scores.txt emptied, parents=root")
    else:
        write_text_atomic(ucb_path, ucb_mod.render(block_ucb(ctx, state["block"], batch)))
        ctx.run_policy_step(_step(ctx, state, "select_parent", batch=batch, at_block_end=closes), _results(batch))
    return {"phase": "log"}

# ----- node: log -----
def log(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    info = ctx.info
    it = state["iteration"]
    closes = closes_block(ctx, state)
    ctx.set_status(phase="log")
    batch = ctx.load_batch(it)
    ctx.store.refresh()
    analysis_p = ctx.run_dir / paths.ANALYSIS
    mem = Memory.load(ctx.run_dir / paths.MEMORY)
    new_records: list[NodeRecord] = []
    # Each of the three writes per node (analysis entry, store line, memory line) is checked on its
    # own, never skipped because another one is there: a kill between any two of them is completed
    # by the re-run of this step (the memory is saved once, after the store lines).
    for k, s in enumerate(sorted(batch)):
        r = batch[s]
        rec = ctx.store.get(r.node)  # logged before a crash: the stored record is the truth
        if rec is None:
            plan = ctx.env.load_plan(s, it)
            nxt = "root" if plan.parent is None else str(plan.parent)
            rec = NodeRecord.of_outcome(r, ctx.review(it, s), nxt, state["block"], state["iter_in_block"] + k + 1,
                                        it, ctx.run_dir, utc_now())
        _append_entry(analysis_p, rec.id, render_entry(ctx.regime, rec))
        if rec.id not in ctx.store:
            ctx.store.append(rec)
            new_records.append(rec)
        if f"- Iter {rec.id} (" not in mem.bodies["Iterations This Block"]:
            mem.update("Iterations This Block", memory_line(ctx.regime, rec), "append")
    mem.update("Best Configurations", best_configs_table(ctx.regime, ctx.store.nodes()), "replace", code=True)
    if mem.comparison:
        upsert_comparison(mem, comparison_row(ctx.regime, info.variant, info.run_id, ctx.store.nodes()))
    mem.save(ctx.run_dir / "memory.md", block=state["block"])
    in_block = state["iter_in_block"] + info.slots
    ctx.set_status(iterations_done=len(ctx.store), iter_in_block=min(in_block, info.n_iter_block),
                   slots={s: {"status": "done" if batch[s].status == "ok" else batch[s].status,
                              "score": batch[s].score} for s in batch})
    ctx.run_policy_step(_step(ctx, state, "log", sorted(batch), batch=batch, at_block_end=closes,
                              iter_in_block=in_block, iterations_done=len(ctx.store)), _results(batch))
    ctx.emit({"type": "batch_logged", "iteration": it, "nodes": [r.id for r in new_records]})
    return {"iterations_done": len(ctx.store), "iter_in_block": in_block,
            "block_end": closes, "phase": "block_end" if closes else "mutate"}

# ----- node: block_end -----
def block_end(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    b = state["block"]
    ctx.set_status(phase="block_end")
    snap = paths.block_dir(ctx.run_dir, b)
    snap.mkdir(parents=True, exist_ok=True)
    for name in ("memory.md", "instructions.md", "ucb_scores.txt"):
        if not (snap / name).exists():  # keep the first snapshot on a resumed step
            shutil.copyfile(ctx.run_dir / name, snap / name)
    block_nodes = ctx.store.block_nodes(b)
    step = _step(ctx, state, "block_end", at_block_end=True, batch=ctx.load_batch(state["iteration"]))
    ctx.run_policy_step(step, [], block_nodes)
    # the next block starts: clear its iterations, bump Block Info (the policy wrote summary/focus)
    mem = Memory.load(ctx.run_dir / "memory.md")
    mem.update("Iterations This Block", "", "replace")
    info_text = mem.bodies["Block Info"]
    focus = next((ln.split(":", 1)[1].strip() for ln in info_text.splitlines() if ln.startswith("Focus:")), "")
    mem.update("Block Info", block_info(ctx.regime, ctx.info.variant, b + 1, focus), "replace")
    mem.save(ctx.run_dir / "memory.md", block=b + 1)
    (snap / "memory_after.md").write_text((ctx.run_dir / "memory.md").read_text())
    ctx.emit({"type": "block_end", "block": b})
    ctx.set_status(block=b + 1, iter_in_block=0)
    return {"block": b + 1, "iter_in_block": 0, "block_end": False, "phase": "mutate"}

# ----- node: mutate -----
def mutate(state: LoopState, runtime: Runtime[RunCtx]) -> dict:
    ctx = runtime.context
    it = state["iteration"]
    # the mutate right after a block end is "between blocks": code edits of block_end regimes allowed
    between = state.get("iter_in_block", 0) == 0 and state.get("block", 1) > 1
    ctx.set_status(phase="mutate")
    for s in _all_slots(ctx):
        plan = ctx.env.load_plan(s, it + 1)
        # start from the parent's config and code (idempotent when this step is re-run)
        if plan.parent is None:
            cfg = ctx.root_slot_config(s)
        else:
            cfg = ctx.regime.slot_config(ctx.store.get(plan.parent).config, s)
        ctx.env.save_slot_config(s, cfg)
        plan = SlotPlan(slot=s, iteration=it + 1, parent=plan.parent, strategy=plan.strategy,
                        parent_rule=plan.parent_rule, reason=plan.reason,
                        commit=ctx.env.node_commit(plan.parent))
        ctx.env.save_plan(plan)
    # edits are for the next batch (commit messages say so); the batch just finished stays in view
    step = _step(ctx, state, "mutate", iteration=it + 1, at_block_end=between, iterations_done=len(ctx.store),
                 batch=ctx.load_batch(it))
    ctx.run_policy_step(step, [])
    _announce(ctx, it + 1)
    return {"iteration": it + 1, "phase": "run_slots", "batch_nodes": []}


def entry(state: LoopState) -> str:
    return "mutate" if state.get("prepared") else "prepare"


def after_log(state: LoopState, runtime: Runtime[RunCtx]) -> str:
    if state.get("block_end"):
        return "block_end"
    return END if state["iterations_done"] >= runtime.context.iterations_total else "mutate"


def after_block_end(state: LoopState, runtime: Runtime[RunCtx]) -> str:
    return END if state["iterations_done"] >= runtime.context.iterations_total else "mutate"


def build_graph() -> StateGraph:
    """The uncompiled StateGraph; its nodes get the run's RunCtx as the runtime context."""
    g = StateGraph(LoopState, context_schema=RunCtx)
    for fn in (prepare, run_slots, read_memory, analyse, select_parent, log, block_end, mutate):
        g.add_node(fn.__name__, fn)
    g.add_conditional_edges(START, entry, {"prepare": "prepare", "mutate": "mutate"})
    g.add_edge("prepare", "run_slots")
    g.add_edge("run_slots", "read_memory")
    g.add_edge("read_memory", "analyse")
    g.add_edge("analyse", "select_parent")
    g.add_edge("select_parent", "log")
    g.add_conditional_edges("log", after_log, {"block_end": "block_end", "mutate": "mutate", END: END})
    g.add_conditional_edges("block_end", after_block_end, {"mutate": "mutate", END: END})
    g.add_edge("mutate", "run_slots")
    return g


def _announce(ctx: RunCtx, iteration: int) -> None:
    """status.json: every slot's next training (node id, parent, strategy, mutation) as soon as it is planned."""
    plans = {s: ctx.env.load_plan(s) for s in _all_slots(ctx)}
    # the system each slot will train on (live view), where the policy may change it
    system = ({s: format_value(ctx.regime.system_of(ctx.env.slot_config(s))) for s in plans}
              if ctx.regime.system_mutable() else {})
    ctx.set_status(slots={s: {"status": "pending", "node": ctx.node_id(iteration, s), "parent": p.parent,
                              "strategy": p.strategy, "mutation": p.mutation.line(), "score": None,
                              "out_dir": str(slot_dir(ctx.run_dir, iteration, s)), "started_at": None,
                              **({"system": system[s]} if s in system else {})}
                          for s, p in plans.items()})


def compile_graph(ctx: RunCtx):
    """Compile with a SqliteSaver on run_dir/state.sqlite; returns (graph, connection). Run it with
    `context=ctx` (every node reads the RunCtx from its runtime)."""
    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(str(ctx.run_dir / "state.sqlite"), check_same_thread=False)
    saver = SqliteSaver(conn)
    return build_graph().compile(checkpointer=saver), conn


def block_ucb(ctx: RunCtx, block: int, batch: dict[int, SlotOutcome]) -> list[ucb_mod.UCBEntry]:
    """UCB entries of the block's finished nodes, including the batch just finished."""
    nodes: dict[int, NodeRecord | SlotOutcome] = {n.id: n for n in ctx.store.block_nodes(block)}
    for r in batch.values():
        nodes.setdefault(r.id, r)
    system = {n.id: format_value(ctx.regime.system_of(n.config)) for n in nodes.values()}
    return ucb_mod.tag_systems(ucb_mod.ucb_scores(nodes.values(), ctx.info.ucb_c), system)


def _results(batch: dict[int, SlotOutcome]) -> list[SlotOutcome]:
    """The batch as the policy's StepContext carries it (by slot)."""
    return [batch[s] for s in sorted(batch)]


def _code_checkout(ctx: RunCtx, commit: str) -> Path:
    """A read-only checkout of `commit` under run_dir/code/, shared by every training on that commit.

    Most nodes run on a handful of commits, so checkouts are made once and kept
    (a `.ready` marker says the checkout completed; a half-made one is redone)."""
    dest = ctx.run_dir / "code" / commit[:16]
    if not (dest / ".ready").exists():
        ctx.workspace.checkout(commit, dest)
        (dest / ".ready").write_text(commit + "\n")
    return dest


def _append_entry(path: Path, node_id: int, text: str) -> None:
    """Append node `node_id`'s analysis.md entry unless it is there; a torn last entry is rewritten."""
    import os

    logged = path.read_text() if path.exists() else ""
    if logged and not logged.endswith("\n\n"):
        # every entry ends with a blank line: a crash cut the last one short; drop it (it is rewritten whole)
        logged = logged[: logged.rfind("\n\n") + 2] if "\n\n" in logged else ""
        write_text_atomic(path, logged)
    if f"## Iter {node_id}:" in logged:
        return
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _valid_metrics(p: Path) -> dict | None:
    """The metrics of a finished training's metrics.json, or None when it is missing, torn or empty."""
    data = read_json(p)
    return data if isinstance(data, dict) and data else None


def _collected_duration(launch: Launch, metrics: Path) -> float:
    """Launch to metrics.json of a training that finished while no driver ran (not 0: it did train)."""
    import calendar
    import time as _time

    try:
        t0 = calendar.timegm(_time.strptime(launch.launched_at, TIME_FORMAT))
        return round(max(0.0, metrics.stat().st_mtime - t0), 3)
    except (ValueError, OSError):
        return 0.0


def _write_result(d: Path, res: SlotResult) -> None:
    dump_json_atomic(d / paths.RESULT, res.model_copy(update={"finished_at": utc_now()}).model_dump(mode="json"))


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
