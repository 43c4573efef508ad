"""Goodness of fit of learned against true values: the metrics (evaluate.py) and the plot titles
(plots.py) read the same numbers from here, so plots need not import the evaluation."""

from __future__ import annotations

import numpy as np


def r2_identity(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """1 - SS_res / SS_tot against the identity line."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    ss_tot = float(((y_true - y_true.mean()) ** 2).sum())
    if ss_tot == 0.0 or not np.isfinite(y_pred).all():
        return float("nan")
    return 1.0 - float(((y_true - y_pred) ** 2).sum()) / ss_tot


def r2_fit(x: np.ndarray, y: np.ndarray) -> float:
    """R² of the least-squares line (= Pearson r²); 0 when either side is constant."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2 or not (np.isfinite(x).all() and np.isfinite(y).all()) or x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1] ** 2)
