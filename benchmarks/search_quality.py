"""Search quality: does the agent beat plain optimisers at the same budget?

Every policy runs on the same executor, search space (the regime's mutable
keys and ranges), starting config (the regime's default) and budget:

- `heuristic`: the agent's offline policy;
- `optuna`: TPE, the default config as its first trial;
- `cmaes`: Optuna's CMA-ES, started at the default config (integer keys
  rounded, bool/choice keys sampled uniformly; agent/policies/baselines.py);
- `random`: uniform random search, the default config as its first trial;
- `claude`: the LLM policy, only when ANTHROPIC_API_KEY is set (its cost per
  run goes in the table; without a key the table says it was not run).

Next to every comparison stands the **noise floor**: the default config
trained with `--repeats` training seeds (init and batches; same data). A
policy's gain over the default's median that is smaller than the floor (the
repeats' max − min) is not a gain.

One run per (regime, policy, seed) at the largest budget; the smaller budgets
are read off the same run's best-so-far curve (no policy here plans by its
total budget). Results are appended to `<out>/results.jsonl` as each run
finishes; a run interrupted half-way is resumed (`agent resume`), not
restarted, so a partial study is usable at any time:

    python benchmarks/search_quality.py --regime rate_constants --regime homeostasis \\
        --regime stoichiometry:tied --regime sparse_connectivity:n200 \\
        --budget 16 --budget 32 --seeds 3 --repeats 5 --jobs 2 --out benchmarks/results/search_quality
    python benchmarks/search_quality.py --out benchmarks/results/search_quality --summary
    python benchmarks/search_quality.py --regime toy --regime-path tests/fixtures/toy_regime/plugins \\
        --budget 4 --slots 2 --seeds 1 --repeats 2 --out /tmp/sq          # a smoke run

Outputs: `<out>/search_quality.md` (the table), `<out>/results.jsonl` (one
line per run or repeat), `<out>/best_so_far_<regime>.png` (every run, by
policy, with the noise band). Not part of the test suite's timing.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rundir.io import append_jsonl, read_json, read_jsonl  # noqa: E402

POLICIES = ("heuristic", "optuna", "cmaes", "random", "claude")
DEFAULT_POLICIES = ("heuristic", "optuna", "cmaes", "random")
COLOURS = {"heuristic": "tab:blue", "optuna": "tab:orange", "cmaes": "tab:purple", "random": "tab:green",
           "claude": "tab:red"}


def parse_target(text: str) -> tuple[str, str | None]:
    """'stoichiometry:tied' -> ('stoichiometry', 'tied'); 'rate_constants' -> ('rate_constants', None)."""
    name, _, variant = text.partition(":")
    return name, (variant or None)


def target_label(regime: str, variant: str | None) -> str:
    return f"{regime}:{variant}" if variant else regime


def best_so_far(nodes: list[dict]) -> list[float]:
    """Best score after each finished training, in node-id order."""
    out, best = [], 0.0
    for n in sorted(nodes, key=lambda n: n["id"]):
        best = max(best, float(n.get("score") or 0.0))
        out.append(best)
    return out


def iterations_to_fraction(curve: list[float], fraction: float = 0.9) -> int | None:
    """First training (1-based) whose best-so-far reaches `fraction` of the final best."""
    if not curve or curve[-1] <= 0:
        return None
    target = fraction * curve[-1]
    return next(i + 1 for i, v in enumerate(curve) if v >= target)


def read_nodes(run_dir: Path) -> list[dict]:
    """Finished nodes (tolerant of a torn last line)."""
    return read_jsonl(run_dir / "nodes.jsonl")


def run_cost(run_dir: Path) -> float:
    """LLM spend of a run (status.json's total), 0 for offline policies."""
    status = read_json(run_dir / "status.json")
    return float(status.get("cost_usd") or 0.0) if isinstance(status, dict) else 0.0


def read_results(out: Path) -> list[dict]:
    return read_jsonl(out / "results.jsonl")


def latest(rows: list[dict]) -> list[dict]:
    """One row per (kind, target, policy, seed): the last written (a resumed run supersedes its first row)."""
    keep: dict[tuple, dict] = {}
    for r in rows:
        keep[(r["kind"], r["target"], r["policy"], r["seed"])] = r
    return list(keep.values())


def append_result(out: Path, row: dict) -> None:
    append_jsonl(out / "results.jsonl", row)


# ---------------------------------------------------------------- one job (runs in a worker process)

def run_policy(job: dict) -> dict:
    """One run of one policy to the largest budget; resumes a partial run directory."""
    from agent.run import RunOptions, resume_run, start_run

    run_dir = Path(job["run_dir"])
    budget = job["budget"]
    t0 = time.perf_counter()
    done = len(read_nodes(run_dir))
    if done < budget:
        if (run_dir / "run.yaml").is_file() and (run_dir / "state.sqlite").exists():
            resume_run(run_dir, iterations=budget)
        else:
            if run_dir.exists():  # never got past creation: nothing to keep
                shutil.rmtree(run_dir)
            start_run(RunOptions(regime=job["regime"], variant=job["variant"], slots=job["slots"],
                                 iterations=budget, profile="quick", policy=job["policy"],
                                 executor=job["executor"], device="cpu", run_dir=run_dir, seed=job["seed"],
                                 regime_path=[Path(p) for p in job["regime_path"]]))
        prev = float((run_dir / "wall_s.txt").read_text()) if (run_dir / "wall_s.txt").is_file() else 0.0
        (run_dir / "wall_s.txt").write_text(f"{prev + time.perf_counter() - t0:.1f}\n")
    nodes = read_nodes(run_dir)
    curve = best_so_far(nodes)
    return {"kind": "policy", "target": job["target"], "policy": job["policy"], "seed": job["seed"],
            "n_nodes": len(nodes), "curve": curve, "iters_to_90": iterations_to_fraction(curve),
            "wall_s": float((run_dir / "wall_s.txt").read_text()), "cost_usd": run_cost(run_dir),
            "run_dir": str(run_dir)}


def run_repeat(job: dict) -> dict:
    """The default config with one training seed: one point of the noise floor."""
    import tempfile

    import yaml

    from regimes.registry import get_regime
    from sandbox.runner import RunSpec, regime_entries, run_training
    from sandbox.workspace import Workspace

    regime = get_regime(job["regime"], [Path(p) for p in job["regime_path"]])
    d = Path(job["run_dir"])
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    cfg = regime.default_config(job["variant"], "quick")
    cfg.setdefault("training", {})["seed"] = int(cfg.get("training", {}).get("seed", 0)) + job["seed"]
    (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    ws_root = Path(tempfile.mkdtemp(prefix="sq-repeat-"))
    try:
        ws = Workspace.create(ws_root / "workspace", regime)
        code = ws.checkout(ws.root_commit, ws_root / "code")
        t0 = time.perf_counter()
        res = run_training(RunSpec(slot=0, node_id=job["seed"] + 1, config_path=d / "config.yaml", out_dir=d,
                                   code_dir=code, train_entry=regime.train_entry, **regime_entries(regime),
                                   threads=1, timeout_s=float(job["timeout_s"])))
        wall = time.perf_counter() - t0
    finally:
        shutil.rmtree(ws_root, ignore_errors=True)
    score = regime.score(res.metrics) if res.status == "ok" else 0.0
    return {"kind": "repeat", "target": job["target"], "policy": "default", "seed": job["seed"],
            "score": float(score), "status": res.status, "wall_s": round(wall, 1), "run_dir": str(d)}


def _run_job(job: dict) -> dict:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return run_repeat(job) if job["kind"] == "repeat" else run_policy(job)


# ---------------------------------------------------------------- the table

def _best_at(curve: list[float], budget: int) -> float | None:
    return curve[budget - 1] if len(curve) >= budget else None


def noise_floor(rows: list[dict], target: str) -> dict | None:
    """The default config's scores over training seeds: median, range (the floor)."""
    scores = [r["score"] for r in rows if r["kind"] == "repeat" and r["target"] == target]
    if not scores:
        return None
    return {"n": len(scores), "median": statistics.median(scores), "min": min(scores), "max": max(scores),
            "floor": max(scores) - min(scores)}


def summarise(rows: list[dict], targets: list[str], policies: list[str], budgets: list[int],
              has_key: bool) -> str:
    """Markdown: per target, the noise floor line and one row per (policy, budget)."""
    rows = latest(rows)
    out = []
    for target in targets:
        nf = noise_floor(rows, target)
        out.append(f"### {target}\n")
        if nf:
            out.append(f"Noise floor (default config, {nf['n']} training seeds): median {nf['median']:.4f}, "
                       f"range {nf['min']:.4f}–{nf['max']:.4f} (floor {nf['floor']:.4f}).\n")
        else:
            out.append("Noise floor: not measured (no repeats).\n")
        out.append("| policy | budget | runs | median best | per-seed best | gain over default median | "
                   "beyond floor | median trainings to 90% | median wall (min) | cost ($) |")
        out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for pol in policies:
            runs = [r for r in rows if r["kind"] == "policy" and r["target"] == target and r["policy"] == pol]
            if pol == "claude" and not runs and not has_key:
                out.append("| claude | – | 0 | not run (no ANTHROPIC_API_KEY) | | | | | | |")
                continue
            for b in budgets:
                bests = [x for x in (_best_at(r["curve"], b) for r in runs) if x is not None]
                if not bests:
                    continue
                med = statistics.median(bests)
                its = [iterations_to_fraction(r["curve"][:b]) for r in runs if len(r["curve"]) >= b]
                its = [i for i in its if i is not None]
                walls = [r["wall_s"] * min(1.0, b / max(1, len(r["curve"]))) for r in runs if len(r["curve"]) >= b]
                cost = f"{statistics.median(r.get('cost_usd', 0.0) for r in runs):.2f}" if pol == "claude" else "–"
                gain = beyond = ""
                if nf:
                    g = med - nf["median"]
                    gain, beyond = f"{g:+.4f}", ("yes" if g > nf["floor"] else "no")
                out.append(f"| {pol} | {b} | {len(bests)} | {med:.4f} | {', '.join(f'{x:.3f}' for x in bests)} | "
                           f"{gain} | {beyond} | {statistics.median(its) if its else 'n/a'} | "
                           f"{statistics.median(walls) / 60:.1f} | {cost} |")
        out.append("")
    return "\n".join(out)


def plot(rows: list[dict], target: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    rows = latest(rows)
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    nf = noise_floor(rows, target)
    if nf:
        ax.axhspan(nf["min"], nf["max"], color="0.85", label=f"default config over {nf['n']} training seeds")
    seen = set()
    for r in rows:
        if r["kind"] != "policy" or r["target"] != target or not r["curve"]:
            continue
        label = r["policy"] if r["policy"] not in seen else None
        seen.add(r["policy"])
        ax.step(range(1, len(r["curve"]) + 1), r["curve"], where="post",
                color=COLOURS.get(r["policy"], "gray"), alpha=0.8, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("finished trainings")
    ax.set_ylabel("best score so far")
    ax.set_title(f"{target}: best-so-far by policy (quick profile)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_outputs(out: Path, rows: list[dict], targets: list[str], policies: list[str], budgets: list[int],
                  header: str) -> str:
    has_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    table = summarise(rows, targets, policies, budgets, has_key)
    (out / "search_quality.md").write_text(header + "\n" + table + "\n")
    for t in targets:
        plot(rows, t, out / f"best_so_far_{t.replace(':', '_')}.png")
    return table


# ---------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", action="append", default=[], metavar="NAME[:VARIANT]",
                    help="regime, optionally with a variant (repeatable)")
    ap.add_argument("--budget", action="append", type=int, default=[],
                    help="finished trainings per run (repeatable; default 16 and 32)")
    ap.add_argument("--slots", type=int, default=2, help="parallel slots per run (default 2)")
    ap.add_argument("--seeds", type=int, default=3, help="runs per policy (run seeds 0..N-1; default 3)")
    ap.add_argument("--repeats", type=int, default=5, help="training seeds of the default config (noise floor)")
    ap.add_argument("--policy", action="append", choices=POLICIES,
                    help="policies (default: heuristic, optuna, cmaes, random; claude too with a key)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at once (each uses --slots cores)")
    ap.add_argument("--executor", default="local", choices=("local", "ray"))
    ap.add_argument("--timeout-s", type=float, default=3600.0, help="wall-clock limit of one repeat training")
    ap.add_argument("--regime-path", action="append", type=Path, default=[], help="plugin directory")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality"))
    ap.add_argument("--summary", action="store_true", help="only rebuild the table from <out>/results.jsonl")
    args = ap.parse_args(argv)
    budgets = sorted(set(args.budget or [16, 32]))
    if min(budgets) < 1 or args.slots < 1 or args.seeds < 1 or args.repeats < 0 or args.jobs < 1:
        ap.error("--budget, --slots, --seeds, --jobs must be >= 1 and --repeats >= 0")
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    has_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    policies = args.policy or list(DEFAULT_POLICIES) + (["claude"] if has_key else [])
    rows = read_results(out)
    if args.summary:
        targets = list(dict.fromkeys(r["target"] for r in rows))
        pols = list(dict.fromkeys(r["policy"] for r in rows if r["kind"] == "policy")) or policies
        print(write_outputs(out, rows, targets, pols, budgets, f"Summary of {out / 'results.jsonl'}\n"))
        return 0
    if not args.regime:
        ap.error("give at least one --regime (or --summary)")
    parsed = [parse_target(t) for t in args.regime]
    targets = [target_label(*p) for p in parsed]
    done = {(r["kind"], r["target"], r["policy"], r["seed"]) for r in rows
            if r["kind"] == "repeat" or len(r.get("curve", [])) >= max(budgets)}
    jobs = []
    common = {"slots": args.slots, "executor": args.executor, "regime_path": [str(p.resolve()) for p in args.regime_path],
              "budget": max(budgets), "timeout_s": args.timeout_s}
    for (reg, var), target in zip(parsed, targets):
        tag = target.replace(":", "_")
        for k in range(args.repeats):
            if ("repeat", target, "default", k) not in done:
                jobs.append({**common, "kind": "repeat", "regime": reg, "variant": var, "target": target,
                             "policy": "default", "seed": k, "run_dir": str(out / "repeats" / f"{tag}-t{k}")})
        for pol in policies:
            if pol == "claude" and not has_key:
                print(f"{target} / claude: not run (no ANTHROPIC_API_KEY)", flush=True)
                continue
            for s in range(args.seeds):
                if ("policy", target, pol, s) not in done:
                    jobs.append({**common, "kind": "policy", "regime": reg, "variant": var, "target": target,
                                 "policy": pol, "seed": s, "run_dir": str(out / "runs" / f"{tag}-{pol}-s{s}")})
    cmd = f"python benchmarks/search_quality.py {' '.join(sys.argv[1:] if argv is None else argv)}"
    header = (f"Budgets {budgets} finished trainings per run, {args.slots} slots in parallel, quick profile, "
              f"{args.seeds} run seeds per policy, noise floor over {args.repeats} training seeds, executor "
              f"{args.executor}.\nMachine: {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}.\nCommand: {cmd}\n")
    print(f"{len(jobs)} jobs to run ({len(done)} already in {out / 'results.jsonl'})", flush=True)

    def finished(row: dict) -> None:
        append_result(out, row)
        rows.append(row)
        what = (f"score {row['score']:.4f}" if row["kind"] == "repeat"
                else f"best {row['curve'][-1] if row['curve'] else 0.0:.4f} after {row['n_nodes']} trainings")
        print(f"  {row['target']} / {row['policy']} / seed {row['seed']}: {what} ({row['wall_s']:.0f} s)", flush=True)
        write_outputs(out, rows, targets, policies, budgets, header)  # partial results usable at once

    if args.jobs == 1:
        for job in jobs:
            print(f"{job['target']} / {job['policy']} / seed {job['seed']}", flush=True)
            try:
                finished(_run_job(job))
            except Exception as e:  # one failed run must not lose the others' results
                print(f"  FAILED ({type(e).__name__}: {e}); rerun the command to resume it", flush=True)
    else:
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(_run_job, j): j for j in jobs}
            for fut in as_completed(futures):
                try:
                    finished(fut.result())
                except Exception as e:  # one failed run must not lose the others' results
                    j = futures[fut]
                    print(f"  {j['target']} / {j['policy']} / seed {j['seed']}: FAILED ({type(e).__name__}: {e}); "
                          "rerun the command to resume it", flush=True)
    table = write_outputs(out, rows, targets, policies, budgets, header)
    print()
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
