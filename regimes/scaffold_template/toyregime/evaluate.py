"""Metrics: the only module that reads the truth file."""

from __future__ import annotations

from pathlib import Path

import torch

from toyregime.model import ToyGNN


def _fit_r2(a: torch.Tensor, b: torch.Tensor) -> float:
    """R2 of the least-squares line b ~ a (= Pearson r squared)."""
    a, b = a - a.mean(), b - b.mean()
    den = float((a.square().sum() * b.square().sum()).sqrt())
    return float((a * b).sum()) ** 2 / den ** 2 if den > 0 else 0.0


@torch.no_grad()
def evaluate(model: ToyGNN, inputs_path: Path, truth_path: Path, final_loss: float) -> dict[str, float]:
    """connectivity_R2 (primary), test_R2 / test_pearson of a free rollout of run 1, final_loss."""
    w_true = torch.load(truth_path, weights_only=True)["W"]
    blob = torch.load(inputs_path, weights_only=True)
    x_test, dt = blob["x"][1], float(blob["delta_t"])
    off = ~torch.eye(w_true.shape[0], dtype=torch.bool)
    metrics = {"connectivity_R2": _fit_r2(w_true[off], model.connectivity()[off])}
    x = x_test[0:1]
    pred = [x]
    for _ in range(x_test.shape[0] - 1):
        x = (x + dt * model(x)).clamp(-1e6, 1e6)  # a diverging rollout scores badly, not as inf
        pred.append(x)
    pred = torch.cat(pred)
    ss_res = (x_test - pred).square().sum(0)
    ss_tot = (x_test - x_test.mean(0)).square().sum(0).clamp_min(1e-12)
    metrics["test_R2"] = float((1 - ss_res / ss_tot).mean())
    pc = [_fit_r2(x_test[:, i], pred[:, i]) ** 0.5 for i in range(x_test.shape[1])]
    metrics["test_pearson"] = float(sum(pc) / len(pc))
    metrics["final_loss"] = final_loss
    return {k: (v if torch.isfinite(torch.tensor(v)) else float("nan")) for k, v in metrics.items()}
