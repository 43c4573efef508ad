"""Oracles on one cached signal system (issue 15): is a failing seed's W in its data, or do the recipes miss it?

For the system `--type T --seed S` in a dataset cache (the cache's data secret seeds W, so pass the
cache the trainings used), prints one JSON line per oracle:
- `identifiability`: saturated neurons, effective ranks, degenerate flag, connectivity_R2_ceiling;
- `least_squares`: W from du/dt + u = g W tanh(u) (+ one offset per neuron) by least squares on the
  training run: connectivity_R2 over all columns and over the unsaturated ones (what the data
  determine when the true functions are known);
- `w_only` (with --steps): W alone fitted by Adam with the true lin_edge (g tanh) and lin_phi (-u)
  fixed, init N(0, 1/n), batches of --batch random frames, the recipe's loss (MSE / ynorm^2, L1
  from a quarter of the steps on): what gradient descent finds in that budget without any MLP.

    python benchmarks/signal_oracles.py --cache /tmp/seedbench/cache --type low_rank --seed 47 --steps 40000

Measured on low_rank n100 (quick-profile systems of `seed_robustness.py`, cache /tmp/seedbench/cache):
seed 47 (5 saturated, effective rank (99%) 7): least squares 1.000 on the unsaturated columns, w_only
0.31 in 40000 steps and 0.54 in 250000 (lr 3e-3, batch 8); seed 45 (none saturated, rank 14): w_only
0.998 in 40000; sparse seed 42: 0.998.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _r2(x: torch.Tensor, y: torch.Tensor) -> float:
    """Identity R^2 of y against x."""
    return float(1 - ((y - x) ** 2).sum() / ((x - x.mean()) ** 2).sum())


def least_squares(w: torch.Tensor, u: torch.Tensor, du: torch.Tensor, gain: float) -> dict:
    from regimes.signal.simulator import saturated

    n = w.shape[0]
    u, du, w = u.double(), du.double(), w.double()
    x = torch.cat([torch.tanh(u), torch.ones(len(u), 1, dtype=u.dtype)], 1)
    w_ls = torch.linalg.lstsq(x, (du + u) / gain).solution[:n].T
    off = ~torch.eye(n, dtype=torch.bool)
    cols = off & (~saturated(u))[None, :]
    return {"oracle": "least_squares", "connectivity_R2": round(_r2(w[off], w_ls[off]), 4),
            "connectivity_R2_unsaturated": round(_r2(w[cols], w_ls[cols]), 4) if cols.any() else None}


def w_only(w: torch.Tensor, u: torch.Tensor, du: torch.Tensor, gain: float, steps: int, lr_w: float,
           batch: int, l1: float, seed: int = 42) -> dict:
    from regimes.signal.simulator import saturated

    n = w.shape[0]
    off = ~torch.eye(n, dtype=torch.bool)
    th, ynorm2 = torch.tanh(u.float()), float(du.float().std()) ** 2
    gen = torch.Generator().manual_seed(seed)
    wl = (torch.randn(n, n, generator=gen) / n**0.5).requires_grad_()
    opt = torch.optim.Adam([wl], lr=lr_w)
    frames = torch.randint(0, len(u), (steps, batch), generator=gen)
    t0 = time.process_time()
    for it in range(steps):
        k = frames[it]
        wm = wl * off
        loss = ((-u[k] + gain * th[k] @ wm.T - du[k]) ** 2).mean() / ynorm2
        if l1 > 0 and it >= steps // 4:
            loss = loss + l1 * wm.abs().sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    wf = (wl * off).detach()
    cols = off & (~saturated(u))[None, :]
    return {"oracle": "w_only", "steps": steps, "lr_W": lr_w, "batch": batch, "L1": l1,
            "connectivity_R2": round(_r2(w.float()[off], wf[off]), 4),
            "connectivity_R2_unsaturated": round(_r2(w.float()[cols], wf[cols]), 4) if cols.any() else None,
            "pred_loss": float(((-u + gain * th @ wf.T - du) ** 2).mean() / ynorm2),
            "cpu_s": round(time.process_time() - t0, 1)}


def find_system(cache: Path, kind: str, seed: int, n: int | None = None) -> Path:
    """The cache entry of simulation (connectivity_type, seed[, n_neurons])."""
    for d in sorted((cache / "signal").glob("*")):
        try:
            sim = torch.load(d / "truth.pt")["simulation"]
        except (FileNotFoundError, RuntimeError):
            continue
        if sim["connectivity_type"] == kind and sim["seed"] == seed and (n is None or sim["n_neurons"] == n):
            return d
    raise SystemExit(f"no {kind} system with seed {seed} in {cache / 'signal'}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="dataset cache root (GNN_AGENT_CACHE of the trainings)")
    ap.add_argument("--type", required=True, choices=["sparse", "low_rank"])
    ap.add_argument("--seed", type=int, required=True, help="simulation.seed")
    ap.add_argument("--n-neurons", type=int)
    ap.add_argument("--steps", type=int, default=0, help="also fit W alone for this many Adam steps")
    ap.add_argument("--lr-w", type=float, default=3e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--l1", type=float, default=0.0)
    args = ap.parse_args(argv)
    from regimes.signal.simulator import connectivity_ceiling, identifiability

    torch.set_num_threads(1)
    d = find_system(args.cache, args.type, args.seed, args.n_neurons)
    truth, run0 = torch.load(d / "truth.pt"), torch.load(d / "run0.pt")
    w, u, du, g = truth["W"], run0["u"], run0["du"], float(truth["gain"])
    ident = identifiability(u)
    ident.update(oracle="identifiability", connectivity_R2_ceiling=round(connectivity_ceiling(w, u), 4),
                 spectral_radius=round(float(truth["spectral_radius"]), 3))
    print(json.dumps(ident), flush=True)
    print(json.dumps(least_squares(w, u, du, g)), flush=True)
    if args.steps:
        print(json.dumps(w_only(w, u, du, g, args.steps, args.lr_w, args.batch, args.l1)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
