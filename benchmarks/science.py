"""Science benchmark: the default config's figures over several training seeds.

    python benchmarks/science.py [--regime rate_constants|homeostasis] [--profile quick|full]
                                 [--seeds 0 1 2] [--set SECTION.KEY=VALUE ...] [--json OUT] [--keep DIR]

Each training runs as the runner drives it (docs/contracts.md §2b), unconfined: stage the
inputs, the training entry and the evaluation entry as two subprocesses, one thread each,
one training at a time. For homeostasis the phase-1 checkpoint is the regime's own (trained
once per dataset with phase1.default_phase1_config, then cached; its
figures are printed first). Prints one line per seed (the regime's headline metrics, wall
time, steps/s) and the mean / spread (max - min) over the seeds.

The dataset is the cache root's (GNN_AGENT_CACHE, default ~/.cache/gnn-agent): its data
secret decides the draw, so another cache root gives another dataset of the same family.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

METRICS = {
    "rate_constants": ["rate_constants_R2_identifiable", "rate_constants_R2", "rate_constants_n_outliers",
                       "MLP_sub_R2_normalized", "test_R2_short", "test_R2", "final_loss"],
    "homeostasis": ["MLP_node_slope_ratio_0", "MLP_node_slope_ratio_1", "MLP_node_function_R2",
                    "embedding_cluster_acc", "test_R2_short", "phase2_loss"],
}


def _env() -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def train_and_evaluate(cfg: dict, work: Path, name: str) -> tuple[dict, float]:
    """Stage, train, evaluate one config; returns (metrics, wall seconds of the training entry)."""
    from regimes.metabolism.data import stage

    cfg_path, inputs, out = work / f"{name}.yaml", work / f"{name}_inputs", work / name
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    stage(cfg_path, inputs, log=lambda *a: None)
    common = ["--config", str(cfg_path), "--inputs", str(inputs), "--out", str(out)]
    t0 = time.perf_counter()
    for module in ("regimes.metabolism.train", "regimes.metabolism.evaluate"):
        extra = ["--no-plots"] if module.endswith("evaluate") else []
        r = subprocess.run([sys.executable, "-m", module, *common, *extra], env=_env(), capture_output=True, text=True)
        if module.endswith("train"):
            wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"{name}: {module} exited {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}")
    return json.loads((out / "metrics.json").read_text()), wall


def _fmt(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "nan"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regime", choices=sorted(METRICS), default="rate_constants")
    ap.add_argument("--profile", choices=["quick", "full"], default="quick")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path, help="write the per-seed metrics here")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a key of the default config (YAML value), e.g. training.homeostasis_time_step=16; "
                         "the training's config validation rejects a key that does not exist")
    ap.add_argument("--keep", type=Path, help="train in this folder and keep it (checkpoints, logs) for analysis")
    args = ap.parse_args(argv)

    from regimes.metabolism.phase1 import CONFIG_DIR, default_phase1_config, ensure_phase1_checkpoint

    base = yaml.safe_load((CONFIG_DIR / f"{args.regime}_{args.profile}.yaml").read_text())
    base.pop("claude", None)
    for item in args.set:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not isinstance(base.get(section), dict):
            ap.error(f"--set {item!r}: expected SECTION.KEY=VALUE with SECTION one of {sorted(k for k, v in base.items() if isinstance(v, dict))}")
        base[section][name] = yaml.safe_load(value)
    if args.regime == "homeostasis" and base["training"].get("phase1_checkpoint"):
        print(f"phase 1: the given checkpoint {base['training']['phase1_checkpoint']} (scored and checked at staging)")
    elif args.regime == "homeostasis":
        t0 = time.perf_counter()
        path, m1 = ensure_phase1_checkpoint(base["simulation"], default_phase1_config(args.profile), log=lambda *a: None)
        print(f"phase 1 (homeostasis default phase 1, {time.perf_counter() - t0:.0f}s incl. cache): "
              + "  ".join(f"{k}={_fmt(m1.get(k))}" for k in METRICS["rate_constants"]))
        base["training"]["phase1_checkpoint"] = str(path)
    names = METRICS[args.regime]
    rows = []
    with tempfile.TemporaryDirectory(prefix="science_bench.") as tmp:
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            tmp = str(args.keep)
        for seed in args.seeds:
            cfg = json.loads(json.dumps(base))
            cfg["training"]["seed"] = seed
            m, wall = train_and_evaluate(cfg, Path(tmp), f"seed{seed}")
            m["wall_s"] = wall
            rows.append(m)
            print(f"{args.regime} {args.profile} seed {seed}: " + "  ".join(f"{k}={_fmt(m.get(k))}" for k in names)
                  + f"  wall={wall:.0f}s  steps/s={_fmt(m.get('steps_per_second'))}", flush=True)
    print(f"over {len(rows)} seeds (mean, spread max-min):")
    for k in names + ["wall_s", "steps_per_second"]:
        vals = [r[k] for r in rows if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
        if vals:
            print(f"  {k}: {sum(vals) / len(vals):.3f}  ({max(vals) - min(vals):.3f})")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
