"""Plots of a metabolism training (SCIENCE.md C), Agg backend, readable at 800 px.

File names sort in the order the analysis step should look at them:
plots/MLP_node.png, MLP_sub.png, embedding.png, loss.png, rate_constants.png,
rollout.png, stoichiometry.png (each only when it applies).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from regimes.metabolism.fits import r2_fit, r2_identity  # noqa: E402

if TYPE_CHECKING:  # the evaluation imports this module (when it plots): no import back at run time
    from regimes.metabolism.evaluate import EvalResult

SIZE = (8, 6)  # inches at 100 dpi -> 800 x 600 px
DPI = 100
TYPE_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red"]


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_stoichiometry(path: Path, s_true: np.ndarray, s_learned: np.ndarray, skill: float | None = None,
                       sign_baseline: float | None = None) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    jitter = (np.random.default_rng(0).random(len(s_true)) - 0.5) * 0.15
    ax.scatter(s_true + jitter, s_learned, s=8, alpha=0.5)
    lim = max(2.5, float(np.abs(s_learned).max()) * 1.05)
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1)
    ax.set_xlabel("true S_ij (support edges, jittered)")
    ax.set_ylabel("learned S_ij")
    title = f"Stoichiometry: fit R² = {r2_fit(s_true, s_learned):.3f}"
    if sign_baseline is not None:
        title += f" (sign-only answer {sign_baseline:.3f})"
    if skill is not None:
        title += f", skill = {skill:.3f}"
    ax.set_title(title)
    _save(fig, path)


def plot_rate_constants(path: Path, true_log_k: np.ndarray, learned: np.ndarray, corrected: bool,
                        shared: np.ndarray | None = None) -> None:
    """Learned vs true log10 k; `shared` (bool per reaction) marks the reactions whose k no data determine
    alone (they share their substrate set with another: only sums / differences are identifiable)."""
    fig, ax = plt.subplots(figsize=SIZE)
    if shared is not None and shared.any():
        ax.scatter(true_log_k[~shared], learned[~shared], s=10, alpha=0.6, label="identifiable")
        ax.scatter(true_log_k[shared], learned[shared], s=14, alpha=0.8, color="tab:red",
                   label=f"shared substrate set ({int(shared.sum())}): only sums / differences identifiable")
        ax.legend(fontsize=7, loc="upper left")
    else:
        ax.scatter(true_log_k, learned, s=10, alpha=0.6)
    lo, hi = min(true_log_k.min(), learned.min()), max(true_log_k.max(), learned.max())
    ax.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax.set_xlabel("true log10 k")
    ax.set_ylabel("learned log10 k" + (" (gauge-corrected: + n_sub log10 f(1,1))" if corrected else ""))
    ax.set_title(f"Rate constants: R² = {r2_identity(true_log_k, learned):.3f}, fit R² = {r2_fit(true_log_k, learned):.3f}")
    _save(fig, path)


def plot_mlp_sub(path: Path, c: np.ndarray, s_vals: list[float], f: np.ndarray) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    for i, s in enumerate(s_vals):
        col = TYPE_COLORS[i % len(TYPE_COLORS)]
        ax.plot(c, f[i], color=col, lw=2, label=f"learned f(c, {s:g})")
        ax.plot(c, c ** s, color=col, ls="--", lw=1.5, label=f"true c^{s:g}")
    ax.set_xlabel("concentration c")
    ax.set_ylabel("MLP_sub(c, |s|)")
    ax.set_title("Substrate function MLP_sub (dashed: ground truth)")
    ax.legend()
    _save(fig, path)


def plot_mlp_node(path: Path, c: np.ndarray, y: np.ndarray, types: np.ndarray, lam, base,
                  own_c: np.ndarray | None = None, own_y: np.ndarray | None = None) -> None:
    """Each metabolite's learned curve: solid over its own range (where its slope is fitted and scored),
    faint over the rest of the pooled grid (extrapolation for that metabolite)."""
    fig, ax = plt.subplots(figsize=SIZE)
    for tp in np.unique(types):
        col = TYPE_COLORS[int(tp) % len(TYPE_COLORS)]
        sel = np.where(types == tp)[0]
        for j, i in enumerate(sel):
            if own_c is None:
                ax.plot(c, y[i], color=col, lw=0.6, alpha=0.3, label=f"learned, type {tp}" if j == 0 else None)
                continue
            ax.plot(c, y[i], color=col, lw=0.5, alpha=0.08)
            ax.plot(own_c[i], own_y[i], color=col, lw=0.7, alpha=0.4,
                    label=f"learned, type {tp} (own range)" if j == 0 else None)
        if lam is not None:
            ax.plot(c, -lam[tp] * (c - base[tp]), color=col, ls="--", lw=2.5, label=f"true type {tp}: -{lam[tp]:g}(c - {base[tp]:g})")
    ax.set_xlabel("concentration c")
    ax.set_ylabel("MLP_node([c, a_i])")
    ax.set_title("MLP_node per metabolite (solid: its own 1-99 % range, scored; faint: extrapolation; dashed: truth)",
                 fontsize=10)
    ax.legend(fontsize=9)
    _save(fig, path)


def plot_embedding(path: Path, emb: np.ndarray, types: np.ndarray, typed: bool) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    for tp in np.unique(types):
        sel = types == tp
        ax.scatter(emb[sel, 0], emb[sel, 1] if emb.shape[1] > 1 else np.zeros(sel.sum()), s=25,
                   color=TYPE_COLORS[int(tp) % len(TYPE_COLORS)], label=f"type {tp}" if typed else None)
    ax.set_xlabel("a_0")
    ax.set_ylabel("a_1")
    ax.set_title("Metabolite embeddings" + (" coloured by true type" if typed else ""))
    if typed:
        ax.legend()
    _save(fig, path)


def _running_mean(y: np.ndarray) -> np.ndarray:
    """Trailing mean over ~1% of the steps (at least 1), same length as y."""
    y = np.asarray(y, float)
    w = max(1, len(y) // 100)
    c = np.cumsum(np.insert(y, 0, 0.0))
    out = np.empty_like(y)
    out[w - 1:] = (c[w:] - c[:-w]) / w
    out[: w - 1] = c[1:w] / np.arange(1, w)
    return out


def plot_loss(path: Path, hist: dict) -> None:
    fig, ax = plt.subplots(figsize=SIZE)
    offset = 0
    for name, h in hist.items():
        loss = np.asarray(h["loss"])
        if len(loss) == 0:
            continue
        x = offset + np.arange(1, len(loss) + 1)
        col = "tab:blue" if name == "phase1" else "tab:purple"
        ax.plot(x, loss, lw=0.5, color=col, alpha=0.25)  # raw per-step loss (noisy: random frames)
        ax.plot(x, _running_mean(loss), lw=2.5, color=col, label=f"{name} loss (running mean)")
        if h.get("regul") is not None and np.any(np.asarray(h["regul"]) > 0):
            ax.plot(x, _running_mean(np.asarray(h["regul"])), lw=1.5, color="tab:cyan", label=f"{name} regularisation")
        offset += len(loss)
    ax.set_yscale("log")
    ax.set_xlabel("gradient step")
    ax.set_ylabel("loss (MSE / ynorm²)")
    ax.set_title("Training loss")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    _save(fig, path)


def plot_rollout(path: Path, true: np.ndarray, pred: np.ndarray, dt: float, n_show: int = 6) -> None:
    fig, axes = plt.subplots(n_show // 2, 2, figsize=(8, 7), sharex=True)
    order = np.argsort(-true.std(0))
    idx = order[np.linspace(0, len(order) - 1, n_show).astype(int)]
    t = np.arange(true.shape[0]) * dt
    for ax, i in zip(axes.ravel(), idx):
        ax.plot(t, true[:, i], "k", lw=1.2, label="truth")
        ax.plot(t, pred[:, i], "tab:red", lw=1, ls="--", label="rollout")
        ax.set_title(f"metabolite {i}", fontsize=10)
        ax.set_ylabel("c")
    for ax in axes[-1]:
        ax.set_xlabel("time")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle("Free rollout on held-out run 1 vs truth")
    _save(fig, path)


def write_plots(out_dir: Path, result: EvalResult, tick=None) -> list[Path]:
    """Write every plot that applies; returns the paths. `tick()` runs after each plot (progress lines)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pd = result.plot_data
    made: list[Path] = []

    def go(name: str, fn, *args) -> None:
        p = out_dir / name
        fn(p, *args)
        made.append(p)
        if tick is not None:
            tick()

    if "S" in pd:
        go("stoichiometry.png", plot_stoichiometry, *pd["S"])
    if "log_k" in pd:
        go("rate_constants.png", plot_rate_constants, *pd["log_k"])
    elif "log_k_raw" in pd:
        go("rate_constants.png", plot_rate_constants, *pd["log_k_raw"], False)
    if "MLP_sub" in pd:
        go("MLP_sub.png", plot_mlp_sub, *pd["MLP_sub"])
    if "MLP_node" in pd:
        go("MLP_node.png", plot_mlp_node, *pd["MLP_node"])
    if "embedding" in pd:
        go("embedding.png", plot_embedding, *pd["embedding"])
    if pd.get("hist"):
        go("loss.png", plot_loss, pd["hist"])
    if "rollout" in pd:
        go("rollout.png", plot_rollout, *pd["rollout"])
    return made
