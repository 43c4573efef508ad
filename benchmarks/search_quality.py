"""Search quality: does the agent's heuristic policy beat a plain optimiser?

For each regime and a budget (iterations x slots, quick profile), runs the
heuristic, optuna and random policies with several seeds each, all from the
same default config on the same executor, then writes:

- `<out>/search_quality.md`: per regime and policy, the median (and per-seed)
  best score, the iterations needed to reach 90% of that run's best, and the
  wall time;
- `<out>/search_quality.json`: the raw per-run figures;
- `<out>/best_so_far_<regime>.png`: best-so-far score versus iterations, one
  line per run, coloured by policy.

Usage (the README's table comes from the first form):

    python benchmarks/search_quality.py --regime rate_constants --regime sparse_connectivity \
        --iterations 16 --slots 2 --seeds 3
    python benchmarks/search_quality.py --regime toy --regime-path tests/fixtures/toy_regime/plugins \
        --iterations 4 --slots 2 --seeds 1 --out /tmp/sq      # a tiny smoke run

Not part of the test suite's timing: it prints its figures.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

POLICIES = ("heuristic", "optuna", "random")


def best_so_far(nodes: list[dict]) -> list[float]:
    """Best score after each finished iteration, in node-id order."""
    out, best = [], 0.0
    for n in sorted(nodes, key=lambda n: n["id"]):
        best = max(best, float(n.get("score") or 0.0))
        out.append(best)
    return out


def iterations_to_fraction(curve: list[float], fraction: float = 0.9) -> int | None:
    """First iteration (1-based) whose best-so-far reaches `fraction` of the final best."""
    if not curve or curve[-1] <= 0:
        return None
    target = fraction * curve[-1]
    return next(i + 1 for i, v in enumerate(curve) if v >= target)


def read_nodes(run_dir: Path) -> list[dict]:
    nodes = []
    for line in (run_dir / "nodes.jsonl").read_text().splitlines():
        try:
            nodes.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return nodes


def run_one(regime: str, policy: str, seed: int, iterations: int, slots: int, out: Path,
            regime_path: list[Path], executor: str) -> dict:
    """One run of one policy; returns its figures."""
    from agent.run import RunOptions, start_run

    run_dir = out / "runs" / f"{regime}-{policy}-s{seed}"
    if run_dir.exists() and (run_dir / "nodes.jsonl").exists() and len(read_nodes(run_dir)) >= iterations:
        print(f"  {run_dir.name}: already done, reusing", flush=True)
    else:
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        opts = RunOptions(regime=regime, slots=slots, iterations=iterations, profile="quick", policy=policy,
                          executor=executor, device="cpu", run_dir=run_dir, seed=seed,
                          regime_path=regime_path)
        t0 = time.perf_counter()
        start_run(opts)
        (run_dir / "wall_s.txt").write_text(f"{time.perf_counter() - t0:.1f}\n")
    nodes = read_nodes(run_dir)
    curve = best_so_far(nodes)
    wall = float((run_dir / "wall_s.txt").read_text()) if (run_dir / "wall_s.txt").exists() else float("nan")
    return {"regime": regime, "policy": policy, "seed": seed, "n_nodes": len(nodes),
            "best": curve[-1] if curve else 0.0, "iters_to_90": iterations_to_fraction(curve),
            "wall_s": wall, "curve": curve, "run_dir": str(run_dir)}


def summarise(rows: list[dict], regimes: list[str], policies: list[str]) -> str:
    """The Markdown table: one line per (regime, policy), medians over seeds."""
    lines = ["| regime | policy | median best score | per-seed best | median iters to 90% | median wall (min) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for reg in regimes:
        for pol in policies:
            rs = [r for r in rows if r["regime"] == reg and r["policy"] == pol]
            if not rs:
                continue
            bests = [r["best"] for r in rs]
            its = [r["iters_to_90"] for r in rs if r["iters_to_90"] is not None]
            walls = [r["wall_s"] for r in rs]
            lines.append(f"| {reg} | {pol} | {statistics.median(bests):.4f} | "
                         f"{', '.join(f'{b:.3f}' for b in bests)} | "
                         f"{statistics.median(its) if its else 'n/a'} | {statistics.median(walls) / 60:.1f} |")
    return "\n".join(lines)


def plot(rows: list[dict], regime: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import MaxNLocator

    colours = {"heuristic": "tab:blue", "optuna": "tab:orange", "random": "tab:green"}
    # a small per-policy offset keeps tied curves (e.g. all at 0) visible side by side
    offset = {"heuristic": 0.004, "optuna": 0.0, "random": -0.004}
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    seen = set()
    for r in rows:
        if r["regime"] != regime or not r["curve"]:
            continue
        label = r["policy"] if r["policy"] not in seen else None
        seen.add(r["policy"])
        ax.step(range(1, len(r["curve"]) + 1), [v + offset.get(r["policy"], 0.0) for v in r["curve"]],
                where="post", color=colours.get(r["policy"], "gray"), alpha=0.8, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration (finished trainings)")
    ax.set_ylabel("best score so far")
    ax.set_title(f"{regime}: best-so-far by policy (quick profile)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--regime", action="append", required=True, help="regime name (repeatable)")
    ap.add_argument("--iterations", type=int, default=16, help="finished trainings per run (default 16)")
    ap.add_argument("--slots", type=int, default=2, help="parallel slots per run (default 2)")
    ap.add_argument("--seeds", type=int, default=3, help="seeds per policy (default 3)")
    ap.add_argument("--policy", action="append", choices=POLICIES, help="policies (default: all three)")
    ap.add_argument("--executor", default="local", choices=("local", "ray"))
    ap.add_argument("--regime-path", action="append", type=Path, default=[], help="plugin directory")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/search_quality"))
    args = ap.parse_args(argv)
    if args.iterations < 1 or args.slots < 1 or args.seeds < 1:
        ap.error("--iterations, --slots and --seeds must be >= 1")
    policies = args.policy or list(POLICIES)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for reg in args.regime:
        for pol in policies:
            for seed in range(args.seeds):
                print(f"{reg} / {pol} / seed {seed}", flush=True)
                rows.append(run_one(reg, pol, seed, args.iterations, args.slots, args.out,
                                    args.regime_path, args.executor))
                r = rows[-1]
                print(f"  best={r['best']:.4f} iters_to_90={r['iters_to_90']} wall={r['wall_s']:.0f}s", flush=True)
    table = summarise(rows, args.regime, policies)
    header = (f"Budget: {args.iterations} finished trainings per run, {args.slots} slots in parallel, quick profile, "
              f"{args.seeds} seeds per policy, executor {args.executor}.\n"
              f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
              f"{__import__('os').cpu_count()} cores, Python {platform.python_version()}.\n"
              f"Command: python benchmarks/search_quality.py {' '.join(sys.argv[1:] if argv is None else argv)}\n")
    (args.out / "search_quality.md").write_text(header + "\n" + table + "\n")
    (args.out / "search_quality.json").write_text(json.dumps(rows, indent=1))
    for reg in args.regime:
        plot(rows, reg, args.out / f"best_so_far_{reg}.png")
    print()
    print(header)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
