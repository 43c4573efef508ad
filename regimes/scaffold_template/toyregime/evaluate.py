"""Evaluation entry of toyregime: the only module that reads the truth.

    python -m toyregime.evaluate --config C --inputs IN --out OUT [--no-plots]

Trusted code, run by gnn-agent's runner in its own process after the
training (never the workspace copy): reads OUT/predictions.pt with
`regimes.runtime.load_predictions` (data only, shape-checked), the true W
and the held-out run from the cache, and writes OUT/metrics.json,
OUT/analysis.log and OUT/plots/*.png from arrays. It never builds a model
from the training's code. Malformed predictions: exit 4 with failure.json.

connectivity_R2 is the R^2 against the identity line (this model has no
gauge freedom: W enters dx/dt linearly), so a negated or rescaled W scores
badly; the fit R^2 (blind to sign and scale) is kept as connectivity_R2_fit.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from regimes import runtime
from toyregime.config import ConfigError, load_config
from toyregime.data import load_heldout, load_truth


def identity_r2(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """1 - SS_res / SS_tot against the line pred = truth."""
    truth, pred = truth.double(), pred.double()
    ss_tot = float((truth - truth.mean()).square().sum())
    return 1.0 - float((pred - truth).square().sum()) / ss_tot if ss_tot > 0 else 0.0


def fit_r2(a: torch.Tensor, b: torch.Tensor) -> float:
    """R2 of the least-squares line b ~ a (= Pearson r squared)."""
    a, b = a.double() - a.double().mean(), b.double() - b.double().mean()
    den = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) ** 2 / den ** 2 if den > 0 else 0.0


def metrics(w_learned: torch.Tensor, rollout: torch.Tensor, losses: torch.Tensor, w_true: torch.Tensor,
            x_test: torch.Tensor) -> dict[str, float]:
    """connectivity_R2 (primary, identity), connectivity_R2_fit, test_R2 / test_pearson of the rollout, final_loss."""
    off = ~torch.eye(w_true.shape[0], dtype=torch.bool)
    m = {"connectivity_R2": identity_r2(w_true[off], w_learned[off]),
         "connectivity_R2_fit": fit_r2(w_true[off], w_learned[off])}
    x_test = x_test[: rollout.shape[0]].double()
    pred = rollout.double()
    ss_res = (x_test - pred).square().sum(0)
    ss_tot = (x_test - x_test.mean(0)).square().sum(0).clamp_min(1e-12)
    m["test_R2"] = float((1 - ss_res / ss_tot).mean())
    pc = [fit_r2(x_test[:, i], pred[:, i]) ** 0.5 for i in range(x_test.shape[1])]
    m["test_pearson"] = float(sum(pc) / len(pc))
    k = max(1, losses.numel() // 10)
    m["final_loss"] = float(losses[-k:].mean())
    return m


def _plots(out: Path, losses: torch.Tensor, w_learned: torch.Tensor, w_true: torch.Tensor) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.semilogy(losses.numpy())
    ax.set_xlabel("step")
    ax.set_ylabel("prediction loss")
    fig.savefig(out / "plots" / "loss.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(w_true.flatten(), w_learned.flatten(), s=8)
    lim = float(w_true.abs().max()) * 1.2 or 1.0
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set_xlabel("true W")
    ax.set_ylabel("learned W")
    fig.savefig(out / "plots" / "W_scatter.png", dpi=100)
    plt.close(fig)


def _entry(args) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    out = Path(args.out)
    w_true, x_test = load_truth(cfg.simulation), load_heldout(cfg.simulation)
    n = w_true.shape[0]
    pred = runtime.load_predictions(out / runtime.PREDICTIONS_FILE, {
        "W": (n, n), "rollout": (x_test.shape[0], n), "losses": (None,), "n_steps": None, "elapsed_s": None})
    losses = pred["losses"]
    if losses.numel() == 0:
        raise runtime.EntryError("predictions", "predictions: losses is empty (the training took no step)")
    m = metrics(pred["W"], pred["rollout"], losses, w_true, x_test)
    m["training_time_min"] = float(pred["elapsed_s"]) / 60
    runtime.write_metrics(out, m, [f"{k}: {v:.6g}" for k, v in m.items()])
    if not args.no_plots:
        _plots(out, losses, pred["W"], w_true)
    print(f"connectivity_R2={m['connectivity_R2']:.4f} test_R2={m['test_R2']:.4f}", flush=True)
    return runtime.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = runtime.eval_arg_parser("python -m toyregime.evaluate").parse_args(argv)
    return runtime.run_entry(_entry, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
