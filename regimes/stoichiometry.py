"""Regime `stoichiometry`: recover the stoichiometric matrix S (seeds 002 / 000).

Variants: `tied` (default; substrate magnitude read from sto_all, k in
[0.001, 0.1]) and `untied` (separate sto_sub, k in [0.01, 10]). Mutable keys and
ranges follow the seed's "Training Parameters" block; simulation and model are
frozen; the policy may edit `train_phase1` and the model module.
"""

from __future__ import annotations

from regimes import _builtin as B
from regimes.base import EditableFile, Profile, Regime

TRAIN = "regimes/metabolism/train.py"
MODEL = "regimes/metabolism/model.py"


class StoichiometryRegime(Regime):
    """S recovery on the `random` network with the `mlp_rates` generator."""

    def default_config(self, variant: str | None = None, profile: Profile = "quick") -> dict:
        """regimes/metabolism/configs/stoichiometry_{tied,untied}_{quick,full}.yaml."""
        v = self.resolve_variant(variant)
        return B.load_package_config(self, f"stoichiometry_{v}", profile)


REGIME = StoichiometryRegime(
    name="stoichiometry",
    title="Metabolism: stoichiometry recovery",
    description=("Learn the signed stoichiometric coefficients S (100 metabolites x 256 reactions, entries in "
                 "{-2,-1,0,1,2}) together with rate constants and msg/rate MLPs from concentration dynamics. "
                 "Primary: stoichiometry_R2; converged > 0.9."),
    variants=["tied", "untied"],
    default_variant="tied",
    package="regimes.metabolism",
    package_dir=B.METABOLISM_DIR,
    train_entry="regimes.metabolism.train",
    mutable=[
        B.lr("learning_rate_start", 1e-5, 1e-2, "lr of msg_mlp, rate_mlp and log_k"),
        B.lr("learning_rate_S_start", 1e-5, 1e-2, "lr of sto_all (and sto_sub); 0 means the same as lr"),
        B.coeff("coeff_S_L1", 0.0, 1e-1, "L1 on sto_all (sparsity)"),
        B.coeff("coeff_S_L2", 0.0, 1e-1, "L2 on sto_all"),
        B.coeff("coeff_S_integer", 0.0, 1.0, "mean sin^2(pi*sto_all): pulls coefficients to integers"),
        B.coeff("coeff_mass_conservation", 0.0, 1.0, "penalise non-zero column sums of S (mass balance)"),
        B.choice("batch_size", [4, 8, 16, 32], "frames per gradient step"),
        B.integer("n_epochs", 1, 50, "epochs (seed range 5-50 at full scale; quick profiles use fewer)"),
        B.integer("data_augmentation_loop", 10, 2000, "iterations-per-epoch multiplier (seed range 100-2000)"),
        B.integer("n_epochs_init", 0, 50, "epochs of the first phase (first_coeff_L1 instead of coeff_S_L1)"),
        B.coeff("first_coeff_L1", 0.0, 1e-1, "L1 during the first n_epochs_init epochs (typically 0)"),
        B.seed_param(),
    ],
    frozen=["simulation.*", "graph_model.*", "training.*",
            "training.freeze_stoichiometry", "training.homeostasis_training", "training.skip_phase1"],
    metrics=[
        B.metric("stoichiometry_R2", "fit R2 of learned vs true S on the edges of the support", "> 0.9"),
        B.metric("stoichiometry_sign_acc", "sign agreement of learned and true S on the support", "> 0.95"),
        B.metric("stoichiometry_R2_rounded", "stoichiometry_R2 after rounding to the nearest integer", "> 0.9"),
        *B.METABOLISM_COMMON,
    ],
    primary_metric="stoichiometry_R2",
    log_metrics=["stoichiometry_R2", "test_R2", "test_pearson", "final_loss"],
    log_config={"seed": "training.seed", "lr": "training.learning_rate_start", "lr_S": "training.learning_rate_S_start",
                "coeff_S_L1": "training.coeff_S_L1", "coeff_S_L2": "training.coeff_S_L2",
                "coeff_S_integer": "training.coeff_S_integer", "coeff_mass": "training.coeff_mass_conservation",
                "batch_size": "training.batch_size", "n_epochs": "training.n_epochs",
                "data_augmentation_loop": "training.data_augmentation_loop"},
    editable=[EditableFile(path=TRAIN, functions=["train_phase1"]), EditableFile(path=MODEL)],
    code_edit_when="after_warmup",
    code_warmup_iters=4,
    plots=["plots/*stoichiometry*.png", "plots/*S_*.png", "plots/*rate_constants*.png", "plots/*loss*.png",
           "plots/*rollout*.png", "plots/*.png"],
    instructions=B.instructions("stoichiometry"),
    strategies=["exploit", "failure-probe", "explore", "degeneracy-break", "forced-branch", "switch-dimension",
                "recombine", "code-modification"],
    import_allowlist=B.IMPORT_ALLOWLIST,
    # given_S.pt is the true S handed to the rate-constant regimes: reading it here would leak the answer
    truth_identifiers=B.METABOLISM_TRUTH + ["given_S", "given_stoichiometry"],
)
