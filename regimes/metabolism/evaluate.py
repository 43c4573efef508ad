"""Metrics of a metabolism training (SCIENCE.md A6): the ONLY module that reads
the truth file.

`compute_metrics(learned, truth, data, gm, ...)` works from plain tensors and
callables (a `Learned`), so an oracle (true S, true k, c^s, the true lines) can
be evaluated exactly like a trained model; `learned_from_model` builds a
`Learned` from a model. Only metrics that apply are written: a stoichiometry
model gets no MLP_sub metrics, a model without MLP_node no slope ratios, a
dataset without homeostasis no embedding accuracy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from regimes.metabolism.config import Config, GraphModelConfig
from regimes.metabolism.data import TrainingData, atomic_save
from regimes.metabolism.simulator import activity_rank

#: metric order in analysis.log (others follow alphabetically)
ORDER = ["final_loss", "stoichiometry_R2", "stoichiometry_sign_acc", "stoichiometry_R2_rounded",
         "rate_constants_R2", "rate_constants_R2_shifted", "rate_constants_R2_fit", "rate_constants_alpha",
         "rate_constants_n_outliers", "rate_constants_R2_trimmed", "rate_constants_n_shared_substrates",
         "rate_constants_R2_identifiable", "MLP_sub_R2", "MLP_sub_R2_normalized",
         "avg_slope_ratio", "MLP_node_slope_0", "MLP_node_gt_slope_0", "MLP_node_slope_ratio_0",
         "MLP_node_offset_0", "MLP_node_gt_offset_0", "MLP_node_offset_ratio_0",
         "MLP_node_slope_1", "MLP_node_gt_slope_1", "MLP_node_slope_ratio_1",
         "MLP_node_offset_1", "MLP_node_gt_offset_1", "MLP_node_offset_ratio_1",
         "embedding_cluster_acc", "embedding_n_clusters", "embedding_silhouette",
         "phase2_loss", "phase2_node_magnitude", "test_R2", "test_pearson",
         "training_time_min", "steps_per_second", "activity_rank_90", "activity_rank_99"]


@dataclass
class Learned:
    """What a model learned, as plain data. Any field may be None (not learned)."""

    log_k: torch.Tensor | None = None  # (n_rxn,) log10 k
    s_all: torch.Tensor | None = None  # (E_all,) learned S on the support (None: S was given)
    f_sub: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # f(c, s), elementwise
    node_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None  # g(c (...,), a (..., d))
    embeddings: torch.Tensor | None = None  # (n_met, d)
    rollout: Callable[[torch.Tensor, int], torch.Tensor] | None = None  # (c0 (n_met,), n) -> (n, n_met)


@dataclass
class EvalResult:
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    plot_data: dict = field(default_factory=dict)


def load_truth(path: Path | str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


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


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def stoichiometry_metrics(s_learned: np.ndarray, s_true: np.ndarray) -> dict[str, float]:
    return {"stoichiometry_R2": r2_fit(s_true, s_learned),
            "stoichiometry_sign_acc": float((np.sign(s_learned) == np.sign(s_true)).mean()),
            "stoichiometry_R2_rounded": r2_fit(s_true, np.round(s_learned))}


def rate_constant_metrics(log_k: np.ndarray, true_log_k: np.ndarray, n_sub: np.ndarray, alpha: float
                          ) -> tuple[dict[str, float], np.ndarray]:
    """Gauge-corrected log k (log k_j + n_sub(j) log10 f(1,1)) against the truth."""
    corr = log_k + n_sub * math.log10(max(alpha, 1e-30))
    shifted = corr - corr.mean() + true_log_k.mean()
    err = np.abs(corr - true_log_k)
    keep = err <= 0.3
    m = {"rate_constants_R2": r2_identity(true_log_k, corr),
         "rate_constants_R2_shifted": r2_identity(true_log_k, shifted),
         "rate_constants_R2_fit": r2_fit(true_log_k, corr),
         "rate_constants_alpha": float(alpha),
         "rate_constants_n_outliers": float((~keep).sum()),
         "rate_constants_R2_trimmed": r2_fit(true_log_k[keep], corr[keep]) if keep.sum() >= 3 else 0.0}
    return m, corr


def shared_substrate_reactions(data: TrainingData, truth: dict) -> np.ndarray:
    """Boolean per reaction: its substrate multiset {(metabolite, |s|)} equals another reaction's."""
    met, rxn, mag = data.met_sub.cpu().tolist(), data.rxn_sub.cpu().tolist(), truth["s_sub"].tolist()
    keys: dict[int, list] = {}
    for mi, ri, si in zip(met, rxn, mag):
        keys.setdefault(ri, []).append((mi, round(si, 3)))
    sig = [tuple(sorted(keys.get(j, []))) for j in range(data.n_rxn)]
    count: dict[tuple, int] = {}
    for k in sig:
        count[k] = count.get(k, 0) + 1
    return np.array([count[k] > 1 for k in sig])


def line_fits(c: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and offset of each row of y (n, G) against c (G,)."""
    cm = c - c.mean()
    slope = (y - y.mean(1, keepdims=True)) @ cm / float((cm ** 2).sum())
    offset = y.mean(1) - slope * c.mean()
    return slope, offset


def cluster_metrics(emb: np.ndarray, types: np.ndarray, eps: float, min_samples: int) -> tuple[dict[str, float], np.ndarray]:
    """DBSCAN on the embeddings (noise = its own cluster), Hungarian matching to the types."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import silhouette_score

    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(emb)
    uniq = np.unique(labels)
    n_types = int(types.max()) + 1
    cont = np.zeros((len(uniq), n_types))
    for i, lab in enumerate(uniq):
        cont[i] = np.bincount(types[labels == lab], minlength=n_types)
    rows, cols = linear_sum_assignment(-cont)
    acc = float(cont[rows, cols].sum() / len(types))
    n_clusters = int((uniq >= 0).sum())
    sil = float(silhouette_score(emb, labels)) if 2 <= len(uniq) <= len(emb) - 1 else 0.0
    return {"embedding_cluster_acc": acc, "embedding_n_clusters": float(n_clusters), "embedding_silhouette": sil}, labels


def series_scores(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Mean over metabolites of the time-series R² and Pearson r (constant truths skipped)."""
    keep = true.std(0) > 0
    t, p = true[:, keep], pred[:, keep]
    if t.shape[1] == 0:
        return float("nan"), float("nan")
    if not np.isfinite(p).all():
        return float("nan"), float("nan")
    ss_tot = ((t - t.mean(0)) ** 2).sum(0)
    r2 = 1.0 - ((t - p) ** 2).sum(0) / ss_tot
    pc, tc = p - p.mean(0), t - t.mean(0)
    denom = np.sqrt((pc ** 2).sum(0) * (tc ** 2).sum(0))
    pear = np.where(denom > 0, (pc * tc).sum(0) / np.where(denom > 0, denom, 1.0), 0.0)
    return float(r2.mean()), float(pear.mean())


def compute_metrics(learned: Learned, truth: dict, data: TrainingData, gm: GraphModelConfig,
                    hist: dict | None = None, timing: dict | None = None) -> EvalResult:
    """All metrics that apply to `learned` (see module doc)."""
    hist, timing = hist or {}, timing or {}
    m: dict[str, float] = {}
    notes: list[str] = []
    pd: dict = {}
    conc0 = data.conc[0].detach().cpu()
    c_lo, c_hi = float(conc0.min()), float(conc0.max())
    c_grid = torch.linspace(c_lo, c_hi, gm.eval_grid, dtype=torch.float32)
    last = hist.get("phase2") or hist.get("phase1")
    if last and last["loss"]:
        ls = last["loss"]
        m["final_loss"] = float(np.mean(ls[-max(1, len(ls) // 10):]))
    pd["hist"] = {k: {"loss": v["loss"], "regul": v.get("regul")} for k, v in hist.items()}

    if learned.s_all is not None:
        s_l, s_t = _np(learned.s_all), _np(truth["s_all"])
        m.update(stoichiometry_metrics(s_l, s_t))
        pd["S"] = (s_t, s_l)

    alpha = None
    if learned.f_sub is not None:
        one = torch.ones(1)
        with torch.no_grad():
            alpha = float(learned.f_sub(one, one)[0])
        s_vals = sorted({float(v) for v in truth["s_sub"].unique()})
        with torch.no_grad():
            f = torch.stack([learned.f_sub(c_grid, torch.full_like(c_grid, s)) for s in s_vals])
        target = torch.stack([c_grid ** s for s in s_vals])
        m["MLP_sub_R2"] = r2_identity(_np(target).ravel(), _np(f).ravel())
        m["MLP_sub_R2_normalized"] = r2_identity(_np(target).ravel(), _np(f / max(alpha, 1e-30)).ravel())
        notes.append(f"MLP_sub_R2 compares f(c, s) with c^s for s in {{{', '.join(f'{s:g}' for s in s_vals)}}} "
                     f"(the |s| present in the support), c in [{c_lo:.3g}, {c_hi:.3g}]; _normalized divides f by alpha = f(1,1)")
        pd["MLP_sub"] = (_np(c_grid), s_vals, _np(f))

    if learned.log_k is not None and alpha is not None:
        rk, corr = rate_constant_metrics(_np(learned.log_k), _np(truth["log_k"]), _np(truth["n_sub"]), alpha)
        m.update(rk)
        notes.append("rate constants: log k_j + n_sub(j) * log10 f(1,1) against the true log10 k; outliers |error| > 0.3")
        shared = shared_substrate_reactions(data, truth)
        if shared.any():
            tk = _np(truth["log_k"])
            m["rate_constants_n_shared_substrates"] = float(shared.sum())
            m["rate_constants_R2_identifiable"] = r2_identity(tk[~shared], corr[~shared])
            notes.append(f"{int(shared.sum())} reactions share their substrate set with another reaction: their rates "
                         "differ only by k, so only the sum (same S column) or difference (opposite S) of their k is "
                         "identifiable; rate_constants_R2_identifiable leaves them out")
        pd["log_k"] = (_np(truth["log_k"]), corr)
    elif learned.log_k is not None:
        pd["log_k_raw"] = (_np(truth["log_k"]), _np(learned.log_k))

    homeo = bool(truth.get("homeostasis"))
    types = _np(truth["types"]).astype(int)
    if learned.node_fn is not None and learned.embeddings is not None:
        emb = learned.embeddings.detach().cpu()
        n = emb.shape[0]
        with torch.no_grad():
            y = learned.node_fn(c_grid.expand(n, -1), emb.unsqueeze(1).expand(-1, len(c_grid), -1))
        slope, offset = line_fits(_np(c_grid), _np(y))
        lam, base = _np(truth["lambda"]), _np(truth["baseline"])
        ratios = []
        for tp in range(len(lam)):
            sel = types == tp
            if not sel.any():
                continue
            m[f"MLP_node_slope_{tp}"] = float(slope[sel].mean())
            m[f"MLP_node_offset_{tp}"] = float(offset[sel].mean())
            if homeo:
                gs, go = -float(lam[tp]), float(lam[tp] * base[tp])
                m[f"MLP_node_gt_slope_{tp}"] = gs
                m[f"MLP_node_gt_offset_{tp}"] = go
                m[f"MLP_node_slope_ratio_{tp}"] = m[f"MLP_node_slope_{tp}"] / gs
                m[f"MLP_node_offset_ratio_{tp}"] = m[f"MLP_node_offset_{tp}"] / go if go != 0 else float("nan")
                ratios.append(m[f"MLP_node_slope_ratio_{tp}"])
        if ratios:
            m["avg_slope_ratio"] = float(np.mean(ratios))
        notes.append(f"MLP_node lines fitted per metabolite over c in [{c_lo:.3g}, {c_hi:.3g}], averaged per type"
                     + ("" if homeo else "; no homeostasis in this dataset, so no ratios"))
        pd["MLP_node"] = (_np(c_grid), _np(y), types, lam if homeo else None, base if homeo else None)
        if homeo:
            cm, labels = cluster_metrics(_np(emb), types, gm.dbscan_eps, gm.dbscan_min_samples)
            m.update(cm)
            notes.append(f"embedding clusters: DBSCAN eps={gm.dbscan_eps:g} min_samples={gm.dbscan_min_samples}, "
                         "noise as its own cluster, Hungarian matching to the true types"
                         + ("; silhouette 0 when fewer than 2 labels" if len(np.unique(labels)) < 2 else ""))
        pd["embedding"] = (_np(emb), types, homeo)

    if "phase2" in hist:
        ls = hist["phase2"]["loss"]
        m["phase2_loss"] = float(np.mean(ls[-max(1, len(ls) // 10):])) if ls else float("nan")
        if learned.node_fn is not None:
            frames = data.conc[0][:: max(1, data.n_frames // 200)].detach().cpu()
            with torch.no_grad():
                out = learned.node_fn(frames, learned.embeddings.detach().cpu().expand(frames.shape[0], -1, -1))
            m["phase2_node_magnitude"] = float(out.abs().mean())

    if learned.rollout is not None:
        n = min(gm.test_rollout_frames, data.n_frames)
        true1 = data.conc[1, :n].detach().cpu()
        pred1 = learned.rollout(true1[0], n).detach().cpu()
        m["test_R2"], m["test_pearson"] = series_scores(_np(true1), _np(pred1))
        if not math.isfinite(m["test_R2"]):
            notes.append("test rollout diverged (non-finite); test_R2 and test_pearson are nan")
        notes.append(f"test_R2 / test_pearson: free rollout of {n} frames from run 1 frame 0, per-metabolite means")
        pd["rollout"] = (_np(true1), _np(pred1), data.delta_t)

    m.update({k: float(v) for k, v in timing.items() if k in ("training_time_min", "steps_per_second")})
    r90, r99 = activity_rank(conc0)
    m["activity_rank_90"], m["activity_rank_99"] = float(r90), float(r99)
    if truth.get("generator") == "mass_action" and not 40 <= r99 <= 60:
        notes.append(f"activity rank (99% variance) of run 0 is {r99}; SCIENCE.md expects a rank near 50 for mass action")
    return EvalResult(metrics=m, notes=notes, plot_data=pd)


def learned_from_model(model: torch.nn.Module, data: TrainingData, tick: Callable[[], None] | None = None) -> Learned:
    """A `Learned` view of a trained model (evaluated on CPU copies); `tick` is
    called every 250 rollout frames (progress lines during evaluation)."""
    from regimes.metabolism.model import KineticsModel, rollout

    model = model.to("cpu").eval()
    dt = data.delta_t
    lrn = Learned(log_k=model.log_k.detach().clone(),
                  rollout=lambda c0, n: rollout(model, c0, n, dt, tick=tick))
    if not model.freeze_S:
        lrn.s_all = model.sto_all.detach().clone()
    if isinstance(model, KineticsModel):
        lrn.f_sub = model.f_sub
        if model.use_node:
            lrn.node_fn = model.node_fn
            lrn.embeddings = model.a.detach().clone()
    return lrn


def evaluate_model(model: torch.nn.Module, data: TrainingData, truth_path: Path, cfg: Config,
                   hist: dict | None = None, timing: dict | None = None, tick: Callable[[], None] | None = None) -> EvalResult:
    """Metrics of a trained model against the dataset's truth file."""
    truth = load_truth(truth_path)
    data = data.to("cpu")
    return compute_metrics(learned_from_model(model, data, tick), truth, data, cfg.graph_model, hist, timing)


def _fmt(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.6g}"


def write_outputs(out: Path, result: EvalResult) -> None:
    """metrics.json (flat name -> number; NaN where undefined) and analysis.log (`name: value` lines, notes as # comments)."""
    keys = [k for k in ORDER if k in result.metrics] + sorted(k for k in result.metrics if k not in ORDER)
    atomic_save({k: result.metrics[k] for k in keys}, out / "metrics.json")
    lines = [f"{k}: {_fmt(result.metrics[k])}" for k in keys] + [f"# {n}" for n in result.notes]
    (out / "analysis.log").write_text("\n".join(lines) + "\n")
