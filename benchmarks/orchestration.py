"""Orchestration time per batch: everything the loop does except training and LLM latency.

Runs the real graph (store, memory, UCB, tools, heuristic policy, workspace
checkouts, status.json, LangGraph checkpoints) on the toy regime with a fake
executor that "trains" instantly, for 4 slots up to iteration 200+, and
reports the wall time per batch near iteration 200 (target < 1 s).

usage: .venv/bin/python benchmarks/orchestration.py [--slots 4] [--iterations 208]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOY = ROOT / "tests" / "fixtures" / "toy_regime"

PLUGIN = '''
import sys
sys.path.insert(0, {toy!r})
from toy_def import make
REGIME = make("toy_bench", block=48)
'''


class InstantExecutor:
    """Writes the toy metrics directly (no subprocess): isolates the loop's own cost."""

    def __init__(self):
        self.seconds = 0.0

    def run_batch(self, specs, on_progress=None, cancel=None):
        import yaml
        from sandbox.runner import RunResult

        t0 = time.perf_counter()
        out = []
        for sp in specs:
            cfg = yaml.safe_load(Path(sp.config_path).read_text())["training"]
            q = math.exp(-((math.log10(cfg["learning_rate"]) + 2) ** 2) / 0.5) * max(0.0, 1 - 0.03 * abs(cfg["coeff_reg"] - 2))
            m = {"fit_R2": q, "test_pearson": min(1.0, q + 0.1), "test_R2": 0.9 * q, "final_loss": 1 - q}
            (sp.out_dir / "metrics.json").write_text(json.dumps(m))
            out.append(RunResult(slot=sp.slot, node_id=sp.node_id, status="ok", exit_code=0, reason="",
                                 traceback_tail="", metrics=m, duration_s=0.0, out_dir=sp.out_dir))
        self.seconds += time.perf_counter() - t0
        return out

    def shutdown(self):
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slots", type=int, default=4)
    ap.add_argument("--iterations", type=int, default=208)
    ap.add_argument("--keep", action="store_true", help="keep the run directory and print it")
    a = ap.parse_args()
    from agent.run import RunOptions, start_run

    tmp = Path(tempfile.mkdtemp(prefix="gnn-orch-"))
    (tmp / "plugins").mkdir()
    (tmp / "plugins" / "toy_bench.py").write_text(PLUGIN.format(toy=str(TOY)))
    ex = InstantExecutor()
    stamps: list[tuple[int, float, float]] = []  # (iteration, wall, executor seconds so far)

    def on_event(ev):
        if ev["type"] == "batch_logged":
            stamps.append((ev["iteration"], time.perf_counter(), ex.seconds))

    t0 = time.perf_counter()
    run_dir = start_run(RunOptions(regime="toy_bench", regime_path=[tmp / "plugins"], slots=a.slots,
                                   iterations=a.iterations, policy="heuristic", run_dir=tmp / "run"),
                        on_event=on_event, executor=ex)
    total = time.perf_counter() - t0
    per = [(it, (w - w0) - (e - e0)) for (it, w, e), (_, w0, e0) in zip(stamps[1:], stamps[:-1])]
    last = [s for it, s in per if (it - 1) * a.slots >= a.iterations - 5 * a.slots]
    first = [s for _, s in per[:5]]
    n_nodes = len((run_dir / "nodes.jsonl").read_text().splitlines())
    print(f"orchestration per batch ({a.slots} slots, fake instant executor, heuristic policy)")
    print(f"  first batches (iteration <= {5 * a.slots + a.slots}): median {statistics.median(first):.3f} s")
    print(f"  at iteration ~{a.iterations}: median {statistics.median(last):.3f} s, max {max(last):.3f} s "
          f"({len(last)} batches; target < 1 s)")
    print(f"  {n_nodes} nodes, whole run {total:.1f} s")
    if a.keep:
        print(f"  run dir: {run_dir}")
    else:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
