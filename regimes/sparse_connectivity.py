"""Regime `sparse_connectivity`: recover a sparse synaptic matrix W (seed 004).

du_i/dt = -u_i + g * sum_j W_ij tanh(u_j), W Gaussian N(0, 1/n) with half of
its entries zeroed. Variants n100 (default) and n200; the instructions ask
to compare them and keep the understanding of each apart.
"""

from __future__ import annotations

import math

from regimes import _builtin as B
from regimes.base import Classification, CodeStrategy, EditableFile, ParamSpec, Profile, Regime

TRAIN = "regimes/signal/train.py"
MODEL = "regimes/signal/model.py"


def signal_mutable() -> list[ParamSpec]:
    """The seed's exploration space (training keys of SCIENCE.md B3)."""
    return [
        B.lr("learning_rate_W_start", 1e-4, 1e-2, "lr of W"),
        B.lr("learning_rate_start", 1e-5, 1e-3, "lr of lin_edge and lin_phi"),
        B.lr("learning_rate_embedding_start", 1e-5, 1e-2, "lr of the embeddings a"),
        B.coeff("coeff_W_L1", 1e-7, 1e-3, "L1 on W from epoch n_epochs_init on", log=True),
        B.coeff("coeff_edge_diff", 100.0, 50000.0, "monotonicity of lin_edge in u", log=True),
        B.choice("batch_size", [8, 16, 32], "frames per gradient step"),
        B.integer("n_epochs", 1, 50, "epochs (12+ is the seed's long-training test)"),
        B.integer("n_epochs_init", 0, 20, "epochs of phase 1 (first_coeff_L1 instead of coeff_W_L1)"),
        B.coeff("first_coeff_L1", 0.0, 1e-3, "L1 on W during phase 1 (typically 0)"),
        B.boolean("training_single_type", "one neuron type: embeddings frozen at ones"),
        B.integer("data_augmentation_loop", 1, 2000, "iterations-per-epoch multiplier"),
        B.seed_param(),
        B.system_seed_param("connectivity matrix W"),
        B.boolean("recurrent_training", "multi-step rollout training"),
        B.choice("time_step", [1, 4, 16, 32, 64], "rollout depth (1 = single step)"),
        B.coeff("noise_recurrent_level", 0.0, 0.1, "Gaussian noise per rollout step"),
        B.integer("recurrent_training_start_epoch", 0, 50, "epoch at which recurrent training begins"),
        ParamSpec(key="graph_model.lin_edge_mode", type="choice", choices=["mlp", "tanh"],
                  description="lin_edge learned (mlp) or fixed to the true form tanh(u): the seed's "
                              "fixed-model diagnostic"),
    ]


SIGNAL_LOG_CONFIG = {
    "seed": "simulation.seed", "train_seed": "training.seed", "lr_W": "training.learning_rate_W_start", "lr": "training.learning_rate_start",
    "lr_emb": "training.learning_rate_embedding_start", "coeff_W_L1": "training.coeff_W_L1",
    "coeff_edge_diff": "training.coeff_edge_diff", "n_epochs_init": "training.n_epochs_init",
    "first_coeff_L1": "training.first_coeff_L1", "batch_size": "training.batch_size",
    "recurrent": "training.recurrent_training", "time_step": "training.time_step",
}
SIGNAL_LOG_METRICS = ["test_R2", "test_pearson", "connectivity_R2", "connectivity_R2_fit", "cluster_accuracy",
                      "final_loss",
                      "kinograph_R2", "kinograph_SSIM", "kinograph_Wasserstein"]
SIGNAL_METRIC_LABELS = {"kinograph_R2": "kino_R2", "kinograph_SSIM": "kino_SSIM", "kinograph_Wasserstein": "kino_WD"}
SIGNAL_EDITABLE = [EditableFile(path=TRAIN, functions=["train_model"]), EditableFile(path=MODEL)]
SIGNAL_PLOTS = ["plots/*connectivity_scatter*.png", "plots/*connectivity_matrices*.png", "plots/*kinograph*.png",
                "plots/*lin_edge*.png", "plots/*lin_phi*.png", "plots/*loss*.png"]
SIGNAL_STRATEGIES = ["exploit", "failure-probe", "explore", "degeneracy-break", "forced-branch", "switch-dimension",
                     "recombine", "dimension-sweep", "exploit-tighten", "regime-shift", "seed-robustness",
                     "cross-seed-optimize", "universal-recipe-validate", "variance-reduction", "L1-calibration",
                     "code-modification", "code-refine", "code-revert", "code-next-priority",
                     "multi-code-modification", "identifiability-test", "fixed-model-sweep"]



def _cs(name: str, file: str, old: str, new: str, hypothesis: str, description: str = "") -> CodeStrategy:
    return CodeStrategy(name=name, file=file, old=old, new=new, hypothesis=hypothesis, description=description)


_STEP = """            loss, loss_pred = batch_loss(model, u, du, frames[it], cfg, coeff_L1, recurrent, delta, ynorm2, data.delta_t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
"""

#: the seed's "priority code changes", as exact edits of the committed science files
SIGNAL_CODE_STRATEGIES = [
    _cs("W-init-1/sqrt(n)", MODEL,
        "        self.W = nn.Parameter(torch.randn(n_neurons, n_neurons))  # W init: N(0, 1) (SCIENCE.md B2)\n",
        "        self.W = nn.Parameter(torch.randn(n_neurons, n_neurons) / math.sqrt(n_neurons))  # W init: N(0, 1/n)\n",
        "the true W has entries of scale 1/sqrt(n); an N(0, 1) init is sqrt(n) times too large and lets the MLPs "
        "absorb the mismatch, so starting at the true scale should raise connectivity_R2",
        "priority 1: W initialisation scale"),
    _cs("grad-clip-W", TRAIN, _STEP,
        _STEP.replace("            optimizer.step()\n",
                      "            torch.nn.utils.clip_grad_norm_([model.W], max_norm=1.0)  # tame large W updates\n"
                      "            optimizer.step()\n"),
        "large gradients on the n^2 entries of W destabilise training; clipping their norm to 1 gives smoother, "
        "more faithful W updates",
        "priority 2: gradient clipping on W"),
    _cs("cosine-lr", TRAIN,
        "    scheduler = None  # no LR schedule by default; a code strategy may create one here "
        "(it steps after optimizer.step())\n",
        "    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total))  # cosine decay\n",
        "large early updates of W then fine-tuning (cosine annealing of every learning rate) should settle W "
        "closer to the truth than a constant rate",
        "priority 3: learning-rate schedule"),
    _cs("proximal-L1", TRAIN, _STEP,
        "            # proximal L1: the gradient step without L1, then soft-thresholding of W (exact zeros)\n"
        "            loss, loss_pred = batch_loss(model, u, du, frames[it], cfg, 0.0, recurrent, delta, ynorm2, "
        "data.delta_t)\n"
        "            optimizer.zero_grad(set_to_none=True)\n"
        "            loss.backward()\n"
        "            optimizer.step()\n"
        "            if coeff_L1 > 0:\n"
        "                with torch.no_grad():\n"
        "                    thr = optimizer.param_groups[0][\"lr\"] * coeff_L1  # group 0 holds W\n"
        "                    model.W.copy_(torch.sign(model.W) * torch.clamp(model.W.abs() - thr, min=0.0))\n",
        "soft-thresholding after each step produces exact zeros, which a gradient L1 under Adam does not; the "
        "sparsity pattern of W (half its entries are zero) should be recovered better",
        "priority 4: proximal L1"),
    _cs("mlp-capacity-half", MODEL,
        "        self.lin_edge = MLP(1 + cfg.embedding_dim, cfg.hidden_dim, 1, cfg.n_layers)\n"
        "        self.lin_phi = MLP(1 + cfg.embedding_dim, cfg.hidden_dim, 1, cfg.n_layers)\n",
        "        # smaller MLPs (half width, one layer less): W has to carry more of the signal\n"
        "        self.lin_edge = MLP(1 + cfg.embedding_dim, max(1, cfg.hidden_dim // 2), 1, max(2, cfg.n_layers - 1))\n"
        "        self.lin_phi = MLP(1 + cfg.embedding_dim, max(1, cfg.hidden_dim // 2), 1, max(2, cfg.n_layers - 1))\n",
        "lin_edge and lin_phi with less capacity cannot compensate for a wrong W as easily, which should shrink "
        "the degeneracy gap",
        "priority 5: MLP capacity reduction"),
    _cs("zero-diagonal", TRAIN, _STEP,
        _STEP + "            with torch.no_grad():  # no self-loops, whatever the optimiser does\n"
                "                model.W.fill_diagonal_(0.0)\n",
        "keeping the diagonal of W at exactly zero after every step removes any self-loop signal (the forward "
        "pass masks it; this also keeps the stored W and its L1 clean)",
        "priority 6: W diagonal constraint"),
]

class SignalRegime(Regime):
    """W recovery on the signal package; configs `<stem>_<variant>_<profile>.yaml`."""

    config_stem: str

    def default_config(self, variant: str | None = None, profile: Profile = "quick") -> dict:
        """regimes/signal/configs/<config_stem>_{n100,n200}_{quick,full}.yaml."""
        v = self.resolve_variant(variant)
        return B.load_package_config(self, f"{self.config_stem}_{v}", profile)

    def score(self, metrics: dict[str, float]) -> float:
        """connectivity_R2 clipped to [0, 1]. It is the identity R2 after the gauge
        correction (SCIENCE.md B4), so the data-free answers -W, a random W and an
        untrained model all score 0 here; connectivity_R2_fit is never the score."""
        v = metrics.get("connectivity_R2")
        if v is None or not math.isfinite(float(v)):
            return 0.0
        return float(min(1.0, max(0.0, v)))

    def classify(self, metrics: dict[str, float]) -> Classification:
        """On the identity connectivity_R2: converged > 0.9, partial 0.1-0.9, failed < 0.1 (or missing)."""
        v = metrics.get("connectivity_R2")
        if v is None or not math.isfinite(float(v)):
            return "failed"
        return "converged" if v > 0.9 else "partial" if v >= 0.1 else "failed"


REGIME = SignalRegime(
    name="sparse_connectivity",
    title="Neural signal: sparse connectivity recovery",
    description=("Recover W (n x n, N(0, 1/n), 50% of entries zeroed, no self-connections) of "
                 "du/dt = -u + 7 W tanh(u) from activity. Variants n100 and n200, compared side by side. "
                 "Primary: connectivity_R2 (identity R2 after the gauge: sign-aware); converged > 0.9."),
    variants=["n100", "n200"],
    default_variant="n100",
    package="regimes.signal",
    package_dir=B.SIGNAL_DIR,
    train_entry="regimes.signal.train",
    config_stem="sparse",
    mutable=signal_mutable(),
    frozen=["simulation.*", "graph_model.*", "training.*"],
    metrics=list(B.SIGNAL_METRICS),
    primary_metric="connectivity_R2",
    log_metrics=SIGNAL_LOG_METRICS,
    metric_labels=SIGNAL_METRIC_LABELS,
    log_config=SIGNAL_LOG_CONFIG,
    editable=SIGNAL_EDITABLE,
    code_edit_when="after_warmup",
    code_warmup_iters=4,
    code_strategies=SIGNAL_CODE_STRATEGIES,
    plots=SIGNAL_PLOTS,
    instructions=B.instructions("sparse_connectivity"),
    strategies=SIGNAL_STRATEGIES,
    import_allowlist=B.IMPORT_ALLOWLIST,
    truth_identifiers=list(B.SIGNAL_TRUTH),
    identifiability_metrics=list(B.SIGNAL_IDENTIFIABILITY),
    degenerate_metric="system_degenerate",
)
