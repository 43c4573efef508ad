"""Regime `stoichiometry`: recover the stoichiometric matrix S (seeds 002 / 000).

Variants: `tied` (default; substrate magnitude read from sto_all, k in
[0.001, 0.1]) and `untied` (separate sto_sub, k in [0.01, 10]). Mutable keys and
ranges follow the seed's "Training Parameters" block; simulation and model are
frozen; the policy may edit `train_phase1` and the model module.
"""

from __future__ import annotations

import math

from regimes import _builtin as B
from regimes.base import Classification, CodeStrategy, EditableFile, Profile, Regime

TRAIN = "regimes/metabolism/train.py"
MODEL = "regimes/metabolism/model.py"


_STEP = """            loss = pred_loss + regul
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
"""
_PRED = "                pred_loss = ((model(c) - deriv0[idx]) ** 2).mean() / ynorm2\n"
_REGUL = "            regul = phase1_regularisers(model, t, c, coeff_L1, k_center, s_prior, sub_inputs, f_sub_rows)\n"


def _cs(name: str, file: str, old: str, new: str, hypothesis: str, description: str) -> CodeStrategy:
    return CodeStrategy(name=name, file=file, old=old, new=new, hypothesis=hypothesis, description=description)


#: the seed's "priority code changes" for S recovery, as exact edits of the committed science files
CODE_STRATEGIES = [
    _cs("S-init-scale", MODEL,
        "            self.sto_all = nn.Parameter(all0 + torch.randn(e_all) * gm.init_S_std)\n",
        "            self.sto_all = nn.Parameter(1.5 * all0 + torch.randn(e_all) * gm.init_S_std)  # |S| ~ 1.5 at start\n",
        "the true coefficients are 1 or 2 in magnitude (mean about 1.4) while the sign start has |S| = 1 "
        "everywhere; starting at 1.5 halves the largest initial error, so S should need to move less and the MLPs "
        "absorb less of the mismatch",
        "priority 1: stoichiometry initialisation scale"),
    _cs("proximal-L1-S", TRAIN, _STEP,
        _STEP + "            if learned_S and coeff_L1:  # proximal L1: soft-threshold sto_all (exact zeros)\n"
                "                with torch.no_grad():\n"
                "                    thr = opt.param_groups[0][\"lr\"] * coeff_L1  # group 0 holds S\n"
                "                    model.sto_all.copy_(torch.sign(model.sto_all) * "
                "torch.clamp(model.sto_all.abs() - thr, min=0.0))\n",
        "soft-thresholding after each step zeroes coefficients exactly, which the gradient L1 under Adam does not; "
        "wrong entries of the support should vanish and the sparsity pattern improve",
        "priority 2: L1 by soft-thresholding on sto_all"),
    _cs("integer-rounding-loss", TRAIN, _REGUL,
        _REGUL + "            if learned_S and epoch >= t.n_epochs_init:  # rounding loss: pull S to the nearest integer\n"
                 "                regul = regul + 0.1 * (model.sto_all - torch.round(model.sto_all)).pow(2).mean()\n",
        "once the structure phase is over, a penalty on the distance to the nearest integer should snap S onto "
        "{-2,-1,0,1,2} and break the continuous scale ambiguity between S and the rates",
        "priority 3: integer rounding loss ((sto_all - round(sto_all))^2)"),
    _cs("mlp-capacity-half", MODEL,
        "        self.msg_mlp = mlp([2, gm.hidden_dim, gm.msg_dim])\n"
        "        self.rate_mlp = mlp([gm.msg_dim, gm.hidden_dim, 1])\n",
        "        # smaller MLPs: S has to carry more of the signal\n"
        "        self.msg_mlp = mlp([2, max(1, gm.hidden_dim // 2), gm.msg_dim])\n"
        "        self.rate_mlp = mlp([gm.msg_dim, max(1, gm.hidden_dim // 2), 1])\n",
        "msg_mlp and rate_mlp with half the hidden width can compensate less for a wrong S, which should shrink the "
        "degeneracy gap",
        "priority 5: MLP capacity reduction (hidden 64 -> 32)"),
    _cs("grad-clip-S", TRAIN, _STEP,
        _STEP.replace("            opt.step()\n",
                      "            if learned_S:  # tame large stoichiometry updates\n"
                      "                torch.nn.utils.clip_grad_norm_(model.s_param_groups(), max_norm=1.0)\n"
                      "            opt.step()\n"),
        "large gradient steps on the ~1100 coefficients destabilise S; clipping their norm should give a steadier "
        "path to the true coefficients",
        "priority 6: gradient clipping on sto_all"),
    _cs("participation-weighted-loss", TRAIN, _PRED,
        "                # weight each metabolite's error by 1 / (number of reactions it takes part in), mean 1\n"
        "                w_met = 1.0 / torch.bincount(model.met_all, minlength=model.n_met).clamp_min(1).float()\n"
        "                w_met = w_met / w_met.mean()\n"
        "                pred_loss = (((model(c) - deriv0[idx]) ** 2) * w_met).mean() / ynorm2\n",
        "metabolites in many reactions dominate the derivative loss; weighting by inverse participation gives the "
        "coefficients of rarely involved metabolites a fair share of the gradient",
        "priority 8: loss weighting by inverse participation"),
]


class StoichiometryRegime(Regime):
    """S recovery on the `random` network with the `mlp_rates` generator. The score is the primary metric,
    stoichiometry_skill, clipped to [0, 1] (Regime.score): no reward for what the sign-only answer scores."""

    def classify(self, metrics: dict[str, float]) -> Classification:
        """stoichiometry_skill: converged > 0.8, partial 0.1-0.8, failed below (incl. no better than signs)."""
        v = metrics.get("stoichiometry_skill")
        if v is None or not math.isfinite(float(v)):
            return "failed"
        return "converged" if v > 0.8 else "partial" if v >= 0.1 else "failed"

    def default_config(self, variant: str | None = None, profile: Profile = "quick") -> dict:
        """regimes/metabolism/configs/stoichiometry_{tied,untied}_{quick,full}.yaml."""
        v = self.resolve_variant(variant)
        return B.load_package_config(self, f"stoichiometry_{v}", profile)


REGIME = StoichiometryRegime(
    name="stoichiometry",
    title="Metabolism: stoichiometry recovery",
    description=("Learn the signed stoichiometric coefficients S (100 metabolites x 256 reactions, entries in "
                 "{-2,-1,0,1,2}) together with rate constants and msg/rate MLPs from concentration dynamics. "
                 "Primary and score: stoichiometry_skill (R2 over the data-free baselines, scale gauge removed); "
                 "converged > 0.8."),
    variants=["tied", "untied"],
    default_variant="tied",
    package="regimes.metabolism",
    package_dir=B.METABOLISM_DIR,
    train_entry="regimes.metabolism.train",
    mutable=[
        B.lr("learning_rate_start", 1e-5, 1e-2, "lr of msg_mlp, rate_mlp and log_k"),
        B.lr("learning_rate_S_start", 1e-5, 1e-2, "lr of sto_all (and sto_sub); 0 means the same as lr"),
        B.lr("learning_rate_k", 1e-5, 1e-1, "lr of log_k (unset: learning_rate_start)"),
        B.coeff("coeff_S_L1", 0.0, 1e-1, "L1 on sto_all (sparsity)"),
        B.coeff("coeff_S_L2", 0.0, 1e-1, "L2 on sto_all"),
        B.coeff("coeff_S_integer", 0.0, 1.0, "mean sin^2(pi*sto_all): pulls coefficients to integers"),
        B.coeff("coeff_mass_conservation", 0.0, 1.0, "penalise non-zero column sums of S (mass balance)"),
        B.coeff("coeff_S_prior", 0.0, 1.0, "mean_j (1 - cos(column j of S, the balanced data-free column)): a "
                "scale-free shape prior that keeps the columns the data barely see at the data-free answer"),
        B.choice("batch_size", [4, 8, 16, 32], "frames per gradient step"),
        B.integer("n_epochs", 1, 50, "epochs (seed range 5-50 at full scale; quick profiles use fewer)"),
        B.integer("data_augmentation_loop", 10, 2000, "iterations-per-epoch multiplier (seed range 100-2000)"),
        B.integer("n_epochs_init", 0, 50, "epochs of the first phase (first_coeff_L1 instead of coeff_S_L1)"),
        B.coeff("first_coeff_L1", 0.0, 1e-1, "L1 during the first n_epochs_init epochs (typically 0)"),
        B.seed_param(),
        B.system_seed_param("stoichiometric matrix S and different rate constants k_j"),
    ],
    frozen=["simulation.*", "graph_model.*", "training.*",
            "training.freeze_stoichiometry", "training.homeostasis_training", "training.skip_phase1"],
    metrics=[
        B.metric("stoichiometry_skill", "the score: (R2_gauged - R2_gauged_baseline) / (1 - R2_gauged_baseline), "
                 "per-reaction scale gauge removed; 0 = no better than the data-free answers (sign-only, "
                 "mass-balance)", "> 0.8"),
        B.metric("stoichiometry_R2", "fit R2 of learned vs true S on the edges of the support (published figures; "
                 "the sign-only answer already scores ~0.9)", "> the baselines"),
        B.metric("stoichiometry_R2_sign_baseline", "stoichiometry_R2 of the data-free sign-only answer (-1 substrate, "
                 "+1 product edges)", "", None),
        B.metric("stoichiometry_R2_mass_balance_baseline", "stoichiometry_R2 of the data-free mass-balance guess "
                 "(-1 substrate, n_sub/n_prod product edges)", "", None),
        B.metric("stoichiometry_R2_gauged", "identity R2 of learned vs true S after the per-reaction scale gauge "
                 "(column x alpha_j, rate / alpha_j) is removed", "> 0.99"),
        B.metric("stoichiometry_R2_gauged_baseline", "the better stoichiometry_R2_gauged of the two data-free answers",
                 "", None),
        B.metric("stoichiometry_exact_frac", "fraction of support edges exactly right after each learned column is "
                 "decoded (no truth) to the valid integer column nearest in direction: magnitudes 1 or 2, signs "
                 "from the roles, sum 0 (the column scale is a gauge, so plain rounding would score it); between "
                 "valid columns of one direction ((-1, 1) and (-2, 2)) the truth decides, as the gauge leaves them "
                 "the same dynamics", "> 0.95"),
        B.metric("stoichiometry_exact_frac_baseline", "stoichiometry_exact_frac of the better data-free answer "
                 "(decoded the same way)", "", None),
        B.metric("stoichiometry_exact_frac_raw", "fraction of support edges whose plainly rounded learned S equals "
                 "the truth (scores the column scale as well)"),
        B.metric("stoichiometry_exact_frac_raw_baseline", "stoichiometry_exact_frac_raw of the better data-free "
                 "answer", "", None),
        B.metric("stoichiometry_sign_acc", "sign agreement of learned and true S (the sign-only answer scores 1.0)",
                 "1.0"),
        B.metric("stoichiometry_R2_rounded", "stoichiometry_R2 after rounding to the nearest integer", "> 0.9"),
        *[B.metric(f"stoichiometry_skill_{name}", f"stoichiometry_skill on the edges of the {what} third of the "
                   "reactions by true k (a diagnostic: slow columns get little data gradient)")
          for name, what in (("slow", "slowest"), ("mid", "middle"), ("fast", "fastest"))],
        *B.METABOLISM_COMMON,
    ],
    primary_metric="stoichiometry_skill",
    log_metrics=["stoichiometry_skill", "stoichiometry_R2", "stoichiometry_R2_sign_baseline", "stoichiometry_R2_gauged",
                 "stoichiometry_exact_frac", "test_R2", "test_pearson", "final_loss"],
    metric_labels={"stoichiometry_skill": "S_skill", "stoichiometry_R2": "S_R2",
                   "stoichiometry_R2_sign_baseline": "S_R2_sign_base", "stoichiometry_R2_gauged": "S_R2_gauged",
                   "stoichiometry_exact_frac": "S_exact"},
    log_config={"seed": "simulation.seed", "train_seed": "training.seed", "lr": "training.learning_rate_start",
                "lr_S": "training.learning_rate_S_start",
                "coeff_S_L1": "training.coeff_S_L1", "coeff_S_L2": "training.coeff_S_L2",
                "coeff_S_integer": "training.coeff_S_integer", "coeff_mass": "training.coeff_mass_conservation",
                "batch_size": "training.batch_size", "n_epochs": "training.n_epochs",
                "data_augmentation_loop": "training.data_augmentation_loop"},
    editable=[EditableFile(path=TRAIN, functions=["train_phase1"]), EditableFile(path=MODEL)],
    code_edit_when="after_warmup",
    code_warmup_iters=4,
    code_strategies=CODE_STRATEGIES,
    plots=["plots/stoichiometry.png", "plots/rollout.png", "plots/loss.png", "plots/rate_constants.png"],
    instructions=B.instructions("stoichiometry"),
    # seed 000: "use different seeds to test robustness" (a new simulation.seed: another S and k)
    strategies=["exploit", "failure-probe", "explore", "degeneracy-break", "forced-branch", "switch-dimension",
                "recombine", "code-modification", "seed-robustness"],
    identifiability_metrics=list(B.METABOLISM_IDENTIFIABILITY),
    degenerate_metric="system_degenerate",
    import_allowlist=B.IMPORT_ALLOWLIST,
    # given_S.pt is the true S handed to the rate-constant regimes: reading it here would leak the answer
    truth_identifiers=B.METABOLISM_TRUTH + ["given_S", "given_stoichiometry"],
)
