"""`agent`: the command line of gnn-agent (README.md; docs/architecture.md).

Every subcommand imports its heavy dependencies lazily, so `agent --help`
works (and is fast) whatever is installed. User mistakes print one line
naming the problem and one hint line, never a traceback; exit codes:
0 ok, 1 run failed, 2 usage or config error, 130 interrupted.
Set GNN_AGENT_DEBUG=1 to see the traceback of an unexpected error.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
POLICIES = ("auto", "claude", "heuristic", "optuna", "cmaes", "random")
DEFAULT_MODEL = "claude-sonnet-4-6"  # 4-5 is deprecated (end of life 2026-11-30, per the SDK)


class UsageError(Exception):
    """A user mistake: one line naming the problem, plus a hint line."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class _Parser(argparse.ArgumentParser):
    """argparse that raises UsageError instead of printing the usage block and exiting."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message, hint=f"see `{self.prog} --help`")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Wraps the description, keeps the epilog's examples as written, shows each option's real default."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text:  # an epilog: examples keep their lines
            return super()._fill_text(text, width, indent)
        import textwrap

        return textwrap.fill(text, width, initial_indent=indent, subsequent_indent=indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        d = action.default
        if "%(default)" in help_text or d in (None, False, [], argparse.SUPPRESS) or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


# ----------------------------------------------------------------------------- argument types

def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {v}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return v


def _positive_float(text: str) -> float:
    v = _nonneg_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return v


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


# ----------------------------------------------------------------------------- parser

RUN_EPILOG = """\
examples:
  agent run --regime homeostasis --slots 4
  agent run --regime rate_constants --iterations 24 --policy heuristic --no-live
  ANTHROPIC_API_KEY=... agent run --regime stoichiometry --variant untied \\
        --policy claude --model claude-sonnet-4-6 --max-cost-usd 5
  agent run --regime sparse_connectivity --executor ray --ray-address auto --device cuda
  agent run --regime sparse_connectivity --variant n200 --continue runs/sparse_connectivity-20261122-014500
  agent run --regime my_regime --regime-path ./my_regimes

Ctrl-C once stops cleanly after the current step (resume with `agent resume RUN_DIR`);
Ctrl-C twice also ends the running trainings; so does SIGTERM (`kill PID`).
"""

MAIN_EPILOG = """\
commands:
  run          start a run (watch it live; Ctrl-C to stop, `agent resume` to continue)
  resume       continue a stopped run from its checkpoint
  status       one-screen summary of a running or finished run
  report       write RUN_DIR/report/report.md and its plots
  regimes      list regimes; `regimes show NAME`; `regimes config NAME`
  new-regime   scaffold a working regime plugin with a toy simulator
  replay       re-run one node from its (config, commit) and compare metrics

examples:
  agent run --regime homeostasis --slots 4
  agent status runs/homeostasis-20261122-014500
  agent report runs/homeostasis-20261122-014500
  agent regimes show sparse_connectivity

exit codes: 0 ok, 1 run failed, 2 usage or config error, 130 interrupted.
Set GNN_AGENT_DEBUG=1 to see the traceback of an unexpected error.
"""


def build_parser() -> argparse.ArgumentParser:
    """The full `agent` argument parser (all subcommands)."""
    p = _Parser(prog="agent", description="gnn-agent: an LLM research agent that explores how to train graph "
                "neural networks recovering hidden structure from simulated dynamics.",
                epilog=MAIN_EPILOG, formatter_class=_Formatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    r = sub.add_parser("run", help="start a run", formatter_class=_Formatter, epilog=RUN_EPILOG,
                       description="Start a run: S parallel training slots per batch, a policy reads the "
                       "results, keeps memory, picks parents by UCB and mutates configs or code.")
    r.add_argument("--regime", required=True, metavar="NAME", help="the regime to explore (`agent regimes` lists them)")
    r.add_argument("--variant", metavar="V", help="regime variant (default: the regime's default variant)")
    r.add_argument("--slots", type=_positive_int, default=4, metavar="S", help="trainings per batch")
    r.add_argument("--iterations", type=_positive_int, metavar="N",
                   help="finished trainings to run (default: one block, the regime's claude.n_iter_block)")
    r.add_argument("--profile", choices=("quick", "full"),
                   help="config profile (default: full with CUDA, quick on CPU)")
    r.add_argument("--policy", choices=POLICIES, default="auto",
                   help="who decides: auto = claude when ANTHROPIC_API_KEY is set, else heuristic")
    r.add_argument("--model", default=DEFAULT_MODEL, metavar="M", help="Claude model (policy claude)")
    r.add_argument("--max-cost-usd", type=_nonneg_float, metavar="X",
                   help="stop cleanly once the LLM spend reaches X dollars (default: no limit)")
    r.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="where trainings run: local process pool or Ray tasks")
    r.add_argument("--ray-address", metavar="A", help="Ray cluster address (auto or HOST:PORT); needs --executor ray")
    r.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    r.add_argument("--slots-per-gpu", type=_positive_int, metavar="N",
                   help="trainings sharing one GPU at a time (default: as many as its free memory holds, "
                        "at most one per core; Ray: 1)")
    r.add_argument("--run-dir", type=Path, metavar="D", help="run directory (default: runs/<regime>-<yyyymmdd-hhmmss>)")
    r.add_argument("--no-live", action="store_true", help="plain log lines instead of the live view")
    r.add_argument("--no-code", action="store_true", help="configs only: no code edits")
    r.add_argument("--no-confine", action="store_true",
                   help="debugging: run trainings without OS confinement (Landlock, namespaces); shown in the header")
    r.add_argument("--continue", dest="continue_from", type=Path, metavar="OLD_RUN_DIR",
                   help="carry the knowledge base of an earlier run over (e.g. into a new variant)")
    r.add_argument("--regime-path", type=Path, action="append", default=[], metavar="DIR",
                   help="extra directory of regime plugins (repeatable)")
    r.add_argument("--phase1-checkpoint", type=Path, metavar="PATH",
                   help="homeostasis: use this phase-1 checkpoint instead of training one")
    r.add_argument("--seed", type=_int, default=0, metavar="N", help="run seed (heuristic/optuna/random choices)")
    r.add_argument("--timeout-min", type=_positive_float, metavar="M",
                   help="wall-clock limit of one training in minutes (default: the regime's for the profile)")
    r.add_argument("--memory-limit-mb", type=_positive_int, metavar="N",
                   help="address-space limit of one CPU training in MB (default: the regime's for the profile)")
    r.set_defaults(handler=cmd_run)

    rs = sub.add_parser("resume", help="continue a stopped run", formatter_class=_Formatter,
                        description="Continue a stopped or crashed run from its checkpoint (state.sqlite).",
                        epilog="examples:\n  agent resume runs/homeostasis-20261122-014500\n"
                               "  agent resume runs/homeostasis-20261122-014500 --iterations 8 --no-live\n"
                               "  agent resume runs/homeostasis-20261122-014500 --max-cost-usd 10\n")
    rs.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    rs.add_argument("--iterations", type=_positive_int, metavar="N",
                    help="new total of finished trainings (default: the run's own target; recorded in run.yaml)")
    rs.add_argument("--max-cost-usd", type=_nonneg_float, metavar="X",
                    help="new LLM spend limit in dollars for the whole run, spend so far included "
                         "(default: the run's own; recorded in run.yaml)")
    rs.add_argument("--no-live", action="store_true", help="plain log lines instead of the live view")
    rs.add_argument("--no-confine", action="store_true",
                    help="debugging: run trainings without OS confinement (Landlock, namespaces); shown in the header")
    rs.set_defaults(handler=cmd_resume)

    st = sub.add_parser("status", help="summary of a run", formatter_class=_Formatter,
                        description="One-screen summary of a running or finished run: header, slots, best "
                        "nodes, counts, cost, last messages, and whether it is still running.",
                        epilog="example:\n  agent status runs/homeostasis-20261122-014500\n")
    st.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    st.set_defaults(handler=cmd_status)

    rp = sub.add_parser("report", help="write the run report", formatter_class=_Formatter,
                        description="Write RUN_DIR/report/report.md plus PNGs: score per iteration by slot "
                        "and strategy, best so far, the UCB tree, parameter-versus-score plots, and the "
                        "best node's config, code diff and plots.",
                        epilog="example:\n  agent report runs/homeostasis-20261122-014500\n")
    rp.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    rp.add_argument("--out", type=Path, metavar="DIR", help="output directory (default: RUN_DIR/report)")
    rp.set_defaults(handler=cmd_report)

    rg = sub.add_parser("regimes", help="list or show regimes", formatter_class=_Formatter,
                        description="List the available regimes, show one's contract, or print its default config.",
                        epilog="examples:\n  agent regimes\n  agent regimes show homeostasis\n"
                               "  agent regimes config sparse_connectivity --variant n200 --profile quick\n")
    rg.add_argument("action", nargs="?", choices=("list", "show", "config"), default="list",
                    help="list (default), show NAME, config NAME")
    rg.add_argument("name", nargs="?", metavar="NAME", help="regime name (for show / config)")
    rg.add_argument("--variant", metavar="V", help="variant (config)")
    rg.add_argument("--profile", choices=("quick", "full"), default="quick", help="profile (config)")
    rg.add_argument("--regime-path", type=Path, action="append", default=[], metavar="DIR",
                    help="extra directory of regime plugins (repeatable)")
    rg.set_defaults(handler=cmd_regimes)

    nr = sub.add_parser("new-regime", help="scaffold a regime plugin", formatter_class=_Formatter,
                        description="Write a working regime plugin (regime.py, a toy simulator and training "
                        "entry, instructions) into DIR/NAME; run it with --regime-path DIR.",
                        epilog="example:\n  agent new-regime my_regime --dir ./my_regimes\n"
                               "  agent run --regime my_regime --regime-path ./my_regimes --slots 2\n")
    nr.add_argument("name", metavar="NAME", help="regime name (letters, digits, _)")
    nr.add_argument("--dir", type=Path, required=True, metavar="D", help="plugin directory (created)")
    nr.set_defaults(handler=cmd_new_regime)

    rl = sub.add_parser("replay", help="re-run one node", formatter_class=_Formatter,
                        description="Re-run node NODE of a run from its recorded (config, commit) in a fresh "
                        "output directory, and print its old and new metrics side by side.",
                        epilog="example:\n  agent replay runs/homeostasis-20261122-014500 12\n")
    rl.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory")
    rl.add_argument("node", type=_int, metavar="NODE", help="node id (see nodes.jsonl or `agent status`)")
    rl.add_argument("--out", type=Path, metavar="DIR",
                    help="output directory (default: RUN_DIR/replays/node_<NODE>-<time>)")
    rl.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    rl.add_argument("--timeout", type=_nonneg_float, default=3600.0, metavar="S", help="wall-clock limit in seconds")
    rl.add_argument("--no-confine", action="store_true",
                    help="debugging: run trainings without OS confinement (Landlock, namespaces); shown in the header")
    rl.set_defaults(handler=cmd_replay)
    return p


# ----------------------------------------------------------------------------- helpers

def _confinement_label(confine: bool) -> str:
    """What confinement the trainings get on this machine (sandbox/confine.py)."""
    from sandbox.confine import describe

    return describe(confine)


def _console():
    from rich.console import Console

    return Console()


def _load_regime(name: str, regime_path: list[Path] | None = None):
    """The regime, or UsageError naming the valid choices."""
    from regimes.registry import RegimeError, get_regime

    try:
        return get_regime(name, regime_path or None)
    except RegimeError as e:
        raise UsageError(str(e), hint="`agent regimes` lists the regimes; add your own with --regime-path DIR") from None


def _check_variant(regime, variant: str | None) -> str:
    if variant is None:
        return regime.default_variant
    if variant not in regime.variants:
        raise UsageError(f"unknown variant {variant!r} for regime {regime.name} (choices: {', '.join(regime.variants)})",
                         hint=f"`agent regimes show {regime.name}` describes its variants")
    return variant


def _run_dir_arg(run_dir: Path, cmd: str) -> Path:
    from rundir.readers import RunFileError, check_run_dir

    try:
        return check_run_dir(run_dir)
    except RunFileError as e:
        raise UsageError(str(e), hint=f"give the directory `agent run` created, e.g. `agent {cmd} runs/<regime>-<time>`") from None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _claude_preflight(model: str, max_cost_usd: float | None) -> None:
    """One-token call (agent.policies.claude.preflight): a bad key, model or base URL -> UsageError."""
    from agent.llm import LLMRefused
    from agent.policies.claude import preflight

    try:
        preflight(model, max_cost_usd=max_cost_usd)
    except LLMRefused as e:
        raise UsageError(str(e), hint="nothing was started; fix the setting named above and run again") from None


def _use_live(no_live: bool, console) -> bool:
    return not no_live and console.is_terminal and not console.is_dumb_terminal


def _finish(run_dir: Path, intr, console) -> int:
    """Exit code and closing lines after start_run/resume_run returned."""
    from agent.fmt import best_node, fmt_score
    from rundir.readers import read_status
    from rundir.store import read_nodes

    if intr.stop.is_set():
        console.print(f"stopped. resume with: agent resume {run_dir}", highlight=False, markup=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    st = read_status(run_dir)
    if st is not None and st.phase == "stopped":  # e.g. --max-cost-usd reached: a requested, clean stop
        why = (st.message or "").removeprefix("stopped: ")
        if st.stopped_by == "llm_refused":  # bad key / model / permission: a config error
            console.print(f"stopped: {why}. fix it, then resume with: agent resume {run_dir}",
                          highlight=False, markup=False, soft_wrap=True)
            return EXIT_USAGE
        hint = f"agent resume {run_dir}"
        if st.stopped_by == "cost_limit":
            hint += " --max-cost-usd X (a higher limit)"
        console.print(f"stopped: {why or 'budget reached'}. resume with: {hint}",
                      highlight=False, markup=False, soft_wrap=True)
        return EXIT_OK
    if st is not None and st.phase == "failed":
        console.print(f"run failed: {st.message or 'see reasoning.log'} ({run_dir})", highlight=False, markup=False, soft_wrap=True)
        return EXIT_FAILED
    b = best_node(read_nodes(run_dir))
    best = f"best node {b['id']} score {fmt_score(b['score'])}" if b else "no scored node"
    console.print(f"done: {best}. report: agent report {run_dir}   status: agent status {run_dir}",
                  highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


# ----------------------------------------------------------------------------- commands

def cmd_run(args: argparse.Namespace) -> int:
    """`agent run`: resolve the run's start-up once (agent.run.plan_run), print it, run with the live view."""
    if args.continue_from is not None:
        _run_dir_arg(args.continue_from, "run --continue")
    if args.policy in ("claude", "auto") and os.environ.get("ANTHROPIC_API_KEY"):
        # first, before the slow imports (torch, langgraph): a bad key is one line at once
        _claude_preflight(args.model, args.max_cost_usd)

    from pydantic import ValidationError

    from agent.run import RunError, RunOptions, limits_text, plan_run, start_run
    from regimes.registry import RegimeError

    try:
        opts = RunOptions(regime=args.regime, variant=args.variant, slots=args.slots, iterations=args.iterations,
                          profile=args.profile, policy=args.policy, model=args.model, max_cost_usd=args.max_cost_usd,
                          executor=args.executor, ray_address=args.ray_address, device=args.device,
                          run_dir=args.run_dir, slots_per_gpu=args.slots_per_gpu,
                          code=not args.no_code, confine=not args.no_confine,
                          continue_from=args.continue_from, regime_path=args.regime_path,
                          phase1_checkpoint=args.phase1_checkpoint, seed=args.seed,
                          timeout_min=args.timeout_min, memory_limit_mb=args.memory_limit_mb)
    except ValidationError as e:
        err = e.errors()[0]
        raise UsageError(f"bad option {'.'.join(map(str, err['loc']))}: {err['msg']}", hint="see `agent run --help`") from None
    try:
        plan = plan_run(opts, cuda=_cuda_available())
    except RegimeError as e:
        raise UsageError(str(e), hint="`agent regimes` lists the regimes; add your own with --regime-path DIR") from None
    except RunError as e:
        raise UsageError(str(e), hint=e.hint or "see `agent run --help`") from None
    console = _console()
    it_text = f"{plan.iterations} iterations" + ("" if args.iterations else " (one block)")
    model = f" ({args.model})" if plan.policy == "claude" else ""
    cost = f", budget ${args.max_cost_usd:g}" if args.max_cost_usd is not None else ""
    for line in (f"gnn-agent run: regime {plan.regime.name} [{plan.variant}], {args.slots} slots, {it_text}",
                 f"  policy {plan.policy}{model} ({plan.policy_why}){cost}; code edits {'off' if args.no_code else 'on'}",
                 f"  profile {plan.profile} ({plan.profile_why}); device {plan.device}; executor {args.executor}"
                 + (f" at {args.ray_address}" if args.ray_address else ""),
                 f"  {limits_text(plan.limits)}",
                 f"  confinement {_confinement_label(not args.no_confine)}",
                 f"  run dir {plan.run_dir}"):
        console.print(line, highlight=False, markup=False, soft_wrap=True)
    return _drive(lambda stop, kill, on_event: start_run(opts, stop=stop, kill=kill, on_event=on_event, plan=plan),
                  plan.run_dir, args.no_live, console)


def _drive(target: Callable[..., Any], run_dir: Path, no_live: bool, console, history: bool = True) -> int:
    from agent.live import drive

    try:
        result, intr = drive(target, run_dir, console, live=_use_live(no_live, console), history=history)
    except Exception as e:
        if os.environ.get("GNN_AGENT_DEBUG", "") not in ("", "0") or _known_error(e) is not None:
            raise
        # The loop saved its state at the last step: say so instead of a bare crash.
        first = (str(e).strip().splitlines() or [""])[0]
        resumable = (Path(run_dir) / "run.yaml").is_file()
        _print_error(f"run failed: {type(e).__name__}: {first}".rstrip(": "),
                     (f"the run is resumable: agent resume {run_dir}; " if resumable else "")
                     + "run with GNN_AGENT_DEBUG=1 for the traceback")
        return EXIT_FAILED
    if isinstance(result, (str, Path)):
        run_dir = Path(result)
    return _finish(run_dir, intr, console)


def cmd_resume(args: argparse.Namespace) -> int:
    """`agent resume RUN_DIR`: continue from the checkpoint with the same view."""
    run_dir = _run_dir_arg(args.run_dir, "resume")
    from agent.driver import lock_held

    holder = lock_held(run_dir)
    if holder is not None:
        raise UsageError(f"run {run_dir} is already driven by {f'pid {holder}' if holder else 'another process'}",
                         hint=_LOCK_HINT)
    from rundir.paths import PID_FILE
    from rundir.readers import read_status
    from agent.status_view import liveness

    alive, why = liveness(run_dir, read_status(run_dir))
    if alive and (run_dir / PID_FILE).is_file():
        raise UsageError(f"run {run_dir} is still {why}", hint="stop it first (Ctrl-C in its terminal), then resume")
    from agent.run import resume_run

    console = _console()
    console.print(f"gnn-agent resume: {run_dir}", highlight=False, markup=False, soft_wrap=True)
    confine = not args.no_confine  # per invocation: a debugging --no-confine does not stick to the run
    console.print(f"  confinement {_confinement_label(confine)}", highlight=False, markup=False, soft_wrap=True)
    return _drive(lambda stop, kill, on_event: resume_run(run_dir, stop=stop, kill=kill, on_event=on_event,
                                                          iterations=args.iterations,
                                                          max_cost_usd=args.max_cost_usd, confine=confine),
                  run_dir, args.no_live, console, history=False)


def cmd_status(args: argparse.Namespace) -> int:
    """`agent status RUN_DIR`."""
    run_dir = _run_dir_arg(args.run_dir, "status")
    from agent.status_view import status_renderable

    console = _console()
    console.print(status_renderable(run_dir, width=console.width))
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    """`agent report RUN_DIR`."""
    run_dir = _run_dir_arg(args.run_dir, "report")
    from agent.report import ReportError, write_report

    try:
        path = write_report(run_dir, out_dir=args.out)
    except ReportError as e:
        raise UsageError(str(e), hint="a report needs at least one finished node in nodes.jsonl") from None
    console = _console()
    pngs = sorted(p.name for p in path.parent.glob("*.png"))
    console.print(f"wrote {path} ({len(pngs)} plots: {', '.join(pngs)})", highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


def cmd_regimes(args: argparse.Namespace) -> int:
    """`agent regimes [show NAME | config NAME]`."""
    console = _console()
    if args.action == "list":
        if args.name:
            raise UsageError(f"unexpected argument {args.name!r}", hint="use `agent regimes show NAME`")
        from regimes.registry import RegimeError, list_regimes

        try:
            regimes = list_regimes(args.regime_path or None)
        except RegimeError as e:
            raise UsageError(str(e), hint="fix or remove the plugin named above") from None
        # Plain aligned columns: names, variants and metrics are never cut; the title takes what is left.
        rows = [("name", "variants", "primary metric", "keys", "title")]
        for r in regimes:
            variants = [r.default_variant] + [v for v in r.variants if v != r.default_variant]
            rows.append((r.name, ", ".join(variants), r.primary_metric, str(len(r.mutable)), r.title))
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        room = max(10, console.width - sum(widths) - 8)
        for i, row in enumerate(rows):
            title = row[4] if len(row[4]) <= room else row[4][: room - 1] + "…"
            line = "  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]), row[2].ljust(widths[2]),
                              row[3].rjust(widths[3]), title])
            console.print(line.rstrip(), style="bold" if i == 0 else None, highlight=False, markup=False,
                          soft_wrap=True)
        console.print("details: agent regimes show NAME   default config: agent regimes config NAME", highlight=False)
        return EXIT_OK
    if not args.name:
        raise UsageError(f"`agent regimes {args.action}` needs a regime NAME", hint=f"e.g. agent regimes {args.action} homeostasis")
    regime = _load_regime(args.name, args.regime_path)
    if args.action == "show":
        sys.stdout.write(_describe(regime).rstrip("\n") + "\n")  # Markdown, unwrapped: it may be piped to a file
        return EXIT_OK
    variant = _check_variant(regime, args.variant)
    try:
        text = _config_yaml(regime, variant, args.profile)
    except OSError as e:
        raise UsageError(f"regime {regime.name}: its {args.profile} config cannot be read ({e})",
                         hint="fix the regime plugin, or try the other --profile") from None
    sys.stdout.write(text)
    return EXIT_OK


def _describe(regime) -> str:
    """The regime contract as text (regimes.describe when available)."""
    try:
        from regimes.describe import describe_regime
    except ImportError:
        describe_regime = None
    if describe_regime is not None:
        return describe_regime(regime)
    # Built here when the regimes package has no describer: the contract fields, readable.
    lines = [f"{regime.name}: {regime.title}", "", regime.description.strip(), "",
             f"variants: {', '.join(regime.variants)} (default {regime.default_variant})",
             f"training entry: python -m {regime.train_entry}",
             f"primary metric: {regime.primary_metric}", "metrics:"]
    lines += [f"  {m.name}{' (' + m.good + ')' if m.good else ''}: {m.description}".rstrip(": ") for m in regime.metrics]
    lines.append("mutable keys:")
    for p in regime.mutable:
        rng = f"{p.choices}" if p.type == "choice" else ("bool" if p.type == "bool" else
                                                          f"[{p.low:g}, {p.high:g}]{' log' if p.log else ''}")
        lines.append(f"  {p.key}: {p.type} {rng}")
    if regime.slot_fixed:
        lines.append("slot-fixed: " + ", ".join(f"{k}={v}" for k, v in regime.slot_fixed.items()))
    lines.append(f"frozen: {', '.join(regime.frozen) or '-'}")
    lines.append(f"code edits: {regime.code_edit_when}; editable: "
                 + (", ".join(f"{e.path} {e.functions + e.regions}" for e in regime.editable) or "-"))
    lines.append(f"instructions: {regime.instructions}")
    return "\n".join(lines)


def _config_yaml(regime, variant: str, profile: str) -> str:
    try:
        from regimes.describe import default_config_yaml
    except ImportError:
        default_config_yaml = None
    if default_config_yaml is not None:
        return default_config_yaml(regime, variant, profile)
    import yaml

    return yaml.safe_dump(regime.default_config(variant, profile), sort_keys=False)


def cmd_new_regime(args: argparse.Namespace) -> int:
    """`agent new-regime NAME --dir D`."""
    import re

    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", args.name):
        raise UsageError(f"regime name {args.name!r} must be letters, digits and '_' (a Python identifier)",
                         hint="e.g. agent new-regime my_regime --dir ./my_regimes")
    try:
        from regimes.scaffold import scaffold_regime
    except ImportError as e:
        raise UsageError(f"regime scaffolding is not available in this installation ({e})",
                         hint="update gnn-agent; see docs/regimes.md to write a plugin by hand") from None
    from regimes.registry import RegimeError

    try:
        path = scaffold_regime(args.name, args.dir)
    except (FileExistsError, RegimeError, ValueError) as e:
        raise UsageError(str(e).splitlines()[0], hint="choose another NAME or --dir") from None
    console = _console()
    console.print(f"wrote regime plugin {args.name} at {path}\n"
                  f"  check it:  agent regimes show {args.name} --regime-path {args.dir}\n"
                  f"  run it:    agent run --regime {args.name} --regime-path {args.dir} --slots 2 --iterations 4\n"
                  f"  then edit {path} (see docs/regimes.md)", highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    """`agent replay RUN_DIR NODE`: re-run a node from (config, commit) and compare metrics."""
    import yaml

    from rundir.readers import read_run_yaml
    from rundir.store import read_nodes

    run_dir = _run_dir_arg(args.run_dir, "replay")
    nodes = {n.get("id"): n for n in read_nodes(run_dir)}
    node = nodes.get(args.node)
    if node is None:
        ids = sorted(i for i in nodes if isinstance(i, int))
        have = f"{ids[0]}..{ids[-1]}" if ids else "none"
        raise UsageError(f"node {args.node} is not in {run_dir}/nodes.jsonl (nodes: {have})",
                         hint=f"`agent status {run_dir}` lists the best nodes")
    run_cfg = read_run_yaml(run_dir)
    regime = _load_regime(run_cfg.get("regime") or node.get("regime") or "", run_cfg.get("regime_path") or None)
    from agent.run import RunError, resolve_device_profile

    try:
        device, _, _ = resolve_device_profile(args.device, "quick", _cuda_available())
    except RunError as e:
        raise UsageError(str(e), hint=e.hint) from None
    from rundir.io import utc_stamp

    out = args.out or run_dir / "replays" / f"node_{args.node}-{utc_stamp()}"
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"output directory {str(out)!r} is not empty", hint="give a fresh --out DIR")
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(node.get("config") or {}, sort_keys=False))

    from sandbox.runner import RunSpec, regime_entries, run_training
    from sandbox.workspace import Workspace

    ws_root = run_dir / "workspace"
    if not ws_root.is_dir():
        raise UsageError(f"{run_dir} has no workspace/ to take node {args.node}'s code from",
                         hint="replay needs the run's workspace git repository")
    ws = Workspace.open(ws_root)
    commit = node.get("commit") or ws.node_commit(args.node) or ws.root_commit
    code_dir = ws.checkout(commit, out / "code")
    console = _console()
    console.print(f"replaying node {args.node} (commit {str(commit)[:10]}) into {out} on {device}; "
                  f"confinement {_confinement_label(not args.no_confine)} …",
                  highlight=False, markup=False, soft_wrap=True)
    try:
        slot = int(node.get("slot") or 0)
        # the same slot_SS leaf name as in iterations/, in case the training reads its slot from it
        res = run_training(RunSpec(slot=slot, node_id=args.node, config_path=cfg_path,
                                   out_dir=out / f"slot_{slot:02d}", code_dir=code_dir, train_entry=regime.train_entry,
                                   **regime_entries(regime), confine=not args.no_confine,
                                   device=device, timeout_s=args.timeout))
    finally:
        ws.remove_checkout(code_dir)
    console.print(replay_table(node.get("metrics") or {}, res.metrics, regime.primary_metric))
    if res.status != "ok":
        console.print(f"replay {res.status}: {res.reason}\n{res.traceback_tail}".rstrip(), highlight=False, markup=False, soft_wrap=True)
        return EXIT_FAILED
    console.print(f"outputs: {res.out_dir}", highlight=False, markup=False, soft_wrap=True)
    return EXIT_OK


def replay_table(old: dict, new: dict, primary: str | None = None):
    """A rich table of old vs new metric values (primary metric first)."""
    from rich.table import Table

    from agent.fmt import fmt_value

    t = Table(title="metrics: recorded vs replay", title_justify="left", header_style="bold")
    for col, just in (("metric", "left"), ("recorded", "right"), ("replay", "right"), ("diff", "right")):
        t.add_column(col, justify=just)
    keys = sorted(set(old) | set(new), key=lambda k: (k != primary, k))
    for k in keys:
        a, b = old.get(k), new.get(k)
        diff = ""
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            diff = fmt_value(float(b) - float(a))
        t.add_row(k, fmt_value(a) if a is not None else "—", fmt_value(b) if b is not None else "—", diff)
    return t


# ----------------------------------------------------------------------------- main

def _print_error(message: str, hint: str | None) -> None:
    print(f"error: {message}", file=sys.stderr)
    if hint:
        print(f"hint: {hint}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `agent` console script; returns the exit code."""
    parser = build_parser()
    debug = os.environ.get("GNN_AGENT_DEBUG", "") not in ("", "0")
    try:
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args.handler(args))
    except UsageError as e:
        _print_error(str(e), e.hint)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:
        if debug:
            raise
        known = _known_error(e)
        if known is not None:
            _print_error(*known)
            return EXIT_USAGE
        first = (str(e).strip().splitlines() or [""])[0]
        _print_error(f"{type(e).__name__}: {first}".rstrip(": "), "run with GNN_AGENT_DEBUG=1 for the traceback")
        return EXIT_FAILED


_LOCK_HINT = "one process drives a run at a time: stop that one first (Ctrl-C in its terminal), then resume"


def _known_error(e: Exception) -> tuple[str, str] | None:
    """Config/usage errors raised from inside the parts: one line, exit 2."""
    from agent.driver import RunLocked

    if isinstance(e, RunLocked):
        return str(e), _LOCK_HINT
    try:
        from regimes.registry import RegimeError
    except ImportError:
        RegimeError = ()  # type: ignore[assignment]
    if RegimeError and isinstance(e, RegimeError):
        return str(e).splitlines()[0], "`agent regimes` lists the regimes"
    try:
        from agent.run import RunError
    except ImportError:
        RunError = ()  # type: ignore[assignment]
    if RunError and isinstance(e, RunError):
        return str(e).splitlines()[0], getattr(e, "hint", None) or "see `agent run --help`"
    from pydantic import ValidationError

    if isinstance(e, ValidationError):
        err = e.errors()[0]
        return f"invalid {e.title} {'.'.join(map(str, err['loc']))}: {err['msg']}", "check the config or option named above"
    return None


if __name__ == "__main__":
    sys.exit(main())
