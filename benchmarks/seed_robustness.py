"""The default recipe over N system seeds (issue 15): how much of a score is the seed's.

For each regime (default: sparse_connectivity and low_rank_connectivity, variant
n100, profile quick) and each system seed (default: the config's own seed and the
next ones, 10 in all), the default config with `simulation.seed` set to that seed
runs through the real runner (stage -> confined train -> trusted evaluate, one
training at a time, one thread). The cache starts empty, so the runner's staging
time is the data generation time of that seed. Regimes are interleaved seed by
seed, so a deadline leaves both with the same count. Every result is appended to
OUT/results.jsonl as it finishes; the summary prints, per regime, the median and
worst score, how many seeds converged, the identifiability figures of the worst
seeds and the generation time per seed.

    nice -n 10 python benchmarks/seed_robustness.py --out /tmp/seeds [--seeds 10] [--deadline 00:25]
    python benchmarks/seed_robustness.py --out /tmp/seeds --summary   # summarise what is there

A candidate recipe replays on chosen systems with `--set KEY=VALUE` (dotted config keys, YAML
values; repeatable) and `--seed-list 43 44`; pass `--cache` of an earlier run to get the same
systems (the cache's data secret seeds W). Each record names its recipe ("default" or the
overrides) and the summary keeps recipes apart:

    python benchmarks/seed_robustness.py --out /tmp/seeds --cache /tmp/seeds/cache \
        --regimes low_rank_connectivity --seed-list 43 44 --set training.learning_rate_W_start=0.016
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: data properties shown next to a seed's score (SCIENCE.md B4 and the identifiability report)
IDENT = ("effective_rank_90", "effective_rank_99", "n_saturated_neurons", "spectral_radius", "connectivity_R2_ceiling",
         "system_degenerate", "connectivity_R2_unsaturated")


def _deadline(text: str | None) -> float | None:
    """'HH:MM' (UTC, today or just after midnight) -> epoch seconds."""
    if not text:
        return None
    now = datetime.now(timezone.utc)
    h, m = (int(x) for x in text.split(":"))
    t = now.replace(hour=h, minute=m, second=0, microsecond=0)
    if t < now and (now - t).total_seconds() > 12 * 3600:
        t = t.replace(day=now.day + 1)
    return t.timestamp()


def parse_overrides(items: list[str], base: dict) -> dict[str, object]:
    """['training.lr=1e-3', ...] -> {'training.lr': 0.001}; a key the base config lacks is an error."""
    import yaml

    out: dict[str, object] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set {item!r}: expected KEY=VALUE (a dotted config key)")
        node = base
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                raise SystemExit(f"--set {key}: no such key in the default config")
            node = node[part]
        value = yaml.safe_load(text)
        if isinstance(value, str):  # YAML 1.1 reads '5e-5' as a string; a number is meant
            try:
                value = float(value)
            except ValueError:
                pass
        out[key] = value
    return out


def recipe_label(overrides: dict[str, object]) -> str:
    """'default', or the overrides as 'key=value' (last dotted part), sorted: the summary's recipe name."""
    return ",".join(f"{k.split('.')[-1]}={v}" for k, v in sorted(overrides.items())) or "default"


def apply_overrides(cfg: dict, overrides: dict[str, object]) -> dict:
    cfg = json.loads(json.dumps(cfg))
    for key, value in overrides.items():
        *head, last = key.split(".")
        node = cfg
        for part in head:
            node = node[part]
        node[last] = value
    return cfg


def run(args) -> int:
    import yaml

    from regimes.registry import get_regime
    from sandbox.runner import RunSpec, regime_entries, run_training
    from sandbox.workspace import Workspace

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    os.environ["GNN_AGENT_CACHE"] = str((args.cache or out / "cache").resolve())
    results = out / "results.jsonl"
    done = {(r["regime"], r["seed"], r.get("recipe", "default")) for r in _read(results)}
    deadline = _deadline(args.deadline)
    regimes = [get_regime(n) for n in args.regimes]
    base = {r.name: r.default_config(args.variant, args.profile) for r in regimes}
    overrides = parse_overrides(args.set or [], base[regimes[0].name])
    recipe = recipe_label(overrides)
    sub = "" if recipe == "default" else "".join(c if c.isalnum() or c in "=.-," else "_" for c in recipe)
    codes = {}
    for r in regimes:
        ws_root = Path(tempfile.mkdtemp(prefix=f"seedbench-{r.name}-"))
        ws = Workspace.create(ws_root / "workspace", r)
        codes[r.name] = ws.checkout(ws.root_commit, ws_root / "code")
    seeds = args.seed_list or [int(base[regimes[0].name]["simulation"]["seed"]) + k for k in range(args.seeds)]
    last = 0.0
    for k, seed in enumerate(seeds):
        for r in regimes:
            if (r.name, seed, recipe) in done:
                continue
            if deadline is not None and time.time() + last > deadline:
                print(f"deadline {args.deadline} UTC: stopping before {r.name} seed {seed}", flush=True)
                return 0
            cfg = apply_overrides(base[r.name], overrides)
            cfg["simulation"]["seed"] = seed
            d = out / r.name / sub / f"seed_{seed}" if sub else out / r.name / f"seed_{seed}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            t0 = time.time()
            res = run_training(RunSpec(slot=0, node_id=k + 1, config_path=d / "config.yaml", out_dir=d,
                                       code_dir=codes[r.name], train_entry=r.train_entry, **regime_entries(r),
                                       threads=1, timeout_s=args.timeout_s))
            last = time.time() - t0
            m = res.metrics
            rec = {"regime": r.name, "variant": args.variant, "profile": args.profile, "seed": seed, "recipe": recipe,
                   "status": res.status, "reason": res.reason[:200], "score": r.score(m) if res.status == "ok" else 0.0,
                   "primary": m.get(r.primary_metric), "classification": r.classify(m) if res.status == "ok" else "failed",
                   "identifiability": {x: m[x] for x in IDENT if x in m}, "timings": res.timings,
                   "confinement": res.confinement, "wall_s": round(last, 1)}
            with open(results, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{r.name} [{recipe}] seed {seed}: {res.status} score {rec['score']:.4f} "
                  f"({', '.join(f'{a}={b:.3g}' for a, b in rec['identifiability'].items())}) "
                  f"stage {res.timings.get('stage_s', float('nan')):.1f}s train {res.timings.get('train_s', float('nan')):.0f}s "
                  f"eval {res.timings.get('eval_s', float('nan')):.1f}s", flush=True)
    return 0


def _read(p: Path) -> list[dict]:
    if not p.is_file():
        return []
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def summary(out: Path, worst_k: int = 3) -> str:
    rows = _read(out / "results.jsonl")
    lines = []
    for name, recipe in dict.fromkeys((r["regime"], r.get("recipe", "default")) for r in rows):
        rs = [r for r in rows if r["regime"] == name and r.get("recipe", "default") == recipe]
        sc = [r["score"] for r in rs]
        gen = [r["timings"].get("stage_s") for r in rs if r["timings"].get("stage_s") is not None]
        conv = sum(1 for r in rs if r["classification"] == "converged")
        lines.append(f"{name} {rs[0]['variant']} {rs[0]['profile']} [{recipe}]: {len(rs)} seeds "
                     f"({', '.join(str(r['seed']) for r in rs)}); score median {statistics.median(sc):.4f}, "
                     f"worst {min(sc):.4f}, best {max(sc):.4f}; converged (> 0.9) {conv}/{len(rs)}; "
                     f"data generation per seed median {statistics.median(gen):.1f} s (max {max(gen):.1f} s); "
                     f"training median {statistics.median(r['timings'].get('train_s', 0) for r in rs):.0f} s")
        for r in sorted(rs, key=lambda r: r["score"])[:worst_k]:
            ident = ", ".join(f"{a}={b:.4g}" for a, b in r["identifiability"].items())
            lines.append(f"  worst: seed {r['seed']} score {r['score']:.4f} ({r['status']}): {ident}")
    return "\n".join(lines) or "no results yet"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--regimes", nargs="+", default=["sparse_connectivity", "low_rank_connectivity"])
    ap.add_argument("--variant", default="n100")
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--seed-list", type=int, nargs="+", help="these system seeds instead of the first --seeds ones")
    ap.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a config key of the default recipe (dotted, YAML value); repeatable")
    ap.add_argument("--cache", type=Path, help="dataset cache (default OUT/cache: cold, so staging = generation)")
    ap.add_argument("--deadline", help="HH:MM UTC: start no training that would end after it (last one's duration)")
    ap.add_argument("--timeout-s", type=float, default=3600.0)
    ap.add_argument("--summary", action="store_true", help="only print the summary of OUT/results.jsonl")
    args = ap.parse_args()
    if not args.summary:
        run(args)
    print(summary(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
