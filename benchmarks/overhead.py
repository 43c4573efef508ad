"""Per-training overhead of the runner (issue 11): staging + confinement launch + evaluation start.

A no-op science package (written to a temp dir: stage writes one small file,
the training writes its predictions, the evaluation turns them into metrics)
is run through

- ``before``: the one-process runner of commit 4442497 (the training wrote its
  own metrics; no staging, no confinement, no evaluation process),
- ``after``: today's runner, confined (Landlock + namespaces),
- ``after --no-confine``: today's runner without OS confinement,

`--repeat` times each, and the medians are printed (wall seconds of
`run_training`, plus the runner's own stage/train/eval split). The
difference after - before is the overhead per training that the two-process
boundary costs. `--torch-eval` makes the evaluation import torch, as every
real regime's does; the runner starts the evaluation with the training so
that import overlaps the training's work: `--train-s S` gives the training S
seconds of (sleeping) work to overlap with.

    python benchmarks/overhead.py [--repeat 10] [--torch-eval] [--train-s 0] [--json OUT]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BEFORE_COMMIT = "4442497"  # the last commit with the one-process runner

TRAIN = '''
import argparse, json, sys, time
from pathlib import Path
time.sleep({train_s})  # the training's own work (a real one takes minutes)
ap = argparse.ArgumentParser()
ap.add_argument("--config"); ap.add_argument("--inputs"); ap.add_argument("--out"); ap.add_argument("--device")
a = ap.parse_args()
out = Path(a.out)
(out / "progress.jsonl").write_text(json.dumps({{"step": 1, "total": 1, "loss": 0.5, "elapsed_s": 0.0}}) + "\\n")
(out / "predictions.pt").write_text(json.dumps({{"value": 1.0}}))
if a.inputs is None:  # the one-process contract: the training wrote its own metrics
    (out / "metrics.json").write_text(json.dumps({{"value": 1.0}}))
'''
EVAL = '''
import argparse, json
from pathlib import Path
{torch}
ap = argparse.ArgumentParser()
ap.add_argument("--config"); ap.add_argument("--inputs"); ap.add_argument("--out")
a = ap.parse_args()
out = Path(a.out)
(out / "metrics.json").write_text((out / "predictions.pt").read_text())
'''
DATA = '''
from pathlib import Path
def stage(config_path, dest_dir):
    (Path(dest_dir) / "inputs.json").write_text("{}")
'''


def _package(base: Path, torch_eval: bool, train_s: float) -> Path:
    pkg = base / "trusted" / "benchpkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "train.py").write_text(TRAIN.format(train_s=train_s))
    (pkg / "evaluate.py").write_text(EVAL.format(torch="import torch" if torch_eval else ""))
    (pkg / "data.py").write_text(DATA)
    code = base / "code"
    (code / "benchpkg").mkdir(parents=True)
    for f in ("__init__.py", "train.py"):
        (code / "benchpkg" / f).write_text((pkg / f).read_text())
    return pkg.parent


def _old_runner(base: Path):
    """sandbox/runner.py as of BEFORE_COMMIT, imported under another name."""
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{BEFORE_COMMIT}:sandbox/runner.py"],
                         capture_output=True, text=True, check=True).stdout
    path = base / "runner_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("runner_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["runner_before"] = mod
    spec.loader.exec_module(mod)
    return mod


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--torch-eval", action="store_true", help="the evaluation imports torch (as real regimes do)")
    ap.add_argument("--train-s", type=float, default=0.0,
                    help="seconds the no-op training sleeps (the evaluation's imports overlap them)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()

    from sandbox import confine
    from sandbox.runner import RunSpec, run_training

    base = Path(tempfile.mkdtemp(prefix="gnn-agent-overhead-"))
    trusted = _package(base, args.torch_eval, args.train_s)
    config = base / "config.yaml"
    config.write_text("{}\n")
    before = _old_runner(base)
    rows: dict[str, list[float]] = {"before": [], "after": [], "after --no-confine": []}
    parts: dict[str, dict[str, list[float]]] = {"after": {}, "after --no-confine": {}}
    for i in range(args.repeat):
        out = base / f"before_{i}"
        t0 = time.perf_counter()
        res = before.run_training(before.RunSpec(slot=0, node_id=i, config_path=config, out_dir=out,
                                                 code_dir=base / "code", train_entry="benchpkg.train"))
        rows["before"].append(time.perf_counter() - t0)
        assert res.status == "ok", res.reason
        for name, confined in (("after", True), ("after --no-confine", False)):
            out = base / f"{name.replace(' ', '_')}_{i}"
            t0 = time.perf_counter()
            res = run_training(RunSpec(slot=0, node_id=i, config_path=config, out_dir=out, code_dir=base / "code",
                                       train_entry="benchpkg.train", eval_entry="benchpkg.evaluate",
                                       stage_entry="benchpkg.data:stage", trusted_root=trusted, confine=confined))
            rows[name].append(time.perf_counter() - t0)
            assert res.status == "ok", (res.reason, res.traceback_tail)
            for k, v in res.timings.items():
                parts[name].setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"confinement: {confine.describe(True)}; {args.repeat} repeats; training {args.train_s:g} s; "
          f"evaluation {'imports torch' if args.torch_eval else 'stdlib only'}")
    print(f"{'runner':<22}{'median s':>10}{'stage':>8}{'train':>8}{'eval':>8}")
    for k, v in med.items():
        p = {n: statistics.median(x) for n, x in parts.get(k, {}).items()}
        print(f"{k:<22}{v:>10.3f}" + "".join(f"{p[n]:>8.3f}" if n in p else f"{'-':>8}"
                                           for n in ("stage_s", "train_s", "eval_s")))
    for k in ("after", "after --no-confine"):
        print(f"overhead per training ({k} - before): {med[k] - med['before']:+.3f} s")
    if args.json:
        args.json.write_text(json.dumps({"median_s": med, "confinement": confine.describe(True),
                                         "repeat": args.repeat, "torch_eval": args.torch_eval}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
