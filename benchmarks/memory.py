"""Peak memory (RSS) of each regime's default training.

For every regime (or `--only NAME`) and its default variant (`--all-variants`:
every variant) this runs the training the loop would run first: the regime's
default config of `--profile` (quick by default), after the regime's
`prepare` step (homeostasis: the phase-1 checkpoint), through the sandbox
runner with one thread, and prints the peak resident set size.

Each measurement runs in a fresh worker process, so the kernel's
`RUSAGE_CHILDREN.ru_maxrss` of that worker is the peak RSS of the largest
process it waited for: the training (or, with two processes per training,
the larger of training and evaluation). The one-time `prepare` step runs in
its own worker first and is reported on its own line when it starts a
training. The goal (issue 19): at most 1 GB for every default training, quick
and full, i.e. memory that does not grow with the number of steps.

    python benchmarks/memory.py [--profile quick|full] [--only NAME] [--all-variants]
                                [--timeout-min 60] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GOAL_MB = 1024.0


def _peak_mb(who: int = resource.RUSAGE_CHILDREN) -> float:
    # ru_maxrss is in kilobytes on Linux (bytes on macOS)
    peak = resource.getrusage(who).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _prepare(regime_name: str, variant: str, profile: str, work: Path) -> dict:
    """Worker: the regime's prepare step; writes the training config to work/config.yaml."""
    import yaml

    from regimes.base import set_dotted
    from regimes.registry import get_regime

    regime = get_regime(regime_name)
    config = regime.default_config(variant, profile)
    # prepare() reads run.yaml for the profile (homeostasis picks its phase-1 config by it)
    (work / "run.yaml").write_text(yaml.safe_dump({"profile": profile, "regime": regime_name, "variant": variant}))
    t0 = time.monotonic()
    overrides = regime.prepare(work, config, "cpu", log=lambda msg: print(f"  [{regime_name}] {msg}", flush=True)) or {}
    for k, v in overrides.items():
        set_dotted(config, k, v)
    cfg = regime.slot_config(config, 0)
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    # prepare may train in this process (phase 1) or in a child: the larger of the two
    return {"peak_rss_mb": max(_peak_mb(), _peak_mb(resource.RUSAGE_SELF)), "duration_s": round(time.monotonic() - t0, 1),
            "trained": bool(overrides)}


def _train(regime_name: str, work: Path, timeout_min: float) -> dict:
    """Worker: one default training through the sandbox runner (the loop's path)."""
    from regimes.registry import get_regime
    from sandbox.runner import RunSpec, run_training

    regime = get_regime(regime_name)
    try:  # two processes per training (stage -> train -> eval): the runner's entries of the regime
        from sandbox.runner import regime_entries
        entries = regime_entries(regime)
    except ImportError:
        entries = {"train_entry": regime.train_entry}
    spec = RunSpec(slot=0, node_id=1, config_path=work / "config.yaml", out_dir=work / "slot_00", code_dir=ROOT,
                   device="cpu", threads=1, timeout_s=timeout_min * 60.0, **entries)
    res = run_training(spec)
    steps = None
    prog = spec.out_dir / "progress.jsonl"
    if prog.is_file():
        for line in prog.read_text().splitlines():
            try:
                steps = json.loads(line).get("step", steps)
            except ValueError:
                continue
    return {"peak_rss_mb": _peak_mb(), "status": res.status, "reason": res.reason,
            "duration_s": res.duration_s, "steps": steps}


def _worker(kind: str, *args: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
        print(line, flush=True)
    err = (out.stderr.strip().splitlines() or ["no output"])[-1]
    return {"peak_rss_mb": None, "status": "error", "reason": err[:300]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=("quick", "full"), default="quick")
    ap.add_argument("--only", metavar="NAME", help="one regime")
    ap.add_argument("--all-variants", action="store_true", help="every variant, not only the default one")
    ap.add_argument("--timeout-min", type=float, default=60.0, help="wall-clock limit per training")
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the rows as JSON")
    ap.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()

    if a.worker:
        kind, *rest = a.worker
        res = _prepare(rest[0], rest[1], rest[2], Path(rest[3])) if kind == "prepare" else \
            _train(rest[0], Path(rest[1]), float(rest[2]))
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    from regimes.registry import list_regimes

    regimes = [r for r in list_regimes() if a.only in (None, r.name)]
    if not regimes:
        print(f"no regime {a.only!r}", file=sys.stderr)
        return 2
    rows = []
    print(f"peak RSS of the default training per regime ({a.profile} profile, CPU, 1 thread; goal <= {GOAL_MB:.0f} MB)")
    for regime in regimes:
        variants = regime.variants if a.all_variants else [regime.default_variant]
        for variant in variants:
            with tempfile.TemporaryDirectory(prefix=f"gnn-mem-{regime.name}-") as tmp:
                work = Path(tmp)
                prep = _worker("prepare", regime.name, variant, a.profile, str(work))
                if prep.get("status") == "error":
                    rows.append({"regime": regime.name, "variant": variant, "stage": "prepare", **prep})
                    print(f"  {regime.name:22s} {variant:8s} prepare failed: {prep['reason']}", flush=True)
                    continue
                if prep.get("trained"):
                    rows.append({"regime": regime.name, "variant": variant, "stage": "prepare", **prep})
                    print(f"  {regime.name:22s} {variant:8s} prepare   peak {prep['peak_rss_mb']:8.0f} MB  "
                          f"({prep['duration_s']:.0f} s)", flush=True)
                res = _worker("train", regime.name, str(work), str(a.timeout_min))
                rows.append({"regime": regime.name, "variant": variant, "stage": "train", **res})
                peak = res.get("peak_rss_mb")
                peak_txt = f"{peak:8.0f} MB" if isinstance(peak, (int, float)) else "       ? MB"
                mark = "" if not isinstance(peak, (int, float)) else ("  ok" if peak <= GOAL_MB else "  OVER GOAL")
                print(f"  {regime.name:22s} {variant:8s} training  peak {peak_txt}  {res.get('status')} "
                      f"steps={res.get('steps')} ({res.get('duration_s', 0):.0f} s){mark}"
                      + (f"  {res.get('reason')}" if res.get("status") != "ok" else ""), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
