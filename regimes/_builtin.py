"""Pieces shared by the five built-in regime plugins (not part of the contract).

Keeps the plugin modules to their declarations: metric specs named as the
science packages write them (SCIENCE.md A6 / B4), the config-file lookup of
the two science packages, and the ground-truth identifiers the guard rejects.
"""

from __future__ import annotations

from pathlib import Path

from regimes.base import DEFAULT_IMPORT_ALLOWLIST, MetricSpec, ParamSpec, Regime, load_yaml_config

ROOT = Path(__file__).resolve().parent          # regimes/
PROMPTS = ROOT.parent / "prompts" / "regimes"   # prompts/regimes/<name>.md
METABOLISM_DIR = ROOT / "metabolism"
SIGNAL_DIR = ROOT / "signal"

#: What edited training code may import: the default allow-list (torch, numpy,
#: math, ..., the science package itself through `regimes`).
IMPORT_ALLOWLIST = list(DEFAULT_IMPORT_ALLOWLIST)

#: Names and fragments of ground truth in the metabolism package: the truth
#: file (truth.pt, load_truth), its keys (types, lambda, baseline, log_k of the
#: generator), the held-out run's file (heldout.pt, never staged) and the seed's
#: names for type labels. The guard rejects new code that mentions any of them.
METABOLISM_TRUTH = ["truth", "oracle", "metabolite_type", "types", "lambda", "baseline",
                    "true_S", "true_k", "true_log_k", "gt_slope", "gt_offset", "heldout"]
#: The signal package's truth file (truth.pt: true W, gain, generator parameters).
SIGNAL_TRUTH = ["truth", "oracle", "true_W", "neuron_type"]

SEED_RANGE = (0, 2**31 - 1)


def seed_param() -> ParamSpec:
    return ParamSpec(key="training.seed", type="int", low=SEED_RANGE[0], high=SEED_RANGE[1],
                     description="seeds model init and batch sampling only (the system is simulation.seed)")


def system_seed_param(what: str) -> ParamSpec:
    """simulation.seed, the one simulation key the seed documents let change: a new value
    simulates another system (another `what`) with the same frozen simulation parameters."""
    return ParamSpec(key="simulation.seed", type="int", low=SEED_RANGE[0], high=SEED_RANGE[1],
                     description=f"selects the simulated system: a new value generates a DIFFERENT {what} with the "
                                 "same frozen simulation parameters (data generated once per seed and cached); use "
                                 "it to test a recipe's robustness across systems")


#: data properties of a signal system (not of the training): shown next to its scores
SIGNAL_IDENTIFIABILITY = ["effective_rank_90", "effective_rank_99", "n_saturated_neurons", "spectral_radius",
                          "connectivity_R2_ceiling", "system_degenerate"]
#: data properties of a metabolic system
METABOLISM_IDENTIFIABILITY = ["activity_rank_90", "activity_rank_99", "n_inactive_reactions",
                              "n_shared_substrate_reactions", "system_degenerate"]


def lr(key: str, low: float, high: float, what: str) -> ParamSpec:
    return ParamSpec(key=f"training.{key}", type="float", low=low, high=high, log=True, description=what)


def coeff(key: str, low: float, high: float, what: str, log: bool = False) -> ParamSpec:
    return ParamSpec(key=f"training.{key}", type="float", low=low, high=high, log=log, description=what)


def integer(key: str, low: int, high: int, what: str) -> ParamSpec:
    return ParamSpec(key=f"training.{key}", type="int", low=low, high=high, description=what)


def choice(key: str, values: list, what: str) -> ParamSpec:
    return ParamSpec(key=f"training.{key}", type="choice", choices=values, description=what)


def boolean(key: str, what: str) -> ParamSpec:
    return ParamSpec(key=f"training.{key}", type="bool", description=what)


def metric(name: str, description: str, good: str = "", higher: bool | None = True) -> MetricSpec:
    return MetricSpec(name=name, description=description, good=good, higher_is_better=higher)


LOSS_AND_DYNAMICS = [
    metric("final_loss", "mean prediction loss over the last 10% of steps (MSE of the derivative / ynorm)",
           "lower is better", False),
    metric("test_R2", "R2 of a free rollout of the learned model against held-out run 1", "> 0.9"),
    metric("test_pearson", "Pearson correlation of that rollout with run 1", "> 0.95"),
]

METABOLISM_COMMON = LOSS_AND_DYNAMICS + [
    metric("training_time_min", "wall-clock training time in minutes", "", None),
    metric("steps_per_second", "gradient steps per second", "", None),
    metric("activity_rank_99", "components for 99% of the concentration variance (SVD)", "", None),
    metric("n_shared_substrate_reactions", "reactions whose substrate set equals another's: only sums of their "
           "rates are identifiable (data property)", "", None),
    metric("n_inactive_reactions", "reactions with a depleted substrate (no flux in run 0: nothing to learn; "
           "data property)", "", None),
    metric("system_degenerate", "1 when half the reactions are inactive or the activity rank (90%) is <= 2: "
           "S and k are poorly identifiable from this seed (data property)", "0", None),
]

SIGNAL_METRICS = [
    metric("connectivity_R2", "R2 of learned vs true W (off-diagonal) against the identity line, after the "
           "per-presynaptic gauge correction W_ij*beta_j/g; sign-aware: -W scores about -3, a random or "
           "untrained W about 0 (the score)", "> 0.9"),
    metric("connectivity_R2_fit", "fit R2 (best line) of the gauge-corrected W vs the true W: comparable to "
           "published figures, blind to sign and scale (-W scores 1.0 here)", "> 0.9"),
    metric("connectivity_R2_raw", "fit R2 of learned vs true W without gauge correction", "> 0.9"),
    metric("connectivity_slope", "slope of the learned-vs-true W fit (1 = right scale, -1 = negated)", "~1", None),
    metric("support_auroc", "how well |W| separates true non-zeros from zeros (AUROC; sign-blind diagnostic)",
           "> 0.9"),
    metric("connectivity_R2_unsaturated", "connectivity_R2 (identity) over presynaptic neurons that are not "
           "saturated (a saturated neuron sends a near-constant tanh(u_j): its column of W is not identifiable)",
           "> 0.9"),
    metric("n_saturated_neurons", "neurons whose tanh(u) barely varies (data property: caps connectivity_R2)",
           "", None),
    *LOSS_AND_DYNAMICS,
    metric("kinograph_R2", "mean per-frame R2 between true and rollout kinographs", "> 0.9"),
    metric("kinograph_SSIM", "structural similarity of the kinographs", "> 0.9"),
    metric("kinograph_Wasserstein", "population-mode Wasserstein distance / std (0 = identical, 1 = one-sigma shift)",
           "< 0.1", False),
    metric("cluster_accuracy", "neuron-type clustering accuracy (1.0 by construction with one type)", "1.0"),
    metric("spectral_radius", "spectral radius of the true W (data property)", "", None),
    metric("effective_rank_90", "activity effective rank, 90% variance (data property)", "", None),
    metric("effective_rank_99", "activity effective rank, 99% variance (data property)", "", None),
    metric("connectivity_R2_ceiling", "best connectivity_R2 this seed's data allow: an oracle that knows W except "
           "the saturated neurons' columns, of which only the row sums are identifiable (data property)", "", None),
    metric("system_degenerate", "1 when more than 10% of the neurons are saturated (connectivity_R2 ceiling below "
           "~0.9) or effective rank (99%) <= 7: W is poorly identifiable from this seed (data property)", "0", None),
]


def load_package_config(regime: Regime, stem: str, profile: str) -> dict:
    """Load ``<package_dir>/configs/<stem>_<profile>.yaml`` (profile quick or full)."""
    if profile not in ("quick", "full"):
        raise ValueError(f"regime {regime.name}: unknown profile {profile!r}; valid: quick, full")
    path = Path(regime.package_dir) / "configs" / f"{stem}_{profile}.yaml"
    return load_yaml_config(path, what=f"regime {regime.name} default config ({profile})")


def instructions(name: str) -> Path:
    return PROMPTS / f"{name}.md"
