"""Start and resume runs (docs/contracts.md §5).

`start_run` creates the run directory (run.yaml, instructions.md, memory.md,
analysis.md, ucb_scores.txt, reasoning.log, nodes.jsonl, configs/,
workspace/, status.json) and drives the graph until the iteration budget;
`resume_run` continues a run from its files and its LangGraph checkpoint.
"""

from __future__ import annotations

import math
import os
import shutil
import threading
from pathlib import Path
from typing import Callable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from agent.driver import DriverLock, RunLocked, end_trainings
from agent.graph import compile_graph
from agent.llm import LLMRefused
from agent.memory import comparison_row, initial_memory
from agent.policies.base import DEFAULT_MODEL
from agent.policies.registry import make_policy
from agent.runctx import RunCtx, RunStopped
from agent.state import initial_state
from regimes.base import Regime, flatten, get_dotted, set_dotted
from rundir import paths
from rundir.io import dump_yaml_atomic, load_yaml, utc_now, utc_stamp, write_text_atomic
from rundir.memory import Memory, upsert_comparison
from rundir.records import RunInfo
from rundir.store import Store



class RunOptions(BaseModel):
    """Every flag of `agent run` (README.md)."""

    model_config = ConfigDict(extra="forbid")

    regime: str
    variant: str | None = None
    slots: int = 4
    iterations: int | None = None  # None: one block
    profile: Literal["quick", "full"] | None = None  # None: full with CUDA, quick on CPU
    policy: Literal["auto", "claude", "heuristic", "optuna", "cmaes", "random", "scripted"] = "auto"
    model: str = DEFAULT_MODEL
    max_cost_usd: float | None = None
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    slots_per_gpu: int | None = Field(None, ge=1)  # None: from the GPUs' free memory (local executor)
    confine: bool = True  # False: --no-confine (trainings run without OS confinement; debugging)
    run_dir: Path | None = None
    code: bool = True
    continue_from: Path | None = None
    regime_path: list[Path] = []
    phase1_checkpoint: Path | None = None
    seed: int = 0
    runs_root: Path = Path("runs")
    script: Path | None = None  # scripted policy: a JSON/YAML list of tool calls
    timeout_min: float | None = None  # wall clock per training; None: the regime's for the profile
    memory_limit_mb: int | None = None  # address space per CPU training; None: the regime's for the profile


class RunError(ValueError):
    """A run cannot start or resume (one-line message; `hint`: what to do, for the CLI)."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


def _cuda() -> bool:
    try:
        import torch
        return bool(torch.cuda.is_available())
    except Exception:  # no torch / broken driver: CPU
        return False


def resolve_device_profile(device: str, profile: str | None, cuda: bool) -> tuple[str, str, str]:
    """(device, profile, why): --profile defaults to full on a CUDA device, quick on CPU."""
    if device == "cuda" and not cuda:
        raise RunError("--device cuda: no CUDA device is available", hint="use --device cpu (or auto) on this machine")
    dev = ("cuda" if cuda else "cpu") if device == "auto" else device
    if profile is not None:
        return dev, profile, f"--profile {profile}"
    if dev == "cuda":
        return dev, "full", "CUDA device found, so the paper-scale profile; --profile quick for a fast run"
    why = "no CUDA device" if device == "auto" else "--device cpu"
    return dev, "quick", f"{why}, so the CPU-sized profile; --profile full for paper scale"


def resolve_policy(policy: str) -> tuple[str, str]:
    """(policy, why): auto means claude when ANTHROPIC_API_KEY is set, else heuristic."""
    has_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    if policy == "claude" and not has_key:
        raise RunError("--policy claude needs ANTHROPIC_API_KEY in the environment",
                       hint="export ANTHROPIC_API_KEY=... or use --policy heuristic (offline)")
    if policy == "auto":
        return ("claude", "ANTHROPIC_API_KEY is set") if has_key else ("heuristic", "no ANTHROPIC_API_KEY")
    return policy, f"--policy {policy}"


class RunPlan(BaseModel):
    """A run's start-up, resolved once from RunOptions (`plan_run`): what `agent run` prints and
    `start_run` creates."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, frozen=True)

    opts: RunOptions
    regime: Regime
    variant: str
    device: str
    profile: Literal["quick", "full"]
    profile_why: str
    policy: str
    policy_why: str
    #: the run's root config (the regime's default for variant and profile, phase-1 checkpoint set)
    config: dict
    n_iter_block: int
    ucb_c: float
    iterations: int
    #: timeout_min, memory_limit_mb, limits_reason (RunInfo fields)
    limits: dict
    #: where the run will be created (not yet resolved against the filesystem)
    run_dir: Path

    @property
    def profile_reason(self) -> str:
        """run.yaml's profile_reason ("profile quick: why")."""
        return f"profile {self.profile}: {self.profile_why}"


def default_run_dir(runs_root: Path, regime: str) -> Path:
    """runs/<regime>-<UTC time>; two runs started in the same second get -2, -3, ..."""
    stamp = utc_stamp()
    run_dir = Path(runs_root) / f"{regime}-{stamp}"
    k = 2
    while run_dir.exists():
        run_dir = Path(runs_root) / f"{regime}-{stamp}-{k}"
        k += 1
    return run_dir


def plan_run(opts: RunOptions, cuda: bool | None = None) -> RunPlan:
    """Resolve a run's start-up once: regime and variant, device and profile, policy, the root
    config and its budget, training limits, the run directory. Raises RunError (one line, a hint)
    or RegimeError; creates nothing and calls no API (`cuda`: None = ask torch)."""
    from regimes.registry import get_regime
    from regimes.validation import validate_config

    if opts.slots < 1:
        raise RunError(f"--slots must be at least 1, got {opts.slots}")
    if opts.iterations is not None and opts.iterations < 1:
        raise RunError(f"--iterations must be at least 1, got {opts.iterations}")
    if opts.ray_address and opts.executor != "ray":
        raise RunError("--ray-address needs --executor ray",
                       hint="add --executor ray (e.g. --executor ray --ray-address auto)")
    regime = get_regime(opts.regime, opts.regime_path or None)
    variant = opts.variant or regime.default_variant
    if variant not in regime.variants:
        raise RunError(f"unknown variant {variant!r} for regime {regime.name} (choices: {', '.join(regime.variants)})",
                       hint=f"`agent regimes show {regime.name}` describes its variants")
    device, profile, profile_why = resolve_device_profile(opts.device, opts.profile, _cuda() if cuda is None else cuda)
    policy, policy_why = resolve_policy(opts.policy)
    if policy == "scripted" and opts.script is None:
        raise RunError("--policy scripted needs a script file")
    if opts.phase1_checkpoint is not None and not Path(opts.phase1_checkpoint).is_file():
        raise RunError(f"--phase1-checkpoint {str(opts.phase1_checkpoint)!r} is not a file",
                       hint="give a phase-1 model.pt, or leave the flag out to train one")
    try:
        config = regime.default_config(variant, profile)
    except OSError as e:  # e.g. the regime's profile YAML is missing
        raise RunError(f"regime {regime.name}: its {profile} config cannot be read ({e})",
                       hint=f"try the other profile (--profile {'full' if profile == 'quick' else 'quick'}) "
                            "or fix the regime plugin") from None
    if opts.phase1_checkpoint is not None:
        keys = [k for k in flatten(config) if k.endswith("phase1_checkpoint")]
        if not keys:
            raise RunError(f"regime {regime.name} takes no phase-1 checkpoint (no *phase1_checkpoint config key)")
        set_dotted(config, keys[0], str(Path(opts.phase1_checkpoint).resolve()))
    problems = validate_config(regime, config)
    if problems:
        raise RunError(f"regime {regime.name} default config is invalid: {problems[0]}")
    n_iter_block = int(get_dotted(config, "claude.n_iter_block") or 4 * opts.slots)
    ucb_c = float(get_dotted(config, "claude.ucb_c") or 1.414)
    try:
        limits = resolve_limits(regime, profile, device, opts.timeout_min, opts.memory_limit_mb)
    except RunError as e:
        raise RunError(str(e), hint="leave --memory-limit-mb out on a GPU run" if device != "cpu"
                       else "see `agent run --help`") from None
    run_dir = Path(opts.run_dir) if opts.run_dir else default_run_dir(opts.runs_root, regime.name)
    if (run_dir / "status.json").exists() or (run_dir / "nodes.jsonl").exists():
        raise RunError(f"run directory {str(run_dir)!r} already holds a run",
                       hint=f"continue it with `agent resume {run_dir}`")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunError(f"run directory {run_dir} exists and is not empty (use `agent resume {run_dir}`)")
    return RunPlan(opts=opts, regime=regime, variant=variant, device=device, profile=profile,
                   profile_why=profile_why, policy=policy, policy_why=policy_why, config=config,
                   n_iter_block=n_iter_block, ucb_c=ucb_c,
                   iterations=opts.iterations if opts.iterations is not None else n_iter_block,
                   limits=limits, run_dir=run_dir)


def _policy_kwargs(info: RunInfo, run_dir: Path, regime) -> dict:
    return {"run_dir": run_dir, "regime": regime, "model": info.model, "seed": info.seed,
            "max_cost_usd": info.budget.get("max_cost_usd"), "script": info.script, "slots": info.slots}


def _confinement(confine: bool) -> str:
    from sandbox.confine import describe

    return describe(confine)


def _make_ctx(run_dir: Path, info: RunInfo, regime, workspace, stop, kill, on_event, executor=None) -> RunCtx:
    policy = make_policy(info.policy, **_policy_kwargs(info, run_dir, regime))
    fallback = policy if policy.name == "heuristic" else make_policy("heuristic", **_policy_kwargs(info, run_dir, regime))
    return RunCtx(run_dir, info, regime, workspace, policy, fallback, stop=stop, kill=kill, on_event=on_event,
                  executor=executor)


def start_run(opts: RunOptions, stop: threading.Event | None = None, kill: threading.Event | None = None,
              on_event: Callable[[dict], None] | None = None, executor=None, plan: RunPlan | None = None) -> Path:
    """Create a run directory and run the loop until the iteration budget; returns the run dir.

    `plan`: the start-up `plan_run(opts)` resolved (the CLI passes the one it printed);
    `executor`: an object with `run_batch(specs, on_progress, cancel)` (tests, benchmarks); default:
    `sandbox.executors.make_executor(opts.executor, ...)`."""
    from sandbox.workspace import Workspace

    plan = plan or plan_run(opts)
    regime, variant, config = plan.regime, plan.variant, dict(plan.config)
    preflight_rec = _preflight(plan.policy, opts.model, opts.max_cost_usd)
    run_dir = plan.run_dir
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    run_dir = run_dir.parent.resolve() / run_dir.name
    _sweep_stale_creations(run_dir.parent)
    # Atomic creation: everything is built in a hidden sibling, locked, then renamed into place, so a
    # kill at any moment leaves either no run directory (start again) or a complete one (resume).
    tmp, lock = _locked_creation_dir(run_dir)
    try:
        info = RunInfo(run_id=run_dir.name, regime=regime.name, variant=variant, profile=plan.profile,
                       profile_reason=plan.profile_reason, slots=opts.slots, policy=plan.policy, model=opts.model,
                       executor=opts.executor, ray_address=opts.ray_address, device=plan.device,
                       slots_per_gpu=opts.slots_per_gpu, confine=opts.confine, confinement=_confinement(opts.confine),
                       budget={"iterations": plan.iterations, "max_cost_usd": opts.max_cost_usd}, seed=opts.seed,
                       code=opts.code, n_iter_block=plan.n_iter_block, ucb_c=plan.ucb_c,
                       regime_path=[str(Path(p).resolve()) for p in opts.regime_path],
                       continue_from=str(Path(opts.continue_from).resolve()) if opts.continue_from else None,
                       phase1_checkpoint=str(opts.phase1_checkpoint) if opts.phase1_checkpoint else None,
                       script=str(Path(opts.script).resolve()) if opts.script else None, created_at=utc_now(),
                       **plan.limits)
        _populate(tmp, info, regime, variant, config, opts, preflight_rec)
        try:
            os.rename(tmp, run_dir)  # onto a missing or empty directory only
        except OSError as e:
            raise RunError(f"run directory {run_dir} was created by another process meanwhile ({e.strerror})") from None
        lock.path = run_dir / lock.path.name
        workspace = Workspace.open(run_dir / "workspace")
        ctx = _make_ctx(run_dir, info, regime, workspace, stop, kill, on_event, executor)
        return _drive(ctx, resume=False)
    except BaseException:
        if tmp.exists():  # not renamed: nothing was created
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.release()


CREATING_PREFIX = ".creating-"


def _populate(d: Path, info: RunInfo, regime, variant: str, config: dict, opts: RunOptions,
              preflight_rec=None) -> None:
    """Write every file of a new run directory `d` (not yet at its final path)."""
    from sandbox.workspace import Workspace

    (d / "run.yaml").write_text(yaml.safe_dump(info.model_dump(mode="json"), sort_keys=False))
    (d / "reasoning.log").write_text(f"{utc_now()} {info.profile_reason}; device {info.device}; "
                                     f"policy {info.policy}; {limits_text(info)}\n")
    write_text_atomic(d / "instructions.md", regime.instructions_text())
    mem = initial_memory(regime, variant)
    if opts.continue_from is not None:
        mem = _carry_knowledge(Path(opts.continue_from), regime, variant, mem)
    mem.save(d / "memory.md", block=1)
    for name in ("analysis.md", "ucb_scores.txt", "nodes.jsonl", "llm_calls.jsonl"):
        (d / name).touch()
    if preflight_rec is not None:  # its (tiny) cost belongs to the run
        with open(d / "llm_calls.jsonl", "a") as f:
            f.write(preflight_rec.model_dump_json() + "\n")
        if not preflight_rec.ok:
            with open(d / "reasoning.log", "a") as f:
                f.write(f"{utc_now()} preflight: Claude API not answering now ({preflight_rec.error}); "
                        "steps fall back to the heuristic while that lasts\n")
    dump_yaml_atomic(d / "base_config.yaml", config)
    for s in range(opts.slots):
        dump_yaml_atomic(paths.slot_config_path(d, s), regime.slot_config(config, s))
    (d / "plans").mkdir(exist_ok=True)
    (d / "iterations").mkdir(exist_ok=True)
    Workspace.create(d / "workspace", regime)
    # status.json last: the run is complete (a kill from here on leaves a resumable run)
    RunCtx.initial_status_file(d, info)


def _locked_creation_dir(run_dir: Path) -> tuple[Path, DriverLock]:
    """A fresh hidden sibling of `run_dir`, locked by this process.

    Another `agent run` sweeping stale siblings may lock or remove it between our mkdir and our
    lock: then take another name."""
    for k in range(5):
        tmp = run_dir.parent / f"{CREATING_PREFIX}{run_dir.name}.{os.getpid()}{'-' + str(k) if k else ''}"
        try:
            tmp.mkdir()
            return tmp, DriverLock(tmp).acquire()
        except (FileExistsError, FileNotFoundError, RunLocked):
            continue
    raise RunError(f"cannot make a directory next to {run_dir} to create the run in")


def _sweep_stale_creations(parent: Path) -> None:
    """Remove half-built run directories whose creator died (their lock is free)."""
    for p in parent.glob(f"{CREATING_PREFIX}*"):
        if not p.is_dir():
            continue
        try:
            with DriverLock(p):
                shutil.rmtree(p, ignore_errors=True)
        except (RunLocked, OSError):
            continue  # being created right now (or not ours to remove)


def resolve_limits(regime, profile: str, device: str, timeout_min: float | None = None,
                   memory_limit_mb: int | None = None) -> dict:
    """The run's training limits (RunInfo fields): the regime's for the profile, overridden by
    `--timeout-min` / `--memory-limit-mb`. RunError for a value that cannot apply."""
    lim = regime.training_limits(profile)
    timeout, memory = lim.timeout_min, lim.memory_limit_mb
    why_t = why_m = f"regime {regime.name} {profile}"
    if timeout_min is not None:
        if not (timeout_min > 0 and math.isfinite(timeout_min)):
            raise RunError(f"--timeout-min must be a positive number of minutes, got {timeout_min}")
        timeout, why_t = float(timeout_min), "--timeout-min"
    if memory_limit_mb is not None:
        if memory_limit_mb < 1:
            raise RunError(f"--memory-limit-mb must be at least 1, got {memory_limit_mb}")
        if device != "cpu":
            raise RunError(f"--memory-limit-mb limits a CPU training's address space; it cannot apply on {device}")
        memory, why_m = int(memory_limit_mb), "--memory-limit-mb"
    elif memory is not None and device != "cpu":
        memory, why_m = None, f"regime {regime.name} {profile}'s limit applies on cpu only"
    return {"timeout_min": timeout, "memory_limit_mb": memory, "limits_reason": f"timeout: {why_t}; memory: {why_m}"}


def limits_text(info) -> str:
    """'training limits: 60 min wall clock, memory 4096 MB (timeout: ...; memory: ...)' for headers and
    logs; `info`: a RunInfo or the dict resolve_limits returns."""
    get = info.get if isinstance(info, dict) else (lambda k: getattr(info, k))
    t, m, why = get("timeout_min"), get("memory_limit_mb"), get("limits_reason")
    t_txt = f"{t:g} min wall clock per training" if t is not None else "the regime's default timeout"
    mem = f"memory {m} MB" if m else "no memory limit"
    return f"training limits: {t_txt}, {mem}" + (f" ({why})" if why else "")


def resume_run(run_dir: Path, stop: threading.Event | None = None, kill: threading.Event | None = None,
               on_event: Callable[[dict], None] | None = None, iterations: int | None = None,
               executor=None, max_cost_usd: float | None = None, confine: bool | None = None) -> Path:
    """Continue a run where it stopped. `iterations`: a new total budget (finished trainings);
    `max_cost_usd`: a new LLM spend limit (both recorded in run.yaml's budget); `confine`: False for
    --no-confine, None keeps the run's setting."""
    from regimes.registry import get_regime
    from sandbox.workspace import Workspace

    run_dir = Path(run_dir).resolve()
    if not (run_dir / "run.yaml").is_file():
        raise RunError(f"{run_dir} is not a run directory (no run.yaml)")
    if iterations is not None and iterations < 1:
        raise RunError(f"--iterations must be at least 1, got {iterations}")
    if max_cost_usd is not None and max_cost_usd < 0:
        raise RunError(f"--max-cost-usd must be >= 0, got {max_cost_usd}")
    with DriverLock(run_dir):  # one driver per run directory, for as long as this one lives
        info = RunInfo.model_validate(load_yaml(run_dir / "run.yaml"))
        changed = []
        if iterations is not None:
            if iterations != info.budget.get("iterations"):
                changed.append(f"iterations {info.budget.get('iterations')} -> {iterations}")
            info.budget["iterations"] = iterations
        if max_cost_usd is not None:
            if max_cost_usd != info.budget.get("max_cost_usd"):
                changed.append(f"max_cost_usd {info.budget.get('max_cost_usd')} -> {max_cost_usd:g}")
            info.budget["max_cost_usd"] = max_cost_usd
        # this machine's confinement (a resume may run elsewhere, or with --no-confine)
        if confine is not None:
            info.confine = confine
        label = _confinement(info.confine)
        if label != info.confinement:
            info.confinement = label
            changed.append(f"confinement {label}")
        if changed:
            write_text_atomic(run_dir / "run.yaml", yaml.safe_dump(info.model_dump(mode="json"), sort_keys=False))
        regime = get_regime(info.regime, [Path(p) for p in info.regime_path] or None)
        notes = [f"resume: {n}" for n in Store.repair(run_dir / "nodes.jsonl")]
        # trainings of a driver that died may still run: end them before any slot is relaunched
        end_trainings(run_dir, log=lambda m: notes.append(f"resume: {m}"))
        workspace = Workspace.open(run_dir / "workspace")
        ctx = _make_ctx(run_dir, info, regime, workspace, stop, kill, on_event, executor)
        if ctx.policy.name == "claude" and hasattr(ctx.policy, "preflight"):
            try:
                ctx.policy.preflight(run_dir)  # a bad key or model: one line, before anything runs
            except LLMRefused as e:
                ctx.close()
                raise RunError(str(e), hint=f"fix the setting named above, then: agent resume {run_dir}") from None
        for note in notes:
            ctx.env.reasoning(note)
        max_cost = info.budget.get("max_cost_usd")
        ctx.env.reasoning(f"resume: budget {ctx.iterations_total} iterations"
                          + (f", max cost ${max_cost:g}" if max_cost is not None else "")
                          + f", {len(ctx.store)} done" + (f" (changed: {'; '.join(changed)})" if changed else "")
                          + f"; {limits_text(info)}")
        # a fresh phase: the view must not take the previous stop for this process's end
        ctx.set_status(iterations_total=ctx.iterations_total, fallback=False, phase="resuming", stopped_by=None,
                       message="resuming")
        return _drive(ctx, resume=True)


def _drive(ctx: RunCtx, resume: bool) -> Path:
    graph, conn = compile_graph(ctx)
    cfg = {"configurable": {"thread_id": ctx.info.run_id}, "recursion_limit": 100_000}
    inp = initial_state(str(ctx.run_dir), ctx.iterations_total)
    if resume:
        snap = graph.get_state(cfg)
        # `next` leaves out a task whose results were saved (put_writes) when the kill came before the
        # next checkpoint (put): such a run is interrupted too, not finished (`tasks` still lists it)
        if snap.next or snap.tasks:
            inp = None  # continue the interrupted step
        elif snap.values.get("prepared"):
            inp = {"phase": "mutate"}  # finished earlier; a larger budget continues from mutate
    max_cost = ctx.info.budget.get("max_cost_usd")
    outcome = "finished"
    try:
        if resume and inp is not None and inp.get("phase") == "mutate" and len(ctx.store) >= ctx.iterations_total:
            outcome = "finished"
        else:
            # durability "sync": each step's checkpoint is on disk before the next step starts (SIGKILL-safe)
            for _update in graph.stream(inp, cfg, context=ctx, stream_mode="updates", durability="sync"):
                if ctx.kill.is_set() or ctx.stop.is_set():
                    outcome = "stopped"
                    break
                if max_cost is not None and ctx._cost() >= max_cost:
                    ctx.env.reasoning(f"max cost reached: ${ctx._cost():.2f} >= ${max_cost:.2f}; stopping")
                    ctx.status = ctx.status.updated(stopped_by="cost_limit")
                    outcome = "stopped (max cost)"
                    break
    except RunStopped as e:
        outcome = f"stopped: {e}"
    except BaseException as e:  # a crash (or Ctrl-C): say so in status.json, keep the run resumable
        conn.close()
        ctx.close()
        ctx.env.reasoning(f"run stopped by an error: {type(e).__name__}: {e}")
        ctx.set_status(phase="stopped", message=f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                       iterations_done=len(ctx.store))
        raise
    conn.close()
    ctx.close()
    phase = "done" if outcome == "finished" else "stopped"
    ctx.set_status(phase=phase, message=(ctx.status.message or "") if outcome == "finished" else outcome,
                   iterations_done=len(ctx.store))
    ctx.env.reasoning(f"run {outcome}: {len(ctx.store)} iterations")
    ctx.emit({"type": "run_end", "outcome": outcome})
    return ctx.run_dir


def _preflight(policy_name: str, model: str, max_cost_usd: float | None):
    """Policy claude: a one-token call before the run directory exists; a bad key,
    model or base URL is a RunError (one line, exit 2). Returns the call record."""
    if policy_name != "claude":
        return None
    from agent.policies.claude import preflight

    try:
        return preflight(model, max_cost_usd=max_cost_usd)
    except LLMRefused as e:
        raise RunError(str(e), hint="nothing was started; fix the setting named above and run again") from None


def _carry_knowledge(old_run: Path, regime, variant: str, mem: Memory) -> Memory:
    """Start a run with an older run's knowledge base, and a Regime Comparison row for it (SCIENCE B5)."""
    if not (old_run / "memory.md").is_file() or not (old_run / "run.yaml").is_file():
        raise RunError(f"--continue {old_run}: not a run directory (memory.md and run.yaml needed)")
    old = Memory.load(old_run / "memory.md")
    old_info = RunInfo.model_validate(load_yaml(old_run / "run.yaml"))
    for name in ("Established Principles", "Open Questions", "Regime Comparison"):
        if old.bodies[name].strip():
            mem.update(name, old.bodies[name], "replace", code=True)
    mem.update("Previous Block Summary",
               f"Continued from run {old_info.run_id} ({old_info.regime}, variant {old_info.variant}). "
               + (old.bodies["Previous Block Summary"].strip() or ""), "replace")
    from regimes.registry import get_regime
    try:
        old_regime = get_regime(old_info.regime, [Path(p) for p in old_info.regime_path] or None)
    except Exception:
        old_regime = regime
    upsert_comparison(mem, comparison_row(old_regime, old_info.variant, old_info.run_id,
                                          Store(old_run / "nodes.jsonl").nodes()))
    upsert_comparison(mem, comparison_row(regime, variant, "(this run)", []))
    return mem


__all__ = ["RunOptions", "RunError", "RunLocked", "start_run", "resume_run", "limits_text", "resolve_limits"]
