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

    python benchmarks/throughput.py [--threads 1] [--seconds 3] [--only SUBSTR] [--json OUT] [--naive] [--ab]
                                    [--compile off|default|reduce-overhead]

A package may also expose `benchmarks_naive()` (same shape): unoptimised
reference implementations, run with --naive to show before/after; and
`benchmarks_ab()` -> [(name, setup_a, setup_b)]: with --ab the two steps are
alternated in short chunks in ONE process (the CPU-time ratio then cancels
the load of a shared machine, which moves either figure alone by 2x).

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
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    w0 = time.perf_counter()
    step()  # the first call carries torch.compile's warm-up, when a benchmark compiles
    sync()
    first = time.perf_counter() - w0
    for _ in range(warmup):
        step()
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
    return {"n": n, "wall_s": wall, "cpu_s": cpu, "per_s_wall": n / wall, "per_s_cpu": n / max(cpu, 1e-9),
            "first_call_s": first}


def measure_ab(step_a, step_b, seconds: float, device: str, rounds: int = 10) -> dict:
    """A and B alternated `rounds` times, each chunk ~seconds / (2 rounds): units/s of CPU time of each."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(3):
        step_a(), step_b()
    sync()
    res = {"a": [0, 0.0], "b": [0, 0.0]}
    chunk = seconds / (2 * rounds)
    for _ in range(rounds):
        for key, step in (("a", step_a), ("b", step_b)):
            n, w0, c0 = 0, time.perf_counter(), time.process_time()
            while True:
                step()
                n += 1
                if n % 5 == 0 or n < 5:
                    sync()
                    if time.perf_counter() - w0 >= chunk:
                        break
            sync()
            res[key][0] += n
            res[key][1] += time.process_time() - c0
    a, b = (res[k][0] / max(res[k][1], 1e-9) for k in ("a", "b"))
    return {"per_s_cpu_a": a, "per_s_cpu_b": b, "ratio": a / b, "n_a": res["a"][0], "n_b": res["b"][0]}


def collect_ab(packages=PACKAGES) -> list[tuple[str, object, object]]:
    out = []
    for pkg in packages:
        try:
            mod = importlib.import_module(f"regimes.{pkg}.bench")
        except ModuleNotFoundError:
            continue
        if hasattr(mod, "benchmarks_ab"):
            out.extend(mod.benchmarks_ab())
    return out


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
    ap.add_argument("--compile", choices=("off", "default", "reduce-overhead"), default="off",
                    help="training.compile for the packages that honour it (bench.TRAINING_OVERRIDES); the "
                         "first call's wall time (compile warm-up) is printed")
    ap.add_argument("--ab", action="store_true",
                    help="alternate each benchmarks_ab() pair (new vs reference/original) in one process instead")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    if args.compile != "off":
        for pkg in PACKAGES:
            try:
                mod = importlib.import_module(f"regimes.{pkg}.bench")
            except ModuleNotFoundError:
                continue
            if hasattr(mod, "TRAINING_OVERRIDES"):
                mod.TRAINING_OVERRIDES["compile"] = args.compile
    if args.ab:
        for name, setup_a, setup_b in collect_ab():
            if args.only and args.only not in name:
                continue
            for dev in devices:
                (step_a, _), (step_b, _) = setup_a(dev), setup_b(dev)
                r = measure_ab(step_a, step_b, 2 * args.seconds, dev)
                r.update(name=name, device=dev, threads=args.threads)
                rows.append(r)
                print(f"{name:55s} {dev:4s} {r['per_s_cpu_a']:8.1f} vs {r['per_s_cpu_b']:8.1f} steps/s CPU"
                      f"  x{r['ratio']:.2f}  (n={r['n_a']}/{r['n_b']})")
        if args.json:
            Path(args.json).write_text(json.dumps(rows, indent=1))
        return 0
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
                print(f"{name:45s} {dev:4s} {r['per_s_wall']:8.1f} {unit}s/s wall  {r['per_s_cpu']:8.1f} {unit}s/s CPU  "
                      f"(n={r['n']}, first call {r['first_call_s']:.2f} s)")
            else:
                print(f"{name:45s} {dev:4s} {r['wall_s'] / r['n']:8.3f} s/{unit} wall  {r['cpu_s'] / r['n']:8.3f} s/{unit} CPU  (n={r['n']})")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
