"""The toyregime plugin: what the agent needs to know about this inverse problem.

Found by `agent run --regime toyregime --regime-path DIR` (DIR holds this
directory) or through an entry point `toyregime = "toyregime.regime:REGIME"`
in the group `gnn_agent.regimes`. Imports nothing heavy: the registry loads
it just to list regimes.
"""

from __future__ import annotations

from pathlib import Path

from regimes.base import EditableFile, MetricSpec, ParamSpec, Profile, Regime, load_yaml_config

HERE = Path(__file__).resolve().parent


class ToyRegimeRegime(Regime):
    """Recover the coupling matrix W of a small linear network."""

    def default_config(self, variant: str | None = None, profile: Profile = "quick") -> dict:
        """configs/default_{quick,full}.yaml."""
        self.resolve_variant(variant)
        if profile not in ("quick", "full"):
            raise ValueError(f"regime {self.name}: unknown profile {profile!r}; valid: quick, full")
        return load_yaml_config(HERE / "configs" / f"default_{profile}.yaml", what=f"regime {self.name} ({profile})")


REGIME = ToyRegimeRegime(
    name="toyregime",
    title="Toy: coupling recovery in a linear network",
    description="dx/dt = -0.05 x + W x (damped oscillators) on 8 nodes; learn W and a node function. Primary: connectivity_R2 (> 0.9).",
    package="toyregime",
    package_dir=HERE,
    # the two-process contract (gnn-agent docs/contracts.md §2b): stage (runner, trusted) ->
    # train (workspace copy, confined) -> evaluate (this installed copy, reads the truth)
    train_entry="toyregime.train",
    eval_entry="toyregime.evaluate",
    stage_entry="toyregime.data:stage",
    mutable=[
        ParamSpec(key="training.learning_rate", type="float", low=1e-4, high=1e-1, log=True,
                  description="Adam learning rate"),
        ParamSpec(key="training.coeff_W_L1", type="float", low=0.0, high=1e-1, description="L1 on W"),
        ParamSpec(key="training.batch_size", type="choice", choices=[4, 8, 16, 32], description="frames per step"),
        ParamSpec(key="training.n_epochs", type="int", low=1, high=20, description="epochs"),
        ParamSpec(key="training.data_augmentation_loop", type="int", low=1, high=500,
                  description="iterations-per-epoch multiplier"),
        ParamSpec(key="training.seed", type="int", low=0, high=2**31 - 1, description="init and sampling seed"),
    ],
    frozen=["simulation.*", "graph_model.*", "training.*"],
    metrics=[
        MetricSpec(name="connectivity_R2", description="R2 of learned vs true W (off-diagonal) against the identity "
                   "line: a negated or rescaled W scores badly", good="> 0.9"),
        MetricSpec(name="connectivity_R2_fit", description="fit R2 (best line) of learned vs true W: blind to "
                   "sign and scale, a diagnostic", good="> 0.9"),
        MetricSpec(name="test_R2", description="R2 of a free rollout on the held-out run", good="> 0.9"),
        MetricSpec(name="test_pearson", description="Pearson correlation of that rollout", good="> 0.95"),
        MetricSpec(name="final_loss", description="mean prediction loss, last 10% of steps", good="lower",
                   higher_is_better=False),
        MetricSpec(name="training_time_min", description="training time in minutes", higher_is_better=None),
    ],
    primary_metric="connectivity_R2",
    log_metrics=["connectivity_R2", "test_R2", "test_pearson", "final_loss"],
    log_config={"seed": "training.seed", "lr": "training.learning_rate", "coeff_W_L1": "training.coeff_W_L1",
                "batch_size": "training.batch_size", "n_epochs": "training.n_epochs",
                "data_augmentation_loop": "training.data_augmentation_loop"},
    editable=[EditableFile(path="toyregime/train.py", functions=["train_model"]),
              EditableFile(path="toyregime/model.py")],
    code_edit_when="after_warmup",
    code_warmup_iters=4,
    plots=["plots/W_scatter.png", "plots/loss.png"],
    instructions=HERE / "instructions.md",
    strategies=["exploit", "explore", "failure-probe", "switch-dimension", "code-modification"],
    truth_identifiers=["truth", "true_W", "w_true", "ensure_cache", "cache_dir", "load_heldout"],
)
