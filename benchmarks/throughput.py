"""Throughput benchmark of the science packages.

Plug-in interface: for each package name in PACKAGES, `regimes.<pkg>.bench`
(skipped when it does not exist yet) exposes

    benchmarks() -> list[tuple[str, setup_fn]]
    setup_fn(device: str) -> tuple[step_fn, unit]

`setup_fn` builds everything once (data, model, optimiser); every `step_fn()`
call does ONE unit of work, named by `unit` ("step" = one gradient step,
"dataset" = one dataset generation). This script warms up, then times calls
for about `--seconds` and reports units per second both by wall clock and by
process CPU time (`time.process_time`): on a machine shared with other jobs
the CPU-time rate is the honest per-core figure.

    python benchmarks/throughput.py [--threads 1] [--seconds 3] [--only SUBSTR] [--json OUT] [--naive]

A package may also expose `benchmarks_naive()` (same shape): unoptimised
reference implementations, run with --naive to show before/after.

Runs on CPU with torch.set_num_threads(threads), and on CUDA too when present.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

PACKAGES = ["metabolism", "signal"]


def measure(step, seconds: float, device: str, warmup: int = 3) -> dict:
    for _ in range(warmup):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    n = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while True:
        step()
        n += 1
        if n % 5 == 0 or n < 5:
            sync()
            if time.perf_counter() - w0 >= seconds:
                break
    sync()
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    return {"n": n, "wall_s": wall, "cpu_s": cpu, "per_s_wall": n / wall, "per_s_cpu": n / max(cpu, 1e-9)}


def collect(packages=PACKAGES, naive: bool = False) -> list[tuple[str, object]]:
    out = []
    for pkg in packages:
        try:
            mod = importlib.import_module(f"regimes.{pkg}.bench")
        except ModuleNotFoundError as e:
            if e.name in (f"regimes.{pkg}", f"regimes.{pkg}.bench"):
                print(f"skip {pkg}: no regimes/{pkg}/bench.py yet")
                continue
            raise
        out.extend(mod.benchmarks())
        if naive and hasattr(mod, "benchmarks_naive"):  # optional: the "before optimisation" references
            out.extend(mod.benchmarks_naive())
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--only", default="")
    ap.add_argument("--json", default=None)
    ap.add_argument("--naive", action="store_true", help="also run a package's optional benchmarks_naive() references")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for name, setup in collect(naive=args.naive):
        if args.only and args.only not in name:
            continue
        for dev in devices:
            step, unit = setup(dev)
            secs = args.seconds if unit == "step" else max(args.seconds, 0.1)
            r = measure(step, secs, dev, warmup=3 if unit == "step" else 1)
            r.update(name=name, device=dev, unit=unit, threads=args.threads)
            rows.append(r)
            if unit == "step":
                print(f"{name:45s} {dev:4s} {r['per_s_wall']:8.1f} {unit}s/s wall  {r['per_s_cpu']:8.1f} {unit}s/s CPU  (n={r['n']})")
            else:
                print(f"{name:45s} {dev:4s} {r['wall_s'] / r['n']:8.3f} s/{unit} wall  {r['cpu_s'] / r['n']:8.3f} s/{unit} CPU  (n={r['n']})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
