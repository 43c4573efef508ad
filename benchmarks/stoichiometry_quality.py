"""Stoichiometry figures of the default configs over several training seeds (issue 13).

For each variant (tied, untied) and each training seed, trains the shipped
`configs/stoichiometry_<variant>_<profile>.yaml` (only `training.seed` and, with
--sim-seeds, `simulation.seed` change) and prints the data figures (limited
reaction-frames, activity rank) and the S figures: sign baseline, R² after the
per-reaction gauge, skill (overall and by third of the reactions ranked by true k),
exact fraction (decoded and raw, with their data-free baselines). One thread; the quick profile takes about 2 CPU-minutes per training.

The system a seed draws depends on the cache's data secret: set
GNN_AGENT_DATA_SECRET (hex) to reproduce figures on another machine.

    python benchmarks/stoichiometry_quality.py [--profile quick|full] [--seeds 3] [--sim-seeds 42]
        [--variants tied,untied] [--set training.KEY=VALUE ...] [--json OUT] [--keep DIR]

--keep DIR keeps each training's directory (config, staged inputs, run/model.pt) under DIR, e.g. for
benchmarks/stoichiometry_oracle.py --run DIR/<variant>_<sim seed>_<seed>.
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
           "stoichiometry_skill", "stoichiometry_skill_slow", "stoichiometry_skill_mid", "stoichiometry_skill_fast",
           "stoichiometry_exact_frac", "stoichiometry_exact_frac_baseline",
           "stoichiometry_exact_frac_raw", "stoichiometry_exact_frac_raw_baseline", "stoichiometry_R2", "test_R2", "final_loss",
           "steps_per_second"]


def run_one(variant: str, profile: str, seed: int, out: Path, sim_seed: int | None = None,
            overrides: dict[str, object] | None = None) -> dict[str, float]:
    """One training as the runner drives it, in this process: stage, train entry, evaluation entry."""
    import yaml

    from regimes.metabolism import data, evaluate, train
    from regimes.metabolism.phase1 import CONFIG_DIR

    raw = yaml.safe_load((CONFIG_DIR / f"stoichiometry_{variant}_{profile}.yaml").read_text())
    raw["training"]["seed"] = seed
    if sim_seed is not None:
        raw["simulation"]["seed"] = sim_seed
    for key, value in (overrides or {}).items():
        section, name = key.split(".", 1)
        raw[section][name] = value
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(raw))
    inputs, run_dir = out / "inputs", out / "run"
    data.stage(cfg_path, inputs, log=lambda *a: None)
    common = ["--config", str(cfg_path), "--inputs", str(inputs), "--out", str(run_dir)]
    if train.main(common) != 0 or evaluate.main(common + ["--no-plots"]) != 0:
        raise RuntimeError(f"{variant} seed {seed}: training or evaluation failed (see {run_dir})")
    return json.loads((run_dir / "metrics.json").read_text())


def parse_seeds(text: str) -> list[int]:
    """`N` (training seeds 0..N-1) or a comma-separated list (`1,2`; `0,` is seed 0 alone)."""
    if "," in text:
        return [int(x) for x in text.split(",") if x.strip()]
    return list(range(int(text)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--seeds", default="3", help="N (training seeds 0..N-1) or a comma-separated list (e.g. 1,2; 0, for seed 0 alone)")
    ap.add_argument("--sim-seeds", default="", help="comma-separated simulation seeds (default: the config's)")
    ap.add_argument("--variants", default="tied,untied")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="override a config key (YAML value), e.g. training.coeff_S_prior=0.1")
    ap.add_argument("--json", help="write all rows here")
    ap.add_argument("--keep", type=Path, help="keep every training's directory under this folder")
    args = ap.parse_args(argv)
    import yaml

    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            ap.error(f"--set {item!r}: expected SECTION.KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    sim_seeds = [int(x) for x in args.sim_seeds.split(",") if x.strip()] or [None]
    seeds = parse_seeds(args.seeds)
    if not seeds:  # `--seeds 0` used to run zero trainings and print nothing
        ap.error(f"--seeds {args.seeds!r}: no training seed (a bare N means seeds 0..N-1; for seed 0 alone: --seeds 0,)")
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = args.keep or tmp_dir
        for variant in args.variants.split(","):
            per_seed = []
            for sim_seed in sim_seeds:
                for seed in seeds:
                    m = run_one(variant, args.profile, seed, Path(tmp) / f"{variant}_{sim_seed}_{seed}", sim_seed, overrides)
                    row = {"variant": variant, "profile": args.profile, "sim_seed": sim_seed, "seed": seed,
                           **{k: float(m[k]) for k in COLUMNS if k in m}}
                    rows.append(row)
                    per_seed.append(row)
                    print(f"{variant:7s} system {sim_seed} seed {seed}: "
                          + "  ".join(f"{k}={row[k]:.4g}" for k in COLUMNS if k in row), flush=True)
            for k in ("stoichiometry_skill", "stoichiometry_skill_slow", "stoichiometry_skill_mid",
                      "stoichiometry_skill_fast", "stoichiometry_exact_frac", "stoichiometry_exact_frac_raw"):
                vals = [r[k] for r in per_seed if k in r]
                if vals:
                    print(f"{variant:7s} {k}: mean {statistics.mean(vals):.4f}  min {min(vals):.4f}  "
                          f"max {max(vals):.4f} over {len(vals)} trainings", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
