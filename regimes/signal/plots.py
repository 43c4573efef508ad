"""The plots of SCIENCE.md C for one signal training, written as PNGs that
read well at 800 px wide (Agg backend; numbered names sort in reading order)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

DPI = 100
FONT = 12


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def connectivity_scatter(path: Path, w_true: np.ndarray, w_corr: np.ndarray, r2: float, r2_fit: float) -> None:
    """Learned (gauge-corrected) vs true W over off-diagonal entries, with the identity and fit R^2."""
    off = ~np.eye(w_true.shape[0], dtype=bool)
    x, y = w_true[off], w_corr[off]
    fig, ax = plt.subplots(figsize=(8, 7))
    ax.scatter(x, y, s=3, alpha=0.4, color="tab:blue", rasterized=True)
    lim = float(np.abs(x).max()) * 1.2 or 1.0
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=1, label="identity (the score's line)")
    ax.set_xlabel("true W_ij", fontsize=FONT)
    ax.set_ylabel("learned W_ij * beta_j / g", fontsize=FONT)
    ax.set_title(f"connectivity R2 = {r2:.3f} (identity), fit R2 = {r2_fit:.3f}  ({x.size} entries)", fontsize=FONT)
    ax.legend(fontsize=FONT - 2)
    _save(fig, path)


def connectivity_matrices(path: Path, w_true: np.ndarray, w_corr: np.ndarray) -> None:
    """True and learned (gauge-corrected) W side by side, same colour scale."""
    v = float(np.abs(w_true).max()) or 1.0
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, m, title in zip(axes, (w_true, w_corr), ("true W", "learned W (gauge-corrected)")):
        im = ax.imshow(m, cmap="bwr", vmin=-v, vmax=v, interpolation="nearest")
        ax.set_title(title, fontsize=FONT)
        ax.set_xlabel("presynaptic neuron j", fontsize=FONT)
        ax.set_ylabel("postsynaptic neuron i", fontsize=FONT)
    fig.colorbar(im, ax=axes, shrink=0.8, label="W_ij")
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)


def function_curves(path: Path, grid: np.ndarray, curves: np.ndarray, truth: np.ndarray, name: str, ylabel: str) -> None:
    """One learned function per neuron (thin lines) against the true one (dashed)."""
    fig, ax = plt.subplots(figsize=(8, 6))
    idx = np.linspace(0, curves.shape[0] - 1, min(curves.shape[0], 50)).astype(int)
    for i in idx:
        ax.plot(grid, curves[i], color="tab:blue", lw=0.8, alpha=0.5)
    ax.plot(grid, truth, "k--", lw=2, label="true")
    ax.set_xlabel("u", fontsize=FONT)
    ax.set_ylabel(ylabel, fontsize=FONT)
    ax.set_title(name, fontsize=FONT)
    ax.legend(fontsize=FONT - 2)
    _save(fig, path)


def kinographs(path: Path, truth: np.ndarray, pred: np.ndarray) -> None:
    """Rollout vs truth: neurons x frames matrices on one colour scale."""
    v = float(np.abs(truth).max()) or 1.0
    fig, axes = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    for ax, m, title in zip(axes, (truth, pred), ("truth (run 1)", "GNN rollout")):
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=-v, vmax=v, interpolation="nearest")
        ax.set_title(title, fontsize=FONT)
        ax.set_ylabel("neuron", fontsize=FONT)
    axes[1].set_xlabel("frame", fontsize=FONT)
    fig.colorbar(im, ax=axes, shrink=0.8, label="u")
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def loss_curve(path: Path, pred_losses: np.ndarray, total_losses: np.ndarray) -> None:
    """Prediction and total loss per step (log scale, smoothed over ~1% of the run)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    k = max(1, len(pred_losses) // 100)
    for arr, label in ((pred_losses, "prediction loss (MSE / ynorm^2)"), (total_losses, "total loss")):
        a = np.asarray(arr, dtype=np.float64)
        if len(a) >= k and k > 1:
            a = np.convolve(a, np.ones(k) / k, mode="valid")
        ax.plot(np.arange(len(a)) + k - 1, np.clip(a, 1e-12, None), label=label)
    ax.set_yscale("log")
    ax.set_xlabel("gradient step", fontsize=FONT)
    ax.set_ylabel("loss", fontsize=FONT)
    ax.legend(fontsize=FONT - 2)
    _save(fig, path)


def write_all(out_dir: Path, arrays: dict, metrics: dict, pred_losses: np.ndarray, total_losses: np.ndarray) -> list[Path]:
    """Write every plot into out_dir from arrays (evaluation side); returns the paths in display order."""
    out_dir.mkdir(parents=True, exist_ok=True)
    g = float(arrays["gain"])
    grid = arrays["grid"]
    paths = [out_dir / n for n in ("01_connectivity_scatter.png", "02_connectivity_matrices.png",
                                   "03_lin_edge.png", "04_lin_phi.png", "05_kinograph.png", "06_loss.png")]
    connectivity_scatter(paths[0], arrays["W_true"], arrays["W_corrected"], metrics["connectivity_R2"],
                         metrics["connectivity_R2_fit"])
    connectivity_matrices(paths[1], arrays["W_true"], arrays["W_corrected"])
    # lin_edge is shown divided by its fitted beta_j / g, so the gauge-corrected curves compare with g*tanh(u)
    beta = arrays["beta"][:, None]
    scaled = arrays["edge_curves"] * np.where(np.abs(beta) > 1e-12, g / beta, 0.0)
    function_curves(paths[2], grid, scaled, g * np.tanh(grid), "lin_edge (rescaled by g / beta_j)", "g * lin_edge / beta_j")
    function_curves(paths[3], grid, arrays["phi_curves"], -grid, "lin_phi", "lin_phi(u)")
    kinographs(paths[4], arrays["kino_true"], arrays["kino_pred"])
    loss_curve(paths[5], pred_losses, total_losses)
    return paths
