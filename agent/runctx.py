"""The per-process context of a run: run.yaml, regime, store, workspace,
tool env, policies, executor, status.json, events.

Built once by `agent.run` (start or resume) and closed over by the graph's
nodes. Everything it holds can be rebuilt from the run directory.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from agent.policies.base import Policy, PolicyError, StepContext
from agent.store import NodeRecord, Store, dump_json_atomic
from regimes.base import Regime
from tools.env import SlotPlan, SlotReview, ToolEnv, load_yaml, slot_dir
from tools.toolbox import ToolBox


class RunInfo(BaseModel):
    """run.yaml: what this run is (enough to resume it)."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    regime: str
    variant: str
    profile: Literal["quick", "full"]
    profile_reason: str = ""
    slots: int
    policy: str
    model: str
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    device: str = "cpu"
    #: trainings sharing one GPU (--slots-per-gpu); None: chosen by the executor from free GPU memory
    slots_per_gpu: int | None = None
    #: OS confinement of every training (sandbox/confine.py); False: --no-confine (debugging)
    confine: bool = True
    #: the confinement in force on this machine, in confine.describe's words ("landlock ABI 7 + ...")
    confinement: str = ""
    budget: dict[str, Any] = Field(default_factory=dict)  # iterations, max_cost_usd
    seed: int = 0
    code: bool = True
    n_iter_block: int = 1
    ucb_c: float = 1.414
    regime_path: list[str] = Field(default_factory=list)
    continue_from: str | None = None
    phase1_checkpoint: str | None = None
    script: str | None = None
    created_at: str = ""
    # training limits (None in runs made before they were recorded: the regime's for the profile)
    timeout_min: float | None = None
    memory_limit_mb: int | None = None
    limits_reason: str = ""


#: the files of the policy step in progress, before its first attempt (RunCtx._step_snapshot)
STEP_SNAPSHOT = "step_snapshot.json"


class RunStopped(Exception):
    """Raised inside a graph node when the run must stop now (kill)."""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


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
        self.env = ToolEnv(self.run_dir, regime, workspace, self.store, info.slots, code_enabled=info.code,
                           policy_name=policy.name)
        self.env.n_iter_block = info.n_iter_block
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

    def load_batch(self, iteration: int) -> dict[int, dict]:
        """slot -> everything the analysis needs about the training of `iteration` in that slot."""
        out: dict[int, dict] = {}
        for slot in range(self.info.slots):
            d = slot_dir(self.run_dir, iteration, slot)
            launch_p, result_p = d / "launch.json", d / "result.json"
            if not (launch_p.exists() and result_p.exists()):
                continue
            launch = json.loads(launch_p.read_text())
            result = json.loads(result_p.read_text())
            metrics = result.get("metrics") or {}
            ok = result.get("status") == "ok"
            deg = self.regime.degeneracy(metrics) if ok else None
            plots = []
            if (d / "plots").is_dir():
                import glob
                for pat in self.regime.plots or ["plots/*.png"]:
                    plots += sorted(glob.glob(str(d / pat)), reverse=True)
            out[slot] = {
                "slot": slot, "node": launch["node"], "parent": launch["parent"], "commit": launch["commit"],
                "strategy": launch.get("strategy", ""), "mutation": launch.get("mutation", ""),
                "parent_rule": launch.get("parent_rule", ""), "hypothesis": launch.get("hypothesis", ""),
                "code_changes": launch.get("code_changes", []),
                "config": load_yaml(d / "config.yaml"), "out_dir": str(d), "status": result.get("status"),
                "reason": result.get("reason", ""), "traceback_tail": result.get("traceback_tail", ""),
                "duration_s": result.get("duration_s", 0.0), "metrics": metrics,
                "classification": self.regime.classify(metrics) if ok else "failed",
                "score": self.regime.score(metrics) if ok else 0.0,
                "degeneracy": deg.model_dump() if deg else {"gap": None, "diagnosis": "failed"},
                "plots": [str(Path(p).relative_to(self.run_dir)) for p in plots][:12],
                "finished_at": result.get("finished_at", ""),
            }
        return out

    def review(self, iteration: int, slot: int) -> SlotReview | None:
        p = slot_dir(self.run_dir, iteration, slot) / "review.json"
        return SlotReview.model_validate_json(p.read_text()) if p.exists() else None

    # ----- policy steps -----

    def step_context(self, step: str, slots: list[int], results: list[dict], state: dict, ucb: str = "") -> StepContext:
        code_reason = self.regime.code_edits_allowed(self.env.iter_in_block, self.env.at_block_end, self.info.code)
        return StepContext(
            step=step, run_dir=self.run_dir, regime_name=self.regime.name, block=state.get("block", 1),
            iter_in_block=state.get("iter_in_block", 0), n_iter_block=self.info.n_iter_block, slots=slots,
            results=results, memory=(self.run_dir / "memory.md").read_text(),
            instructions=(self.run_dir / "instructions.md").read_text(),
            ucb=ucb if ucb else (self.run_dir / "ucb_scores.txt").read_text(),
            code_allowed=code_reason is None, code_block_reason=code_reason, seed=self.info.seed,
            iterations_done=state.get("iterations_done", 0), ucb_c=self.info.ucb_c)

    def run_policy_step(self, step: str, slots: list[int], results: list[dict], state: dict) -> None:
        """Let the policy answer `step`; on any failure roll back and re-run it with the fallback policy.

        Every step the main policy is asked to answer is counted (status.json
        `policy_steps`; one line per step in policy_steps.jsonl), and every
        fallback with its fault class and one-line reason. An API refusal
        (LLMRefused: bad key, model, permission) or the spend limit stops the
        run instead: no heuristic run in Claude's name."""
        ctx = self.step_context(step, slots, results, state)
        snap = self._step_snapshot(f"{step}:{state.get('iteration', 0)}:{state.get('block', 1)}")
        self.env.policy_name = self.policy.name
        tools = ToolBox(self.env, step, slots, defer_log=True)
        counted = self.policy is not self.fallback
        try:
            self.policy.act(ctx, tools)
            if not tools.done():
                raise RuntimeError(f"step {step} incomplete: missing {', '.join(tools.missing())}")
            tools.finish(applied=True)
            upd: dict[str, Any] = {"message": self.env.last_message or self.status.get("message", "")}
            if counted:
                upd.update(self._count_step(step, state, None, ""), fallback=False)
            self.set_status(**upd)
            return
        except Exception as e:  # any policy failure (deadline, API, bug) -> heuristic fallback
            tools.finish(applied=False)
            name = type(e).__name__
            if name in ("CostLimitReached", "LLMRefused"):
                # spend limit / a refusal no retry fixes: no fallback; stop cleanly, the step re-runs on resume
                self.env.restore(snap)
                line = str(e).splitlines()[0] if str(e) else name
                what = "cost limit reached" if name == "CostLimitReached" else "LLM refused"
                self.env.reasoning(f"[{step}] {what}: {line}; stopping (resumable)")
                self.status["stopped_by"] = "cost_limit" if name == "CostLimitReached" else "llm_refused"
                raise RunStopped(f"cost limit reached: {line}" if name == "CostLimitReached" else line) from None
            if self.policy is self.fallback:
                raise
            fault = getattr(e, "fault", None) or ("error" if not isinstance(e, PolicyError) else "policy_error")
            first = str(e).splitlines()[0] if str(e) else ""
            msg = f"policy {self.policy.name} failed at {step}: {name}: {first}"
            self.env.reasoning(f"[{step}] FALLBACK to {self.fallback.name}: {msg} (fault: {fault})")
            self.env.restore(snap)
        self.env.policy_name = self.fallback.name
        tools = ToolBox(self.env, step, slots, defer_log=True)
        try:
            self.fallback.act(ctx, tools)
        finally:
            tools.finish(applied=tools.done())
        if not tools.done():
            raise RuntimeError(f"fallback policy left step {step} incomplete: missing {', '.join(tools.missing())}")
        counts = self._count_step(step, state, fault, msg)
        self.set_status(fallback=True, message=f"fallback to {self.fallback.name}: {msg}", **counts)
        self.emit({"type": "fallback", "step": step, "message": msg, "fault": fault})

    def _count_step(self, step: str, state: dict, fault: str | None, reason: str) -> dict:
        """Append this step's outcome to policy_steps.jsonl; the status.json fields that summarise it."""
        rec = {"ts": utc_now(), "step": step, "iteration": state.get("iteration"), "policy": self.policy.name,
               "answered_by": self.fallback.name if fault else self.policy.name, "fault": fault, "reason": reason}
        with open(self.run_dir / "policy_steps.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")
        ps = dict(self.status.get("policy_steps") or {"total": 0, "answered": 0, "fallbacks": 0, "faults": {}})
        ps["faults"] = dict(ps.get("faults") or {})
        ps["total"] = int(ps.get("total", 0)) + 1
        if fault:
            ps["fallbacks"] = int(ps.get("fallbacks", 0)) + 1
            ps["faults"][fault] = int(ps["faults"].get(fault, 0)) + 1
            ps["last_fallback"] = {"step": step, "fault": fault, "reason": reason, "ts": rec["ts"]}
        else:
            ps["answered"] = int(ps.get("answered", 0)) + 1
        return {"policy_steps": ps}

    def _step_snapshot(self, key: str) -> dict[Path, str | None]:
        """The files a policy step may change, as they were before its first attempt.

        Kept on disk (step_snapshot.json) so that a step killed after some of its tool calls is
        re-run from the same files: an append to memory.md is never made twice, an instructions
        edit never meets its own result."""
        p = self.run_dir / STEP_SNAPSHOT
        try:
            saved = json.loads(p.read_text()) if p.exists() else None
        except ValueError:  # a torn snapshot cannot be: it is written atomically; be safe anyway
            saved = None
        if isinstance(saved, dict) and saved.get("key") == key:
            snap = {self.run_dir / rel: text for rel, text in saved.get("files", {}).items()}
            self.env.restore(snap)
            self.env.reasoning(f"[{key.split(':')[0]}] re-run after an interruption: its files restored first")
            return snap
        snap = self.env.snapshot()
        dump_json_atomic(p, {"key": key, "files": {str(q.relative_to(self.run_dir)): t for q, t in snap.items()}})
        return snap

    # ----- status.json and events -----

    def _load_status(self) -> dict:
        p = self.run_dir / "status.json"
        if p.exists():
            try:
                return json.loads(p.read_text())
            except ValueError:
                pass
        return default_status(self.info)

    @staticmethod
    def initial_status_file(run_dir: Path, info: RunInfo) -> None:
        """status.json of a new run (written before the run directory is moved into place)."""
        dump_json_atomic(Path(run_dir) / "status.json", default_status(info))

    def set_status(self, slots: dict[int, dict] | None = None, **fields) -> None:
        """Update status.json atomically and emit a `status` event."""
        with self._status_lock:
            self.status.update(fields)
            for s, upd in (slots or {}).items():
                self.status["slots"][s].update(upd)
            self.status["updated_at"] = utc_now()
            self.status["cost_usd"] = self._cost()
            best = self.store.best()
            if best is not None:
                self.status["best"] = {"node": best.id, "score": best.score, "slot": best.slot}
            dump_json_atomic(self.run_dir / "status.json", self.status)
            snapshot = json.loads(json.dumps(self.status, default=str))
        self.emit({"type": "status", "status": snapshot})

    def training_limits(self) -> tuple[float, int | None]:
        """(timeout_s, memory_limit_mb) of one training of this run (memory only on CPU)."""
        lim = self.regime.training_limits(self.info.profile)
        timeout_min = self.info.timeout_min if self.info.timeout_min is not None else lim.timeout_min
        # both recorded together at creation; a run made before then takes the regime's
        memory = self.info.memory_limit_mb if self.info.timeout_min is not None else lim.memory_limit_mb
        return float(timeout_min) * 60.0, (memory if self.info.device == "cpu" else None)

    def _cost(self) -> float:
        p = self.run_dir / "llm_calls.jsonl"
        if not p.exists():
            return 0.0
        size = p.stat().st_size
        if getattr(self, "_cost_cache", (None, 0.0))[0] == size:
            return self._cost_cache[1]
        total = 0.0
        for line in p.read_text().splitlines():
            try:
                total += float(json.loads(line).get("cost_usd") or 0.0)
            except (ValueError, AttributeError):
                continue
        self._cost_cache = (size, total)
        return total

    def emit(self, event: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:  # a view's bug must not stop the run
                pass


def default_status(i: RunInfo) -> dict:
    """status.json before the first step (docs/contracts.md §5)."""
    return {"run_id": i.run_id, "regime": i.regime, "variant": i.variant, "profile": i.profile,
            "policy": i.policy, "model": i.model, "phase": "prepare", "block": 1, "iter_in_block": 0,
            "n_iter_block": i.n_iter_block, "iterations_done": 0,
            "iterations_total": i.budget.get("iterations", 0), "started_at": i.created_at or utc_now(),
            "updated_at": utc_now(), "cost_usd": 0.0, "best": None,
            "slots": [{"slot": s, "node": None, "parent": None, "strategy": "", "mutation": "",
                       "status": "pending", "out_dir": None, "score": None, "started_at": None}
                      for s in range(i.slots)],
            "message": "", "fallback": False,
            "policy_steps": {"total": 0, "answered": 0, "fallbacks": 0, "faults": {}}}


def plan_for_launch(plan: SlotPlan) -> dict:
    return {"parent": plan.parent, "strategy": plan.strategy, "mutation": plan.mutation,
            "parent_rule": plan.parent_rule, "hypothesis": plan.hypothesis, "code_changes": plan.code_changes}


def record_from(r: dict, review: SlotReview | None, next_parent: str, block: int, iter_in_block: int,
                iteration: int, run_dir: Path | None = None) -> NodeRecord:
    out_dir = Path(r["out_dir"])
    if run_dir is not None and out_dir.is_absolute():
        try:  # relative to the run directory, so a moved run still resolves
            out_dir = out_dir.relative_to(Path(run_dir))
        except ValueError:
            pass
    return NodeRecord(
        id=r["node"], parent=r["parent"], block=block, iter_in_block=iter_in_block, iteration=iteration,
        slot=r["slot"], strategy=r["strategy"], mutation=r["mutation"], parent_rule=r["parent_rule"],
        config=r["config"], commit=r["commit"], status=r["status"], classification=r["classification"],
        score=r["score"], metrics={k: float(v) for k, v in r["metrics"].items() if isinstance(v, (int, float))},
        degeneracy=r["degeneracy"], visual=review.visual if review else "",
        observation=review.observation if review else "", next=next_parent, duration_s=r["duration_s"],
        out_dir=str(out_dir), finished_at=r["finished_at"] or utc_now(), hypothesis=r["hypothesis"],
        code_changes=[{k: str(v) for k, v in c.items()} for c in r["code_changes"]], reason=r["reason"])


__all__ = ["RunInfo", "RunCtx", "RunStopped", "record_from", "plan_for_launch", "utc_now"]
