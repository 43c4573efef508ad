"""The per-process context of a run: run.yaml, regime, store, workspace,
tool env, policies, executor, status.json, events.

Built once by `agent.run` (start or resume) and passed to the graph's nodes
as LangGraph's runtime context (`graph.stream(..., context=ctx)`). Everything
it holds can be rebuilt from the run directory.
"""

from __future__ import annotations

import glob
import threading
from pathlib import Path
from typing import Any, Callable

from agent.llm import CostLimitReached, LLMRefused
from agent.policies.base import Policy, PolicyError, StepContext
from regimes.base import Degeneracy, Regime
from rundir import paths
from rundir.io import append_jsonl, dump_json_atomic, llm_cost, load_yaml, read_json, utc_now
from rundir.records import FallbackRef, Launch, NodeRecord, PolicySteps, RunInfo, RunStatus, SlotOutcome, SlotResult, \
    SlotReview
from rundir.store import Store
from tools.env import Step, ToolEnv
from tools.toolbox import ToolBox


class RunStopped(Exception):
    """Raised inside a graph node when the run must stop now (kill)."""


class RunCtx:
    def __init__(self, run_dir: Path, info: RunInfo, regime: Regime, workspace: Any, policy: Policy,
                 fallback: Policy, stop: threading.Event | None = None, kill: threading.Event | None = None,
                 on_event: Callable[[dict], None] | None = None, executor: Any = None):
        self.run_dir = Path(run_dir)
        self.info = info
        self.regime = regime
        self.workspace = workspace
        self.policy = policy
        self.fallback = fallback
        self.stop = stop or threading.Event()
        self.kill = kill or threading.Event()
        self.on_event = on_event
        self._executor = executor
        self.store = Store(self.run_dir / "nodes.jsonl")
        self.env = ToolEnv(self.run_dir, regime, workspace, self.store, info.slots, code_enabled=info.code)
        self.base_config = load_yaml(self.run_dir / "base_config.yaml")
        self._status_lock = threading.Lock()
        self.status = self._load_status()

    @property
    def iterations_total(self) -> int:
        return int(self.info.budget.get("iterations") or self.info.n_iter_block)

    # ----- executor -----

    @property
    def executor(self):
        if self._executor is None:
            from sandbox.executors import make_executor
            self._executor = make_executor(self.info.executor, self.info.slots, ray_address=self.info.ray_address,
                                           device=self.info.device, slots_per_gpu=self.info.slots_per_gpu)
        return self._executor

    def close(self) -> None:
        if self._executor is not None:
            try:
                self._executor.shutdown()
            except Exception:  # shutting down must not hide the run's own outcome
                pass
        for p in {id(self.policy): self.policy, id(self.fallback): self.fallback}.values():
            try:
                p.close()
            except Exception:
                pass

    # ----- node ids, configs -----

    def node_id(self, iteration: int, slot: int) -> int:
        """Node ids are 1, 2, 3, ... in launch order: batch by batch, slot by slot."""
        return (iteration - 1) * self.info.slots + slot + 1

    def root_slot_config(self, slot: int) -> dict:
        return self.regime.slot_config(self.base_config, slot)

    # ----- batch results (from files; resume-safe) -----

    def load_batch(self, iteration: int) -> dict[int, SlotOutcome]:
        """slot -> everything the analysis needs about the training of `iteration` in that slot."""
        out: dict[int, SlotOutcome] = {}
        for slot in range(self.info.slots):
            d = paths.slot_dir(self.run_dir, iteration, slot)
            launch_p, result_p = d / paths.LAUNCH, d / paths.RESULT
            if not (launch_p.exists() and result_p.exists()):
                continue
            launch = Launch.model_validate_json(launch_p.read_text())
            result = SlotResult.model_validate_json(result_p.read_text())
            metrics = result.metrics
            ok = result.status == "ok"
            plots = []
            if (d / "plots").is_dir():
                for pat in self.regime.plots or ["plots/*.png"]:
                    plots += sorted(glob.glob(str(d / pat)), reverse=True)
            out[slot] = SlotOutcome(
                slot=slot, node=launch.node, parent=launch.parent, commit=launch.commit, strategy=launch.strategy,
                mutation=launch.mutation, parent_rule=launch.parent_rule, hypothesis=launch.hypothesis,
                code_changes=launch.code_changes, config=load_yaml(d / paths.SLOT_CONFIG), out_dir=str(d),
                status=result.status, reason=result.reason, traceback_tail=result.traceback_tail,
                duration_s=result.duration_s, metrics=metrics,
                classification=self.regime.classify(metrics) if ok else "failed",
                score=self.regime.score(metrics) if ok else 0.0,
                degeneracy=self.regime.degeneracy(metrics) if ok else Degeneracy(gap=None, diagnosis="failed"),
                plots=[str(Path(p).relative_to(self.run_dir)) for p in plots][:12],
                finished_at=result.finished_at)
        return out

    def review(self, iteration: int, slot: int) -> SlotReview | None:
        p = paths.review_path(self.run_dir, iteration, slot)
        return SlotReview.model_validate_json(p.read_text()) if p.exists() else None

    # ----- policy steps -----

    def step_context(self, step: Step, results: list[SlotOutcome],
                     block_nodes: list[NodeRecord] | None = None, ucb: str = "") -> StepContext:
        """What the policy sees at `step`: derived from the node's Step and the run's files."""
        code_reason = self.regime.code_edits_allowed(step.iter_in_block, step.at_block_end, self.info.code)
        return StepContext(
            step=step.name, run_dir=self.run_dir, regime_name=self.regime.name, block=step.block,
            iter_in_block=step.iter_in_block, n_iter_block=self.info.n_iter_block, slots=list(step.slots),
            results=results, block_nodes=block_nodes or [], nodes=self.search_tree(step),
            regime=self.regime, code_enabled=self.info.code, memory=(self.run_dir / paths.MEMORY).read_text(),
            instructions=(self.run_dir / paths.INSTRUCTIONS).read_text(),
            ucb=ucb if ucb else (self.run_dir / paths.UCB).read_text(),
            code_allowed=code_reason is None, code_block_reason=code_reason, seed=self.info.seed,
            iterations_done=step.iterations_done, ucb_c=self.info.ucb_c)

    def search_tree(self, step: Step) -> list[NodeRecord]:
        """The run's nodes by id, with the step's batch where it is not logged yet (analyse, select_parent):
        as the log step will record it (this block, its place in the block), without the review."""
        nodes = {n.id: n for n in self.store.nodes()}
        for k, s in enumerate(sorted(step.batch)):
            o = step.batch[s]
            if o.node not in nodes:
                nodes[o.node] = NodeRecord.of_outcome(o, None, "", step.block, step.iter_in_block + k + 1,
                                                      step.iteration, self.run_dir, o.finished_at)
        return [nodes[k] for k in sorted(nodes)]

    def run_policy_step(self, step: Step, results: list[SlotOutcome],
                        block_nodes: list[NodeRecord] | None = None) -> None:
        """Let the policy answer `step`; on any failure roll back and re-run it with the fallback policy.

        Every step the main policy is asked to answer is counted (status.json
        `policy_steps`; one line per step in policy_steps.jsonl), and every
        fallback with its fault class and one-line reason. An API refusal
        (LLMRefused: bad key, model, permission) or the spend limit stops the
        run instead: no heuristic run in Claude's name."""
        ctx = self.step_context(step, results, block_nodes)
        snap = self._step_snapshot(step)
        tools = ToolBox(self.env, step, defer_log=True, policy_name=self.policy.name)
        counted = self.policy is not self.fallback
        try:
            self.policy.act(ctx, tools)
            if not tools.done():
                raise RuntimeError(f"step {step.name} incomplete: missing {', '.join(tools.missing())}")
            tools.finish(applied=True)
            upd: dict[str, Any] = {"message": tools.last_message or self.status.message or ""}
            if counted:
                upd.update(self._count_step(step, None, ""), fallback=False)
            self.set_status(**upd)
            return
        except (CostLimitReached, LLMRefused) as e:
            # spend limit / a refusal no retry fixes: no fallback; stop cleanly, the step re-runs on resume
            tools.finish(applied=False)
            self.env.restore(snap)
            cost = isinstance(e, CostLimitReached)
            line = str(e).splitlines()[0] if str(e) else type(e).__name__
            self.env.reasoning(f"[{step.name}] {'cost limit reached' if cost else 'LLM refused'}: {line}; "
                               "stopping (resumable)")
            self.status = self.status.updated(stopped_by="cost_limit" if cost else "llm_refused")
            raise RunStopped(f"cost limit reached: {line}" if cost else line) from None
        except Exception as e:  # any other policy failure (deadline, API, bug) -> heuristic fallback
            tools.finish(applied=False)
            name = type(e).__name__
            if self.policy is self.fallback:
                raise
            fault = getattr(e, "fault", None) or ("error" if not isinstance(e, PolicyError) else "policy_error")
            first = str(e).splitlines()[0] if str(e) else ""
            msg = f"policy {self.policy.name} failed at {step.name}: {name}: {first}"
            self.env.reasoning(f"[{step.name}] FALLBACK to {self.fallback.name}: {msg} (fault: {fault})")
            self.env.restore(snap)
        tools = ToolBox(self.env, step, defer_log=True, policy_name=self.fallback.name)
        try:
            self.fallback.act(ctx, tools)
        finally:
            tools.finish(applied=tools.done())
        if not tools.done():
            raise RuntimeError(f"fallback policy left step {step.name} incomplete: missing {', '.join(tools.missing())}")
        counts = self._count_step(step, fault, msg)
        self.set_status(fallback=True, message=f"fallback to {self.fallback.name}: {msg}", **counts)
        self.emit({"type": "fallback", "step": step.name, "message": msg, "fault": fault})

    def _count_step(self, step: Step, fault: str | None, reason: str) -> dict:
        """Append this step's outcome to policy_steps.jsonl; the status.json fields that summarise it."""
        ts = utc_now()
        append_jsonl(self.run_dir / paths.POLICY_STEPS, {
            "ts": ts, "step": step.name, "iteration": step.iteration, "policy": self.policy.name,
            "answered_by": self.fallback.name if fault else self.policy.name, "fault": fault, "reason": reason})
        ps = (self.status.policy_steps or PolicySteps()).model_copy(deep=True)
        ps.total += 1
        if fault:
            ps.fallbacks += 1
            ps.faults[fault] = ps.faults.get(fault, 0) + 1
            ps.last_fallback = FallbackRef(step=step.name, fault=fault, reason=reason, ts=ts)
        else:
            ps.answered += 1
        return {"policy_steps": ps}

    def _step_snapshot(self, step: Step) -> dict[Path, str | None]:
        """The files a policy step may change, as they were before its first attempt.

        Kept on disk (step_snapshot.json) so that a step killed after some of its tool calls is
        re-run from the same files: an append to memory.md is never made twice, an instructions
        edit never meets its own result."""
        key = f"{step.name}:{step.iteration}:{step.block}"
        p = self.run_dir / paths.STEP_SNAPSHOT
        saved = read_json(p)  # None when absent (a torn one cannot be: it is written atomically)
        if isinstance(saved, dict) and saved.get("key") == key:
            snap = {self.run_dir / rel: text for rel, text in saved.get("files", {}).items()}
            self.env.restore(snap)
            self.env.reasoning(f"[{step.name}] re-run after an interruption: its files restored first")
            return snap
        snap = self.env.snapshot(step.iteration)
        dump_json_atomic(p, {"key": key, "files": {str(q.relative_to(self.run_dir)): t for q, t in snap.items()}})
        return snap

    # ----- status.json and events -----

    def _load_status(self) -> RunStatus:
        p = self.run_dir / paths.STATUS
        data = read_json(p)
        if isinstance(data, dict):
            try:
                return RunStatus.model_validate(data)
            except ValueError:
                pass
        return RunStatus.initial(self.info, utc_now())

    @staticmethod
    def initial_status_file(run_dir: Path, info: RunInfo) -> None:
        """status.json of a new run (written before the run directory is moved into place)."""
        dump_json_atomic(Path(run_dir) / paths.STATUS, RunStatus.initial(info, utc_now()).to_json())

    def set_status(self, slots: dict[int, dict] | None = None, **fields) -> None:
        """Update status.json atomically and emit a `status` event (its JSON)."""
        with self._status_lock:
            best = self.store.best()
            if best is not None:
                fields["best"] = {"node": best.id, "score": best.score, "slot": best.slot}
            self.status = self.status.updated(slots, **fields, updated_at=utc_now(), cost_usd=self._cost())
            snapshot = self.status.to_json()
            dump_json_atomic(self.run_dir / paths.STATUS, snapshot)
        self.emit({"type": "status", "status": snapshot})

    def training_limits(self) -> tuple[float, int | None]:
        """(timeout_s, memory_limit_mb) of one training of this run (memory only on CPU)."""
        lim = self.regime.training_limits(self.info.profile)
        timeout_min = self.info.timeout_min if self.info.timeout_min is not None else lim.timeout_min
        # both recorded together at creation; a run made before then takes the regime's
        memory = self.info.memory_limit_mb if self.info.timeout_min is not None else lim.memory_limit_mb
        return float(timeout_min) * 60.0, (memory if self.info.device == "cpu" else None)

    def _cost(self) -> float:
        return llm_cost(self.run_dir)[0]

    def emit(self, event: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a view's bug must not stop the run
                pass


__all__ = ["RunCtx", "RunStopped"]
