"""Evaluation of a metabolism training (SCIENCE.md A6): the ONLY module that reads
the truth file and the held-out run.

    python -m regimes.metabolism.evaluate --config C --inputs IN --out OUT [--no-plots]

A separate process from the training (docs/contracts.md §2b), trusted installed
code: it loads OUT/predictions.pt with `runtime.load_predictions` (data only,
shape-checked; no code crosses), the truth and run 1 from the cache, computes
every metric and writes OUT/metrics.json, OUT/analysis.log and OUT/plots/*.png.
It never imports the workspace and never builds a model from policy code.

`compute_metrics(learned, truth, data, heldout_conc, gm, ...)` works from plain
arrays (a `Learned`), so oracles and data-free baselines (true S, sign-only S,
c^s, the true lines, a type-blind MLP_node) are evaluated exactly like a
trained model. Only metrics that apply are written: a stoichiometry model gets
no MLP_sub metrics, a model without MLP_node no slope ratios, a dataset without
homeostasis no embedding accuracy.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from regimes import runtime
from regimes.metabolism.config import Config, ConfigError, GraphModelConfig, load_config
from regimes.metabolism.data import S_VALUES, TrainingData, dataset_dir, load_heldout, load_or_generate, \
    node_frame_idx, own_range_grid, phase1_checkpoint_path, query_grid, read_checkpoint, rollout_shape
from regimes.metabolism.fits import r2_fit, r2_identity
from regimes.metabolism.simulator import activity_rank

#: parameters phase 2 must leave bit-identical to the phase-1 checkpoint (same as train.FROZEN_PREFIXES;
#: repeated here so the evaluation never imports the training module)
FROZEN_PREFIXES = ("log_k", "sto_all", "sto_sub", "mlp_sub.")

#: frames of the short-horizon test score `test_R2_short` (the first frames of the same held-out rollout).
#: The mass-action cycles are chaotic: the exact law rolled in float64 instead of float32 keeps R2 1.0 up to
#: 1000 frames but 0.36 at 2000, and log k off by 1e-4 (noise) gives -0.2 at 2000; at 250 frames log k noise
#: of 0.01 still scores 0.93. So test_R2 over 2000 frames cannot separate a good model from a poor one;
#: test_R2_short can (measured on seed 42, see prompts/regimes/rate_constants.md).
TEST_SHORT_FRAMES = 250

#: metric order in analysis.log (others follow alphabetically)
ORDER = ["final_loss", "stoichiometry_skill", "stoichiometry_R2", "stoichiometry_R2_sign_baseline",
         "stoichiometry_R2_mass_balance_baseline", "stoichiometry_R2_gauged", "stoichiometry_R2_gauged_baseline",
         "stoichiometry_exact_frac", "stoichiometry_exact_frac_baseline", "stoichiometry_exact_frac_raw",
         "stoichiometry_exact_frac_raw_baseline", "stoichiometry_sign_acc",
         "stoichiometry_R2_rounded", "stoichiometry_skill_slow", "stoichiometry_skill_mid", "stoichiometry_skill_fast",
         "rate_constants_R2", "rate_constants_R2_fit", "rate_constants_alpha", "rate_constants_n_outliers",
         "rate_constants_n_shared_substrates", "rate_constants_R2_identifiable",
         "rate_constants_R2_shifted", "rate_constants_R2_trimmed", "MLP_sub_R2", "MLP_sub_R2_normalized",
         "frozen_params_changed", "avg_slope_ratio", "MLP_node_function_R2",
         "MLP_node_slope_0", "MLP_node_gt_slope_0", "MLP_node_slope_ratio_0",
         "MLP_node_offset_0", "MLP_node_gt_offset_0", "MLP_node_offset_ratio_0", "MLP_node_slope_ratio_0_pooled_grid",
         "MLP_node_slope_1", "MLP_node_gt_slope_1", "MLP_node_slope_ratio_1",
         "MLP_node_offset_1", "MLP_node_gt_offset_1", "MLP_node_offset_ratio_1", "MLP_node_slope_ratio_1_pooled_grid",
         "embedding_cluster_acc", "embedding_cluster_acc_chance", "embedding_n_clusters", "embedding_silhouette",
         "phase2_loss", "phase2_node_magnitude", "test_R2", "test_pearson", "test_R2_short", "test_pearson_short",
         "training_time_min", "steps_per_second", "activity_rank_90", "activity_rank_99", "limited_fraction",
         "n_shared_substrate_reactions", "n_inactive_reactions", "system_degenerate"]


@dataclass
class Learned:
    """What a model learned, as plain arrays on the evaluation's queries. Any field may be None (not learned).

    Function values are on `query_grid(run 0, gm.eval_grid)` (the 1-99 % quantiles of run 0)."""

    log_k: torch.Tensor | None = None  # (n_rxn,) log10 k
    s_all: torch.Tensor | None = None  # (E_all,) learned S on the support (None: S was given)
    f_sub_grid: torch.Tensor | None = None  # (len(S_VALUES), G): f(c_grid, s) for s in S_VALUES
    alpha: float | None = None  # f(1, 1), the gauge factor between k and MLP_sub
    node_grid: torch.Tensor | None = None  # (n_met, G): MLP_node([c_grid, a_i]) for every metabolite
    #: (n_met, G): MLP_node([c, a_i]) on metabolite i's own range (data.own_range_grid): where slopes are fitted
    node_own_grid: torch.Tensor | None = None
    embeddings: torch.Tensor | None = None  # (n_met, d)
    node_on_frames: torch.Tensor | None = None  # (F, n_met): MLP_node on run 0 at node_frame_idx
    rollout: torch.Tensor | None = None  # (n, n_met) from run 1's first frame, or (n_seg, seg, n_met) per segment


@dataclass
class EvalResult:
    metrics: dict[str, float]
    notes: list[str] = field(default_factory=list)
    plot_data: dict = field(default_factory=dict)


def load_truth(path: Path | str) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, float)


# ----- stoichiometry -----

def sign_answer(n_edges: int, sub_to_all: np.ndarray) -> np.ndarray:
    """The data-free answer the inputs already give: -1 on every substrate edge, +1 on every product edge."""
    s = np.ones(n_edges)
    s[np.asarray(sub_to_all, int)] = -1.0
    return s


def mass_balance_answer(n_edges: int, sub_to_all: np.ndarray, rxn_all: np.ndarray, n_rxn: int) -> np.ndarray:
    """The other data-free answer: -1 on substrates, n_sub/n_prod on products, so every column sums to zero.
    Up to each column's scale it is the per-entry posterior mean of S given the roles under the generator's
    prior, and exact for one-substrate reactions (n_prod <= the consumed total <= 2)."""
    s = sign_answer(n_edges, sub_to_all)
    is_sub = s < 0
    n_sub = np.bincount(rxn_all, weights=is_sub, minlength=n_rxn)
    n_prod = np.bincount(rxn_all, weights=~is_sub, minlength=n_rxn)
    ratio = n_sub / np.maximum(n_prod, 1.0)
    return np.where(is_sub, -1.0, ratio[rxn_all])


def gauge_align(s_learned: np.ndarray, s_true: np.ndarray, rxn: np.ndarray, n_rxn: int) -> tuple[np.ndarray, np.ndarray]:
    """Remove the per-reaction scale gauge: column j of S times alpha_j with v_j / alpha_j leaves dc/dt
    unchanged, so only each column's shape is identifiable. alpha_j = max(0, <s_j, t_j> / <s_j, s_j>)
    (least squares against the truth, one number per reaction; non-negative, so a negated column is not
    flipped back). Returns (aligned S, alpha)."""
    num = np.bincount(rxn, weights=s_learned * s_true, minlength=n_rxn)
    den = np.bincount(rxn, weights=s_learned * s_learned, minlength=n_rxn)
    alpha = np.where(den > 0, np.maximum(0.0, num / np.where(den > 0, den, 1.0)), 0.0)
    return s_learned * alpha[rxn], alpha


def integer_decode(s_learned: np.ndarray, sub_to_all: np.ndarray, rxn_all: np.ndarray, n_rxn: int,
                   scale_ref: np.ndarray | None = None) -> np.ndarray:
    """Each column of the learned S replaced by the valid integer column nearest in direction, with no truth:
    the roles fix the signs, every magnitude is 1 or 2 and the column sums to zero (the seed's facts). A
    direction is all a column's scale gauge leaves identifiable (column x alpha with rate / alpha is the same
    dynamics), so plain rounding would score the gauge, not S. Valid columns of one direction (e.g. (-1, 1)
    and (-2, 2)) are told apart by the learned column's own length, the nearest one wins: the only place
    the scale is used. A zero column decodes to the smallest valid one; a column whose roles no valid
    column fits (a substrate with a net product coefficient, as in the `cycles` network) is rounded.

    scale_ref (the true S, for the score): among the valid columns of the decoded direction, the one nearest
    to scale_ref's column wins instead, i.e. the truth breaks only the tie the gauge leaves. In `random`
    networks about 40 % of the columns (29 % of the edges) have n_sub = n_prod and all magnitudes equal,
    so (-1, 1) and (-2, 2), or (-1, -1, 1, 1) and (-2, -2, 2, 2), are the same dynamics (`untied`: exactly;
    `tied`: up to msg_mlp's input scale); without scale_ref those edges would score the column's length."""
    s_learned = np.asarray(s_learned, float)
    is_sub = np.zeros(len(s_learned), bool)
    is_sub[np.asarray(sub_to_all, int)] = True
    sign = np.where(is_sub, -1.0, 1.0)
    out = np.zeros_like(s_learned)
    order = np.argsort(rxn_all, kind="stable")
    bounds = np.searchsorted(rxn_all[order], np.arange(n_rxn + 1))
    cache: dict[tuple, np.ndarray] = {}
    for j in range(n_rxn):
        e = order[bounds[j]:bounds[j + 1]]
        if not len(e):
            continue
        key = tuple(sign[e])
        if key not in cache:  # valid columns for these roles, by total magnitude (the tie order)
            mags = np.array(np.meshgrid(*[[1.0, 2.0]] * len(e), indexing="ij")).reshape(len(e), -1).T
            cols = mags * sign[e]
            cols = cols[np.abs(cols.sum(1)) < 1e-9]
            cache[key] = cols[np.argsort(np.abs(cols).sum(1), kind="stable")]
        cols = cache[key]
        x = s_learned[e]
        if not len(cols):  # roles no valid column fits (a `cycles` network: substrate and net product): round
            out[e] = np.round(x)
            continue
        if np.linalg.norm(x) == 0:
            out[e] = cols[0]
            continue
        unit = cols / np.linalg.norm(cols, axis=1, keepdims=True)
        best = unit[int(np.argmax(unit @ x))]
        same = np.flatnonzero(unit @ best > 1.0 - 1e-9)  # the candidates along the best direction
        target = x if scale_ref is None else scale_ref[e]
        out[e] = cols[same[int(np.argmin(np.linalg.norm(cols[same] - target, axis=1)))]]
    return out


#: names of the k-tercile skill diagnostics, slowest third first (stoichiometry_metrics with true_log_k)
K_TERCILES = ("slow", "mid", "fast")


def stoichiometry_metrics(s_learned: np.ndarray, s_true: np.ndarray, rxn_all: np.ndarray, sub_to_all: np.ndarray,
                          n_rxn: int, true_log_k: np.ndarray | None = None) -> tuple[dict[str, float], list[str]]:
    """R², the data-free baselines and the skill over them (SCIENCE.md A6). With `true_log_k`, also the skill
    on the edges of each third of the reactions ranked by their true k (`stoichiometry_skill_slow` / `_mid`
    / `_fast`): a slow reaction's column gets little data gradient, so where S goes wrong shows here first."""
    rxn_all = np.asarray(rxn_all, int)
    sign = sign_answer(len(s_true), sub_to_all)
    mass = mass_balance_answer(len(s_true), sub_to_all, rxn_all, n_rxn)
    aligned = {name: gauge_align(s, s_true, rxn_all, n_rxn)[0]
               for name, s in (("learned", s_learned), ("sign", sign), ("mass", mass))}

    def skill_on(edges: np.ndarray) -> tuple[float, float, float]:
        """(R2_gauged, the better data-free one, skill) over the given edges."""
        r2 = r2_identity(s_true[edges], aligned["learned"][edges])
        base = max(r2_identity(s_true[edges], aligned["sign"][edges]), r2_identity(s_true[edges], aligned["mass"][edges]))
        return r2, base, (r2 - base) / (1.0 - base) if math.isfinite(r2) and base < 1.0 else float("nan")

    r2_g, base_g, skill = skill_on(np.ones(len(s_true), bool))
    exact_raw = lambda s: float((np.round(s) == s_true).mean())  # noqa: E731
    # decoded by direction; the truth only picks among the columns of one direction (the scale gauge)
    exact = lambda s: float((integer_decode(s, sub_to_all, rxn_all, n_rxn, scale_ref=s_true) == s_true).mean())  # noqa: E731
    m = {"stoichiometry_skill": skill,
         "stoichiometry_R2": r2_fit(s_true, s_learned),
         "stoichiometry_R2_sign_baseline": r2_fit(s_true, sign),
         "stoichiometry_R2_mass_balance_baseline": r2_fit(s_true, mass),
         "stoichiometry_R2_gauged": r2_g,
         "stoichiometry_R2_gauged_baseline": base_g,
         "stoichiometry_exact_frac": exact(s_learned),
         "stoichiometry_exact_frac_baseline": max(exact(sign), exact(mass)),
         "stoichiometry_exact_frac_raw": exact_raw(s_learned),
         "stoichiometry_exact_frac_raw_baseline": max(exact_raw(sign), exact_raw(mass)),
         "stoichiometry_sign_acc": float((np.sign(s_learned) == np.sign(s_true)).mean()),
         "stoichiometry_R2_rounded": r2_fit(s_true, np.round(s_learned))}
    if true_log_k is not None:
        third = np.zeros(n_rxn, int)  # 0 slow, 1 middle, 2 fast: by rank of the true k
        order = np.argsort(np.asarray(true_log_k, float), kind="stable")
        third[order[n_rxn // 3: 2 * n_rxn // 3]], third[order[2 * n_rxn // 3:]] = 1, 2
        for i, name in enumerate(K_TERCILES):
            m[f"stoichiometry_skill_{name}"] = skill_on(third[rxn_all] == i)[2]
    notes = ["stoichiometry: the support and the substrate/product roles are inputs, so answers that look at no "
             "data already score: the sign-only answer (-1 substrate, +1 product; sign accuracy 1) has "
             f"stoichiometry_R2_sign_baseline {m['stoichiometry_R2_sign_baseline']:.3f}, the mass-balance guess "
             f"(-1 substrate, n_sub/n_prod product) {m['stoichiometry_R2_mass_balance_baseline']:.3f} (fit R², as "
             "stoichiometry_R2)",
             "stoichiometry_skill (the score) = (R2_gauged - R2_gauged_baseline) / (1 - R2_gauged_baseline). Gauge: "
             "column j of S x alpha_j with v_j / alpha_j leaves dc/dt unchanged, so each column is first scaled by "
             "alpha_j = max(0, <learned_j, true_j> / <learned_j, learned_j>) (least squares per reaction, never "
             "negative: a negated column stays wrong), then the identity R² over the support edges is taken; the "
             "baseline is the better of the two data-free answers treated the same way; skill <= 0 means no better "
             "than looking at no data",
             "stoichiometry_exact_frac: edges exactly right after each column is decoded, without the truth, to the "
             "valid integer column (magnitudes 1 or 2, signs from the roles, column sum 0) nearest in direction "
             "(the column's scale is a gauge, so plain rounding scores the gauge); the better data-free answer "
             f"decoded the same way scores {m['stoichiometry_exact_frac_baseline']:.3f}. stoichiometry_exact_frac_raw: "
             f"plain rounding (data-free {m['stoichiometry_exact_frac_raw_baseline']:.3f})"]
    if true_log_k is not None:
        notes.append("stoichiometry_skill_slow / _mid / _fast: the skill on the edges of the slowest, middle and "
                     "fastest third of the reactions by true k (diagnostics: a slow column gets little data gradient)")
    return m, notes


# ----- rate constants -----

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


#: a substrate whose largest concentration over run 0 stays below this fraction of the median
#: metabolite's largest one is depleted: every reaction consuming it carries (almost) no flux
DEPLETED_FRAC = 1e-3


def system_identifiability(data: TrainingData, truth: dict, rank_90: int) -> dict:
    """Data properties of the system (issue 15): reactions that share their substrate set with
    another (only sums of their rates are identifiable), inactive reactions (a depleted substrate:
    no flux, nothing to learn from), and whether the system is degenerate (half the reactions
    inactive, or activity rank (90 %) <= 2)."""
    shared = shared_substrate_reactions(data, truth)
    cmax = data.conc.detach().cpu().double().max(0).values  # (n_met,)
    depleted = cmax < DEPLETED_FRAC * float(torch.quantile(cmax, 0.5))
    inactive = np.zeros(data.n_rxn, dtype=bool)
    dep = depleted.numpy()
    for mi, ri in zip(data.met_sub.cpu().tolist(), data.rxn_sub.cpu().tolist()):
        if dep[mi]:
            inactive[ri] = True
    reasons = []
    if inactive.sum() >= 0.5 * data.n_rxn:
        reasons.append(f"{int(inactive.sum())} of {data.n_rxn} reactions inactive")
    if rank_90 <= 2:
        reasons.append(f"activity rank (90% var) {rank_90}")
    return {"n_shared_substrate_reactions": int(shared.sum()), "n_inactive_reactions": int(inactive.sum()),
            "system_degenerate": int(bool(reasons)), "degenerate_reason": "; ".join(reasons)}


# ----- homeostasis -----

def line_fits(c: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope and offset of each row of y (n, G) against c: (G,) shared, or (n, G) per row."""
    c = np.broadcast_to(c, y.shape)
    cm = c - c.mean(1, keepdims=True)
    slope = ((y - y.mean(1, keepdims=True)) * cm).sum(1) / np.maximum((cm ** 2).sum(1), 1e-300)
    offset = y.mean(1) - slope * c.mean(1)
    return slope, offset


def _hungarian_acc(labels: np.ndarray, types: np.ndarray, n_types: int) -> float:
    from scipy.optimize import linear_sum_assignment

    uniq = np.unique(labels)
    cont = np.zeros((len(uniq), n_types))
    for i, lab in enumerate(uniq):
        cont[i] = np.bincount(types[labels == lab], minlength=n_types)
    rows, cols = linear_sum_assignment(-cont)
    return float(cont[rows, cols].sum() / len(types))


def cluster_metrics(emb: np.ndarray, types: np.ndarray, eps: float, min_samples: int,
                    n_chance: int = 200) -> tuple[dict[str, float], np.ndarray]:
    """DBSCAN on the embeddings (noise = its own cluster), Hungarian matching to the types; chance =
    the mean accuracy of the same cluster sizes assigned at random (n_chance seeded permutations)."""
    from sklearn.cluster import DBSCAN
    from sklearn.metrics import silhouette_score

    labels = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(emb)
    n_types = int(types.max()) + 1
    acc = _hungarian_acc(labels, types, n_types)
    rng = np.random.default_rng(0)
    chance = float(np.mean([_hungarian_acc(rng.permutation(labels), types, n_types) for _ in range(n_chance)]))
    uniq = np.unique(labels)
    sil = float(silhouette_score(emb, labels)) if 2 <= len(uniq) <= len(emb) - 1 else 0.0
    return {"embedding_cluster_acc": acc, "embedding_cluster_acc_chance": chance,
            "embedding_n_clusters": float(int((uniq >= 0).sum())), "embedding_silhouette": sil}, labels


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


def _mean_tail(loss) -> float:
    ls = _np(loss)
    return float(ls[-max(1, len(ls) // 10):].mean()) if len(ls) else float("nan")


def compute_metrics(learned: Learned, truth: dict, data: TrainingData, heldout_conc: torch.Tensor | None,
                    gm: GraphModelConfig, hist: dict | None = None, timing: dict | None = None) -> EvalResult:
    """All metrics that apply to `learned` (see module doc). `data` is run 0 (TrainingData),
    `heldout_conc` run 1's concentrations (n_frames, n_met) for test_R2."""
    hist, timing = hist or {}, timing or {}
    m: dict[str, float] = {}
    notes: list[str] = []
    pd: dict = {}
    conc0 = data.conc.detach().cpu()
    c_grid = query_grid(conc0, gm.eval_grid)
    c_lo, c_hi = float(c_grid[0]), float(c_grid[-1])
    grid_txt = f"c on the 1-99 % quantiles of run 0, [{c_lo:.3g}, {c_hi:.3g}] (max {float(conc0.max()):.3g})"
    last = hist.get("phase2") or hist.get("phase1")
    if last is not None and len(last["loss"]):
        m["final_loss"] = _mean_tail(last["loss"])
    pd["hist"] = {k: {"loss": _np(v["loss"]), "regul": None if v.get("regul") is None else _np(v["regul"])}
                  for k, v in hist.items()}

    if learned.s_all is not None:
        s_l, s_t = _np(learned.s_all), _np(truth["s_all"])
        sm, sn = stoichiometry_metrics(s_l, s_t, _np(data.rxn_all).astype(int), _np(data.sub_to_all).astype(int), data.n_rxn,
                                       _np(truth["log_k"]))
        m.update(sm)
        notes += sn
        pd["S"] = (s_t, s_l, sm["stoichiometry_skill"], sm["stoichiometry_R2_sign_baseline"])

    alpha = learned.alpha
    if learned.f_sub_grid is not None:
        present = sorted({float(v) for v in truth["s_sub"].unique()})
        rows = [i for i, s in enumerate(S_VALUES) if s in present]
        f = _np(learned.f_sub_grid)[rows]
        target = np.stack([_np(c_grid) ** S_VALUES[i] for i in rows])
        m["MLP_sub_R2"] = r2_identity(target.ravel(), f.ravel())
        if alpha is not None:
            m["MLP_sub_R2_normalized"] = r2_identity(target.ravel(), (f / max(alpha, 1e-30)).ravel())
        notes.append(f"MLP_sub_R2 compares f(c, s) with c^s for s in {{{', '.join(f'{S_VALUES[i]:g}' for i in rows)}}} "
                     f"(the |s| present in the support), {grid_txt}; _normalized divides f by alpha = f(1,1)")
        pd["MLP_sub"] = (_np(c_grid), [S_VALUES[i] for i in rows], f)

    if learned.log_k is not None and alpha is not None:
        rk, corr = rate_constant_metrics(_np(learned.log_k), _np(truth["log_k"]), _np(truth["n_sub"]), alpha)
        m.update(rk)
        notes.append("rate constants: log k_j + n_sub(j) * log10 f(1,1) against the true log10 k; outliers |error| > 0.3")
        notes.append("rate_constants_R2_shifted (mean offset removed using the truth) and rate_constants_R2_trimmed "
                     "(outliers chosen by their error against the truth dropped) are diagnostics, never the score")
        shared = shared_substrate_reactions(data, truth)
        if shared.any():
            tk = _np(truth["log_k"])
            m["rate_constants_n_shared_substrates"] = float(shared.sum())
            m["rate_constants_R2_identifiable"] = r2_identity(tk[~shared], corr[~shared])
            notes.append(f"{int(shared.sum())} reactions share their substrate set with another reaction: their rates "
                         "differ only by k, so only the sum (same S column) or difference (opposite S) of their k is "
                         "identifiable; rate_constants_R2_identifiable leaves them out")
        pd["log_k"] = (_np(truth["log_k"]), corr, True, shared)
    elif learned.log_k is not None:
        pd["log_k_raw"] = (_np(truth["log_k"]), _np(learned.log_k))

    homeo = bool(truth.get("homeostasis"))
    types = _np(truth["types"]).astype(int)
    if learned.node_grid is not None and learned.embeddings is not None:
        if learned.node_own_grid is None:
            raise ValueError("Learned.node_own_grid is required with node_grid: MLP_node's slopes are fitted on "
                             "each metabolite's own range (data.own_range_grid)")
        emb = _np(learned.embeddings)
        y = _np(learned.node_grid)
        cg = _np(c_grid)
        own_c = _np(own_range_grid(conc0, gm.eval_grid))
        own_y = _np(learned.node_own_grid)
        slope, offset = line_fits(own_c, own_y)
        slope_pooled, _ = line_fits(cg, y)
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
                m[f"MLP_node_slope_ratio_{tp}_pooled_grid"] = float(slope_pooled[sel].mean()) / gs
                ratios.append(m[f"MLP_node_slope_ratio_{tp}"])
        if ratios:
            m["avg_slope_ratio"] = float(np.mean(ratios))
        if homeo:
            true_lines = -lam[types][:, None] * (cg[None, :] - base[types][:, None])
            m["MLP_node_function_R2"] = r2_identity(true_lines.ravel(), y.ravel())
            notes.append("MLP_node_function_R2: identity R² of every metabolite's learned MLP_node curve against its "
                         "true line -lambda_t (c - b_t), pooled over metabolites and the grid (a flat or spiky curve "
                         "cannot score by a lucky slope)")
        notes.append("MLP_node lines fitted per metabolite over its own range (the 1-99 % quantiles of its run-0 "
                     f"concentrations; median top {float(np.median(own_c[:, -1])):.3g}), averaged per type"
                     + (f"; MLP_node_slope_ratio_t_pooled_grid: the same lines over the pooled grid {grid_txt} (a "
                        "diagnostic: for most metabolites its upper part is extrapolation, where no data of theirs "
                        "constrains MLP_node)" if homeo else "; no homeostasis in this dataset, so no ratios"))
        pd["MLP_node"] = (cg, y, types, lam if homeo else None, base if homeo else None, own_c, own_y)
        if homeo:
            cm, labels = cluster_metrics(emb, types, gm.dbscan_eps, gm.dbscan_min_samples)
            m.update(cm)
            notes.append(f"embedding clusters: DBSCAN eps={gm.dbscan_eps:g} min_samples={gm.dbscan_min_samples}, "
                         "noise as its own cluster, Hungarian matching to the true types; "
                         f"embedding_cluster_acc_chance = {cm['embedding_cluster_acc_chance']:.3f} (the same cluster sizes "
                         "assigned at random)" + ("; silhouette 0 when fewer than 2 labels" if len(np.unique(labels)) < 2 else ""))
        pd["embedding"] = (emb, types, homeo)

    if "phase2" in hist:
        m["phase2_loss"] = _mean_tail(hist["phase2"]["loss"])
        if learned.node_on_frames is not None:
            m["phase2_node_magnitude"] = float(np.abs(_np(learned.node_on_frames)).mean())

    if learned.rollout is not None and heldout_conc is not None:
        pred1 = _np(learned.rollout)
        if pred1.ndim == 3:
            # run 1 restarts from a fresh state every `seg` frames: one rollout per segment from its first frame.
            # Each segment is measured from its own start (displacement c_t - c_start), so the restarts, which
            # the rollout is given, earn nothing; per metabolite, the segments are then pooled (a single short
            # segment of a slow metabolite has almost no variance, and its R² would be noise)
            n_seg, seg = pred1.shape[:2]
            true1 = _np(heldout_conc[:n_seg * seg]).reshape(n_seg, seg, -1)
            disp_t, disp_p = true1 - true1[:, :1], pred1 - true1[:, :1]
            m["test_R2"], m["test_pearson"] = series_scores(disp_t.reshape(n_seg * seg, -1), disp_p.reshape(n_seg * seg, -1))
            how = (f"free rollouts of the first {n_seg} trajectory segments of run 1 ({seg} frames each, from each "
                   "segment's first frame); per metabolite, R² / Pearson of the displacement from the segment's start, "
                   "pooled over the segments, then the mean over metabolites")
            true1, pred1 = true1.reshape(n_seg * seg, -1), pred1.reshape(n_seg * seg, -1)
        else:
            n = pred1.shape[0]
            true1 = _np(heldout_conc[:n])
            m["test_R2"], m["test_pearson"] = series_scores(true1, pred1)
            how = f"free rollout of {n} frames from run 1 frame 0, per-metabolite means"
            n_short = min(n, TEST_SHORT_FRAMES)
            m["test_R2_short"], m["test_pearson_short"] = series_scores(true1[:n_short], pred1[:n_short])
            notes.append(f"test_R2_short / test_pearson_short: the same rollout's first {n_short} frames (the dynamics are chaotic: over "
                         "2000 frames even a near-exact law decorrelates)")
        if not math.isfinite(m["test_R2"]):
            notes.append("test rollout diverged (non-finite); test_R2 and test_pearson are nan")
        notes.append(f"test_R2 / test_pearson: {how}")
        pd["rollout"] = (true1, pred1, data.delta_t)

    m.update({k: float(v) for k, v in timing.items() if k in ("training_time_min", "steps_per_second")})
    r90, r99 = activity_rank(conc0)
    m["activity_rank_90"], m["activity_rank_99"] = float(r90), float(r99)
    if "limited_fraction" in truth:
        # reaction-frames where one Euler step would consume more substrate than exists (SCIENCE.md A2)
        m["limited_fraction"] = float(truth["limited_fraction"])
    ident = system_identifiability(data, truth, r90)
    m.update({k: float(v) for k, v in ident.items() if k != "degenerate_reason"})
    if ident["system_degenerate"]:
        notes.append(f"degenerate system ({ident['degenerate_reason']}): S and k are poorly identifiable from this "
                     "seed; a low score here measures the seed, not the recipe")
    if truth.get("generator") == "mass_action" and not 40 <= r99 <= 60:
        notes.append(f"activity rank (99% variance) of run 0 is {r99}; SCIENCE.md expects a rank near 50 for mass action")
    return EvalResult(metrics=m, notes=notes, plot_data=pd)


# ----- the entry: predictions file -> metrics -----

def required_predictions(cfg: Config, data: TrainingData, checkpoint_state: dict | None) -> dict:
    """name -> expected shape (None: present, checked elsewhere) of the predictions this config must write."""
    gm, t = cfg.graph_model, cfg.training
    G = gm.eval_grid
    req: dict = {"log_k": (data.n_rxn,), "rollout": None, "training_time_min": None, "steps_per_second": None}
    if not t.freeze_stoichiometry:
        req["s_all"] = (len(data.met_all),)
    if gm.model == "kinetics":
        req["f_sub_grid"] = (len(S_VALUES), G)
        req["f_sub_11"] = ()
        if gm.use_mlp_node:
            req["node_grid"] = (data.n_met, G)
            req["node_own_grid"] = (data.n_met, G)
            req["embeddings"] = (data.n_met, gm.embedding_dim)
            req["node_on_frames"] = (len(node_frame_idx(data.n_frames)), data.n_met)
    if not t.skip_phase1:
        req["loss.phase1"] = (None,)
    if t.homeostasis_training:
        req["loss.phase2"] = (None,)
    for k, v in (checkpoint_state or {}).items():
        if k.startswith(FROZEN_PREFIXES):
            req[f"param.{k}"] = tuple(v.shape)
    return req


def learned_from_predictions(p: dict) -> Learned:
    def get(name):
        v = p.get(name)
        return v if isinstance(v, torch.Tensor) else None
    alpha = get("f_sub_11")
    return Learned(log_k=get("log_k"), s_all=get("s_all"), f_sub_grid=get("f_sub_grid"),
                   alpha=None if alpha is None else float(alpha), node_grid=get("node_grid"), node_own_grid=get("node_own_grid"),
                   embeddings=get("embeddings"), node_on_frames=get("node_on_frames"), rollout=get("rollout"))


def frozen_changes(checkpoint_state: dict, predicted: dict, model_state: dict) -> list[str]:
    """Names of the frozen parameters (log_k, S, MLP_sub) that differ, bit for bit, from the phase-1
    checkpoint in the predictions or in model.pt."""
    changed = []
    for k, ref in checkpoint_state.items():
        if not k.startswith(FROZEN_PREFIXES):
            continue
        for where, got in (("predictions", predicted.get(f"param.{k}")), ("model.pt", model_state.get(k))):
            if not (isinstance(got, torch.Tensor) and got.dtype == ref.dtype and got.shape == ref.shape
                    and torch.equal(got, ref)):
                changed.append(f"{k} ({where})")
    return changed


def evaluate(cfg: Config, out: Path, plots_on: bool = True, root: Path | None = None) -> EvalResult:
    """Metrics of the training whose predictions are in `out`, against the cached truth and run 1."""
    t = cfg.training
    d = dataset_dir(cfg.simulation, root)
    if not all((d / f).is_file() for f in ("inputs.pt", "heldout.pt", "truth.pt")):
        raise runtime.EntryError("inputs", f"inputs: dataset {d.name} is not in the cache {d.parent} "
                                           "(the stage step generates it; is GNN_AGENT_CACHE the same?)")
    data, truth_path = load_or_generate(cfg.simulation, root=root)
    heldout = load_heldout(cfg.simulation, root)["conc"]
    truth = load_truth(truth_path)
    ck_state = None
    if t.skip_phase1:
        ck_state = read_checkpoint(phase1_checkpoint_path(cfg))["state_dict"]
    preds = runtime.load_predictions(out / runtime.PREDICTIONS_FILE, required_predictions(cfg, data, ck_state))
    roll = preds["rollout"]
    want = rollout_shape(cfg.graph_model.test_rollout_frames, data.n_frames, data.segment_frames, data.n_met)
    if not isinstance(roll, torch.Tensor) or tuple(roll.shape) != want:
        shape = tuple(roll.shape) if isinstance(roll, torch.Tensor) else type(roll).__name__
        raise runtime.EntryError("predictions", f"predictions: rollout has shape {shape}, expected {want}")
    hist = {}
    for name in ("phase1", "phase2"):
        if f"loss.{name}" in preds:
            hist[name] = {"loss": preds[f"loss.{name}"], "regul": preds.get(f"regul.{name}")}
    timing = {}
    for k in ("training_time_min", "steps_per_second"):
        v = preds[k]
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = float(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise runtime.EntryError("predictions", f"predictions: {k} must be a number, not {type(v).__name__}")
        timing[k] = float(v)
    result = compute_metrics(learned_from_predictions(preds), truth, data, heldout, cfg.graph_model, hist, timing)
    if ck_state is not None:
        try:
            model_state = torch.load(out / runtime.MODEL_FILE, map_location="cpu", weights_only=True)["state_dict"]
        except Exception as e:  # noqa: BLE001 - missing or not a plain state dict: the training's fault
            raise runtime.EntryError("predictions", f"predictions: {runtime.MODEL_FILE} cannot be read safely "
                                                    f"({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})")
        changed = frozen_changes(ck_state, preds, model_state)
        result.metrics["frozen_params_changed"] = float(bool(changed))
        result.notes.append("frozen_params_changed: log_k, S and MLP_sub compared bit for bit with the phase-1 checkpoint"
                            + (f"; CHANGED: {', '.join(changed[:6])}{' ...' if len(changed) > 6 else ''} "
                               "(classification failed, score 0)" if changed else "; unchanged"))
    if plots_on:
        from regimes.metabolism import plots  # matplotlib only when plotting

        plots.write_plots(out / "plots", result)
    write_outputs(out, result)
    return result


def _fmt(v: float) -> str:
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e9:
        return str(int(v))
    return f"{v:.6g}"


def write_outputs(out: Path, result: EvalResult) -> None:
    """metrics.json (flat name -> number; NaN where undefined) and analysis.log (`name: value` lines, notes as # comments)."""
    keys = [k for k in ORDER if k in result.metrics] + sorted(k for k in result.metrics if k not in ORDER)
    lines = [f"{k}: {_fmt(result.metrics[k])}" for k in keys] + [f"# {n}" for n in result.notes]
    runtime.write_metrics(out, {k: result.metrics[k] for k in keys}, lines)


def _main(args) -> int:
    try:
        cfg = load_config(args.config)
        result = evaluate(cfg, Path(args.out), plots_on=not args.no_plots)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    m = result.metrics
    print(" ".join(f"{k}={m[k]:.4g}" for k in ("final_loss", "stoichiometry_skill", "rate_constants_R2",
                                               "avg_slope_ratio", "MLP_node_function_R2", "test_R2") if k in m))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = runtime.eval_arg_parser("python -m regimes.metabolism.evaluate", __doc__.split("\n\n")[0])
    args = ap.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    return runtime.run_entry(_main, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
