"""Evaluation entry of the signal package: the metrics of SCIENCE.md B4.

    python -m regimes.signal.evaluate --config C --inputs IN --out OUT [--no-plots]

Trusted code, run by the runner in its own process after the training
(docs/contracts.md §2b). It reads OUT/predictions.pt (data only, loaded with
`runtime.load_predictions`: weights_only, shape-checked), and the truth (W,
gain), the held-out run 1 and the queries from the dataset cache of the
config's simulation section; it never reads IN back (an unconfined training
could have rewritten it), never imports workspace code and never builds a
model from policy code: every metric is computed from arrays. Writes
OUT/metrics.json, OUT/analysis.log and OUT/plots/*.png. A missing or
malformed predictions file: exit 4 with failure.json (the training's fault).

Connectivity is scored sign-aware (SCIENCE.md B4, revised): the
per-presynaptic gauge (a scale beta_j moved between W's column j and
lin_edge of neuron j, sign included) is removed explicitly, and then
`connectivity_R2` is the R^2 against the identity line, so a negated or
rescaled W scores badly; the fit R^2 that a negated W also maximises is kept
as `connectivity_R2_fit`.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import wasserstein_distance
from sklearn.metrics import roc_auc_score

from regimes import runtime
from regimes.signal.config import ConfigError, load_config
from regimes.signal.data import CacheEntry, Queries, TrainingData, open_cache
from regimes.signal.simulator import (SATURATION_STD, connectivity_ceiling,  # one definition for data and metrics
                                      identifiability, saturated)

MAX_PCS = 20


# ---------------------------------------------------------------- statistics

def fit_r2(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """(fit R^2, slope, intercept) of the least-squares line y = a x + b."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    vx = x.var()
    if vx == 0 or y.var() == 0:
        return 0.0, 0.0, float(y.mean())
    cov = ((x - x.mean()) * (y - y.mean())).mean()
    slope = cov / vx
    r = cov / math.sqrt(vx * y.var())
    return float(r * r), float(slope), float(y.mean() - slope * x.mean())


def per_frame_r2(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean over frames of R^2 (identity line) between true and predicted
    population states; truth, pred (T, n)."""
    ss_res = ((truth - pred) ** 2).sum(1)
    ss_tot = ((truth - truth.mean(1, keepdim=True)) ** 2).sum(1)
    ok = ss_tot > 0
    return float((1 - ss_res[ok] / ss_tot[ok]).mean())


def per_neuron_pearson(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean over neurons of the Pearson correlation in time (constant series skipped)."""
    t = truth - truth.mean(0)
    p = pred - pred.mean(0)
    den = torch.sqrt((t**2).sum(0) * (p**2).sum(0))
    ok = den > 0
    return float(((t * p).sum(0)[ok] / den[ok]).mean()) if ok.any() else 0.0


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float, win: int = 7) -> float:
    """Mean structural similarity of two 2-D arrays (uniform win x win window,
    K1 = 0.01, K2 = 0.03, sample covariance: the scikit-image defaults)."""
    x = a.double()[None, None]
    y = b.double()[None, None]
    win = min(win, x.shape[-1], x.shape[-2])
    mean = lambda z: F.avg_pool2d(z, win, stride=1)  # noqa: E731  (valid window = cropped borders)
    np_ = win * win
    cov_norm = np_ / (np_ - 1) if np_ > 1 else 1.0
    ux, uy = mean(x), mean(y)
    vx = cov_norm * (mean(x * x) - ux * ux)
    vy = cov_norm * (mean(y * y) - uy * uy)
    vxy = cov_norm * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def mode_wasserstein(truth: torch.Tensor, pred: torch.Tensor) -> float:
    """Per principal component of the truth (99% variance, at most 20): 1-D
    Wasserstein distance between the projections of truth and prediction,
    divided by the truth projection's std; averaged. truth, pred (T, n)."""
    mu = truth.double().mean(0)
    tc, pc = truth.double() - mu, pred.double() - mu
    _, s, vh = torch.linalg.svd(tc, full_matrices=False)
    var = s**2
    cum = torch.cumsum(var, 0) / var.sum().clamp_min(1e-300)
    k = min(int(torch.searchsorted(cum, torch.tensor(0.99, dtype=cum.dtype)).item()) + 1, MAX_PCS, len(s))
    pt, pp = (tc @ vh[:k].T).numpy(), (pc @ vh[:k].T).numpy()
    vals = [wasserstein_distance(pt[:, c], pp[:, c]) / pt[:, c].std() for c in range(k) if pt[:, c].std() > 0]
    return float(np.mean(vals)) if vals else 0.0


# ---------------------------------------------------------------- metrics



def identity_r2(x: np.ndarray, y: np.ndarray) -> float:
    """R^2 of y against the identity line y = x: 1 - sum (y - x)^2 / sum (x - mean x)^2."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    ss_tot = float(((x - x.mean()) ** 2).sum())
    return 1.0 - float(((y - x) ** 2).sum()) / ss_tot if ss_tot > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """A training's answers as arrays (from predictions.pt, or built by `oracle_answer`)."""

    W: torch.Tensor          # (n, n) learned connectivity, diagonal zero
    lin_edge: torch.Tensor   # (n, G) lin_edge(u, a_j) of every presynaptic neuron j on the query grid
    lin_phi: torch.Tensor    # (n, G)
    rollout: torch.Tensor    # (R, n) free rollout from run 1's first frame
    rollout_diverged_at: int = -1
    pred_losses: torch.Tensor | None = None
    total_losses: torch.Tensor | None = None
    n_steps: int | None = None
    elapsed_s: float | None = None


def required_shapes(n: int, n_grid: int, n_rollout: int) -> dict:
    """What predictions.pt must hold for a network of n neurons (runtime.load_predictions)."""
    return {"W": (n, n), "lin_edge": (n, n_grid), "lin_phi": (n, n_grid), "rollout": (n_rollout, n),
            "pred_losses": (None,), "total_losses": (None,), "n_steps": None, "elapsed_s": None}


def answer_from_predictions(raw: dict) -> Answer:
    """An Answer from a loaded (already shape-checked) predictions dict."""
    def num(name, kind):
        v = raw.get(name)
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise runtime.EntryError("predictions", f"predictions: {name} must be a finite number, not {v!r}"[:200])
        return kind(v)

    n_steps = num("n_steps", int)
    if raw["pred_losses"].shape[0] != n_steps or raw["total_losses"].shape[0] != n_steps:
        raise runtime.EntryError("predictions", f"predictions: the loss histories must hold n_steps = {n_steps} "
                                                f"values, not {raw['pred_losses'].shape[0]}")
    w = raw["W"].double().clone()
    w.fill_diagonal_(0.0)  # the model masks the diagonal; a self-loop is not part of the answer
    return Answer(W=w, lin_edge=raw["lin_edge"].double(), lin_phi=raw["lin_phi"].double(),
                  rollout=raw["rollout"].float(),
                  rollout_diverged_at=num("rollout_diverged_at", int) if "rollout_diverged_at" in raw else -1,
                  pred_losses=raw["pred_losses"].double(), total_losses=raw["total_losses"].double(),
                  n_steps=n_steps, elapsed_s=num("elapsed_s", float))


def euler_rollout(derivative, u0: torch.Tensor, n_frames: int, delta_t: float) -> tuple[torch.Tensor, int]:
    """Free Euler rollout of du/dt = derivative(u) from u0 (n,), frame 0 = u0; non-finite states
    frozen at +-1e6. Returns (frames (n_frames, n), first non-finite frame or -1)."""
    out = torch.empty(n_frames, u0.shape[0])
    x = u0.clone().float().unsqueeze(0)
    bad = -1
    for t in range(n_frames):
        out[t] = x[0]
        x = x + delta_t * derivative(x).float()
        if bad < 0 and not torch.isfinite(x).all():
            bad = t + 1
        x = torch.nan_to_num(x, nan=1e6, posinf=1e6, neginf=-1e6).clamp(-1e6, 1e6)
    return out, bad


def oracle_answer(w: torch.Tensor, gain: float, queries: Queries, delta_t: float) -> Answer:
    """The answer of the generator's form du/dt = -u + W (g tanh(u)) with a given W (tests, baselines).

    With the true W this is the exact generator (every metric at its best);
    with -W, a random W or zeros it is an answer that learned nothing about W.
    """
    w = w.clone().double()
    w.fill_diagonal_(0.0)
    n, grid = w.shape[0], queries.grid.double()
    edge = (gain * torch.tanh(grid)).expand(n, len(grid)).clone()
    phi = (-grid).expand(n, len(grid)).clone()
    wf = w.float()
    roll, bad = euler_rollout(lambda u: -u + gain * torch.tanh(u) @ wf.T, queries.rollout_u0,
                              queries.rollout_frames, delta_t)
    return Answer(W=w, lin_edge=edge, lin_phi=phi, rollout=roll, rollout_diverged_at=bad)


def connectivity_metrics(answer: Answer, w_true: torch.Tensor, gain: float, grid: torch.Tensor,
                         train_u: torch.Tensor | None = None) -> tuple[dict, dict]:
    """connectivity_R2 (identity R^2 after the gauge correction: the score),
    connectivity_R2_fit (fit R^2 after the correction), connectivity_R2_raw
    (fit R^2 without it), connectivity_slope, support_auroc (omitted when W
    has no zero off-diagonal entry), and with the training activity `train_u`:
    n_saturated_neurons and connectivity_R2_unsaturated (identity R^2 over the
    columns of the other neurons).

    Gauge: lin_edge(u, a_j) is fitted as beta_j * tanh(u) on the query grid
    (least squares through the origin) and the learned W_ij * beta_j / g is
    compared with the true W_ij: the model can move any scale, sign included,
    between W's column j and lin_edge of neuron j without changing its
    dynamics. After that correction nothing is free any more, so the score is
    the identity R^2: -W (with the true lin_edge) scores 1 - 4 = -3, a random
    or untrained W about 0 or below, the truth 1.

    A neuron that stays saturated sends an almost constant tanh(u_j): its
    column of W is then indistinguishable from an offset that lin_edge and
    lin_phi absorb, so its entries are not identifiable from the data (on
    sparse n100 seed 42, the two most saturated neurons have column R^2 0.16
    and 0.66 while the median column reaches 0.99).
    """
    n = w_true.shape[0]
    edge = answer.lin_edge.double()  # (n, G)
    t = torch.tanh(grid.double())
    beta = (edge @ t) / (t @ t)  # (n,)
    w_learned = answer.W.double()
    w_corr = w_learned * beta[None, :] / gain
    off = ~torch.eye(n, dtype=torch.bool)
    wt, wc, wr = w_true.double()[off].numpy(), w_corr[off].numpy(), w_learned[off].numpy()
    r2_fit, slope, _ = fit_r2(wt, wc)
    r2_raw, _, _ = fit_r2(wt, wr)
    m = {"connectivity_R2": identity_r2(wt, wc), "connectivity_R2_fit": r2_fit, "connectivity_R2_raw": r2_raw,
         "connectivity_slope": slope}
    if train_u is not None:
        active = ~saturated(train_u)  # per presynaptic neuron j
        cols = off & active[None, :]
        m["n_saturated_neurons"] = int((~active).sum())
        if cols.any():
            m["connectivity_R2_unsaturated"] = identity_r2(w_true.double()[cols].numpy(), w_corr[cols].numpy())
    support = wt != 0
    if support.any() and (~support).any():
        m["support_auroc"] = float(roc_auc_score(support, np.abs(wc)))
    arrays = {"W_true": w_true.double().numpy(), "W_corrected": w_corr.numpy(), "beta": beta.numpy(),
              "grid": grid.double().numpy(), "edge_curves": edge.numpy(), "phi_curves": answer.lin_phi.double().numpy(),
              "gain": gain}
    return m, arrays


def dynamics_metrics(answer: Answer, test_u: torch.Tensor) -> tuple[dict, dict]:
    """test_R2, test_pearson and the kinograph metrics of the rollout against run 1."""
    n_t = answer.rollout.shape[0]
    truth = test_u[:n_t].float()
    pred = answer.rollout.float()
    r2 = per_frame_r2(truth, pred)
    m = {"test_R2": r2, "test_pearson": per_neuron_pearson(truth, pred),
         # SCIENCE.md B4 defines kinograph_R2 as the same mean per-frame R^2 on
         # the neurons x frames matrices; kept as its own name for the seed's log format.
         "kinograph_R2": r2,
         "kinograph_SSIM": ssim(truth.T, pred.T, data_range=2 * float(truth.abs().max())),
         "kinograph_Wasserstein": mode_wasserstein(truth, pred)}
    return m, {"kino_true": truth.T.numpy(), "kino_pred": pred.T.numpy()}


@dataclass
class Evaluation:
    metrics: dict
    arrays: dict
    notes: list[str]


def evaluate(answer: Answer, data: TrainingData, queries: Queries, truth: dict, test_u: torch.Tensor) -> Evaluation:
    """All metrics of SCIENCE.md B4 for an answer, plus the arrays the plots need.

    data: run 0 (saturation, effective ranks); queries: the grid the answer's
    curves are on; truth: W, gain, spectral radius; test_u: run 1's activity.
    """
    m, arrays = connectivity_metrics(answer, truth["W"], float(truth["gain"]), queries.grid, data.u)
    dm, darr = dynamics_metrics(answer, test_u)
    m.update(dm)
    arrays.update(darr)
    m["cluster_accuracy"] = 1.0  # one neuron type: every neuron is in the right cluster by construction
    if answer.pred_losses is not None and answer.n_steps:
        k = max(1, answer.n_steps // 10)
        m["final_loss"] = float(answer.pred_losses[-k:].mean())
    m["spectral_radius"] = float(truth["spectral_radius"])
    m["effective_rank_90"] = int(data.effective_rank_90)
    m["effective_rank_99"] = int(data.effective_rank_99)
    ident = identifiability(data.u)
    m["system_degenerate"] = int(ident["system_degenerate"])
    # the best connectivity_R2 the data allow when saturated neurons' columns are known only
    # through their row sums: tells "this seed caps at 0.4" from "this recipe is bad"
    m["connectivity_R2_ceiling"] = connectivity_ceiling(truth["W"], data.u)
    if answer.elapsed_s is not None:
        m["training_time_min"] = answer.elapsed_s / 60
        if answer.n_steps:
            m["steps_per_second"] = answer.n_steps / max(answer.elapsed_s, 1e-9)
    notes = ["cluster_accuracy is 1.0 by construction: the network has a single neuron type",
             "connectivity_R2 is the identity R2 after the per-neuron gauge (a negated W scores badly); "
             "connectivity_R2_fit is the fit R2 (comparable to published figures, blind to the sign)"]
    if "support_auroc" not in m:
        notes.append("support_auroc not defined: the true W has no zero off-diagonal entry")
    if answer.rollout_diverged_at >= 0:
        notes.append(f"rollout left finite values at frame {answer.rollout_diverged_at} (clamped to 1e6)")
    if ident["system_degenerate"]:
        notes.append(f"degenerate system ({ident['degenerate_reason']}): W is poorly identifiable from this "
                     f"seed (connectivity_R2 ceiling {m['connectivity_R2_ceiling']:.3f}); a low connectivity_R2 "
                     "here measures the seed, not the recipe")
    return Evaluation(metrics=m, arrays=arrays, notes=notes)


def format_analysis_log(ev: Evaluation) -> list[str]:
    """analysis.log lines: the seed's activity block, then `name: value` lines."""
    m = ev.metrics
    lines = [f"spectral radius: {m['spectral_radius']:.3f}", "--- activity ---",
             f"  effective rank (90% var): {m['effective_rank_90']}",
             f"  effective rank (99% var): {m['effective_rank_99']}",
             *([f"  saturated neurons (tanh(u) std < {SATURATION_STD}): {m['n_saturated_neurons']}"]
               if "n_saturated_neurons" in m else []),
             *([f"  connectivity_R2 ceiling (saturated columns known only by their row sums): "
                f"{m['connectivity_R2_ceiling']:.3f}"] if "connectivity_R2_ceiling" in m else []),
             f"  system: {'DEGENERATE (converged out of reach)' if m.get('system_degenerate') else 'identifiable'}",
             "--- metrics ---"]
    for k, v in m.items():
        lines.append(f"{k}: {v}" if isinstance(v, int) else f"{k}: {v:.6g}")
    return lines + [f"note: {n}" for n in ev.notes]


# ---------------------------------------------------------------- entry point

def evaluate_entry(config_path: str | Path, out: str | Path, plots: bool = True) -> Evaluation:
    """Read OUT/predictions.pt and the cache of the config's dataset; write metrics, log and plots."""
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    out = Path(out)
    entry: CacheEntry = open_cache(cfg.simulation, log=lambda s: None)  # staged before training: a cache hit
    data, queries = entry.training_data(), entry.queries()
    raw = runtime.load_predictions(out / runtime.PREDICTIONS_FILE,
                                   required_shapes(data.n_neurons, len(queries.grid), queries.rollout_frames))
    answer = answer_from_predictions(raw)
    ev = evaluate(answer, data, queries, entry.truth(), entry.heldout())
    runtime.write_metrics(out, ev.metrics, format_analysis_log(ev))
    if plots:
        from regimes.signal import plots as plot_mod

        plot_mod.write_all(out / "plots", ev.arrays, ev.metrics, answer.pred_losses.numpy(),
                           answer.total_losses.numpy())
    return ev


def _entry(args) -> int:
    ev = evaluate_entry(args.config, args.out, plots=not args.no_plots)
    m = ev.metrics
    print(" ".join(f"{k}={m[k]:.4g}" for k in ("connectivity_R2", "connectivity_R2_fit", "support_auroc",
                                               "test_pearson") if k in m), flush=True)
    return runtime.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = runtime.eval_arg_parser("python -m regimes.signal.evaluate", __doc__.splitlines()[0]).parse_args(argv)
    return runtime.run_entry(_entry, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
