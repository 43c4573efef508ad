"""Stoichiometry figures of the default configs over several training seeds (issue 13).

For each variant (tied, untied) and each training seed, trains the shipped
`configs/stoichiometry_<variant>_<profile>.yaml` (same simulation, only
`training.seed` changes) and prints the data figures (limited reaction-frames,
activity rank) and the S figures: sign baseline, R² after the per-reaction
gauge, skill, exact fraction. One thread; the quick profile takes minutes per
training on an idle core.

    python benchmarks/stoichiometry_quality.py [--profile quick|full] [--seeds 3] [--variants tied,untied] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

COLUMNS = ["limited_fraction", "activity_rank_99", "stoichiometry_R2_sign_baseline", "stoichiometry_R2_gauged_baseline",
           "stoichiometry_R2_gauged",
           "stoichiometry_skill", "stoichiometry_exact_frac", "stoichiometry_exact_frac_baseline",
           "stoichiometry_exact_frac_raw", "stoichiometry_exact_frac_raw_baseline", "stoichiometry_R2", "test_R2", "final_loss",
           "steps_per_second"]


def run_one(variant: str, profile: str, seed: int, out: Path) -> dict[str, float]:
    """One training as the runner drives it, in this process: stage, train entry, evaluation entry."""
    import yaml

    from regimes.metabolism import data, evaluate, train
    from regimes.metabolism.phase1 import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / f"stoichiometry_{variant}_{profile}.yaml").read_text())
    raw["training"]["seed"] = seed
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    inputs, run_dir = out / "inputs", out / "run"
    data.stage(cfg_path, inputs, log=lambda *a: None)
    common = ["--config", str(cfg_path), "--inputs", str(inputs), "--out", str(run_dir)]
    if train.main(common) != 0 or evaluate.main(common + ["--no-plots"]) != 0:
        raise RuntimeError(f"{variant} seed {seed}: training or evaluation failed (see {run_dir})")
    return json.loads((run_dir / "metrics.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..N-1")
    ap.add_argument("--variants", default="tied,untied")
    ap.add_argument("--json", help="write all rows here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for variant in args.variants.split(","):
            per_seed = []
            for seed in range(args.seeds):
                m = run_one(variant, args.profile, seed, Path(tmp) / f"{variant}_{seed}")
                row = {"variant": variant, "profile": args.profile, "seed": seed,
                       **{k: float(m[k]) for k in COLUMNS if k in m}}
                rows.append(row)
                per_seed.append(row)
                print(f"{variant:7s} seed {seed}: " + "  ".join(f"{k}={row[k]:.4g}" for k in COLUMNS if k in row),
                      flush=True)
            for k in ("stoichiometry_skill", "stoichiometry_exact_frac"):
                vals = [r[k] for r in per_seed if k in r]
                if vals:
                    print(f"{variant:7s} {k}: mean {statistics.mean(vals):.4f}  min {min(vals):.4f}  "
                          f"max {max(vals):.4f} over {len(vals)} seeds", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
