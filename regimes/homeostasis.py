"""Regime `homeostasis`: phase 2, recover MLP_node slopes and type embeddings (seed 003).

Starts from a phase-1 checkpoint (the rate_constants regime's best known
config with S frozen), freezes k, MLP_sub and S, and trains MLP_node and the
embeddings by recurrent rollout of `homeostasis_time_step` steps, pinned per
slot (4, 16, 32, 64). Only the phase-2 loop region may be edited, and only at
a block end.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from regimes import _builtin as B
from regimes.base import Classification, CodeStrategy, Degeneracy, EditableFile, Profile, Regime, get_dotted
from regimes.rate_constants import REGIME as RATE_CONSTANTS

TRAIN = "regimes/metabolism/train.py"
_SLOPE_RATIO = re.compile(r"^MLP_node_slope_ratio_(\d+)$")

#: phase-1 keys: fixed by the checkpoint, meaningless in phase 2
PHASE1_KEYS = ["training.learning_rate_start", "training.learning_rate_k", "training.learning_rate_sub",
               "training.learning_rate_node", "training.learning_rate_embedding", "training.learning_rate_S_start",
               "training.coeff_S_L1", "training.coeff_S_L2", "training.coeff_S_integer",
               "training.coeff_mass_conservation", "training.coeff_MLP_sub_diff", "training.coeff_MLP_sub_norm",
               "training.coeff_MLP_node_L1", "training.coeff_k_center", "training.n_epochs_init",
               "training.first_coeff_L1", "training.recurrent_training", "training.time_step",
               "training.coeff_k_prior", "training.coeff_MLP_sub_zero", "training.lr_schedule",
               "training.k_least_squares"]


# ----- the seed's literature strategies, as exact edits inside the phase2_loop region -----

_ROLL = """            idx = starts[torch.randint(0, len(starts), (B,), generator=gen)].to(dev)
            x = conc0[idx]
            w = weights(idx, T)
            terms = []  # per supervised step s: weighted mean squared error / ((dt s)^2 ynorm^2)
            for _s in range(T):
                x = (x + dt * model(x)).clamp_min(0.0)
                if t.noise_recurrent_level > 0:
                    x = x + t.noise_recurrent_level * torch.randn(x.shape, generator=gen).to(dev)
                if every_step or _s == T - 1:
                    err = ((x - conc0[idx + _s + 1]) ** 2).mean(1)
                    terms.append((err * w[:, _s]).mean() / ((dt * (_s + 1)) ** 2 * ynorm2))
            loss = torch.stack(terms).mean()
"""
_EULER = "            for _s in range(T):\n                x = (x + dt * model(x)).clamp_min(0.0)\n"
_LOSS = "            loss = torch.stack(terms).mean()\n"
_UPDATE = """            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            lv = loss.item()
"""


def _cs(name: str, old: str, new: str, hypothesis: str, description: str) -> CodeStrategy:
    return CodeStrategy(name=name, file=TRAIN, old=old, new=new, hypothesis=hypothesis, description=description)


CODE_STRATEGIES = [
    _cs("1-residual-supervision", _LOSS,
        _LOSS + "            # strategy 1: fit MLP_node directly to what the frozen reactions leave unexplained\n"
                "            c_now = conc0[idx]\n"
                "            with torch.no_grad():\n"
                "                residual = data.deriv[idx] - model.reaction(c_now)\n"
                "            loss = loss + ((model.node(c_now) - residual) ** 2).mean() / (residual.var() + 1e-12)\n",
        "the homeostatic signal is ~1000x weaker than the reactions in the rollout loss; supervising MLP_node with "
        "the residual dc/dt - reaction(c), normalised to O(1), gives it a direct, unattenuated target",
        "Strategy 1: residual-based direct supervision (PINN residual decomposition, SINDy operator splitting)"),
    _cs("2-signal-amplification", _EULER,
        "            for _s in range(T):\n"
        "                # strategy 2: MLP_node amplified 50x at the start, annealed to 1x by mid-training\n"
        "                amp = 1.0 + 49.0 * max(0.0, 1.0 - 2.0 * step / max(1, t.n_epochs * steps_per_epoch))\n"
        "                x = (x + dt * (model.reaction(x) + amp * model.node(x))).clamp_min(0.0)\n",
        "multiplying the MLP_node output makes its contribution comparable to the reactions, so its gradients are "
        "meaningful while it learns the shape; annealing to 1x recovers the true scale",
        "Strategy 2: signal amplification (curriculum learning, loss scaling)"),
    _cs("3-contrastive-embeddings", _LOSS,
        _LOSS + "            # strategy 3: embeddings follow the similarity of the learned MLP_node response curves\n"
                "            grid = query_grid(conc0, 16).to(dev)  # 1-99 % quantiles of run 0\n"
                "            resp = model.node_fn(grid.expand(model.n_met, -1), model.a.unsqueeze(1).expand(-1, 16, -1))\n"
                "            resp = resp - resp.mean(1, keepdim=True)\n"
                "            cos = torch.nn.functional.cosine_similarity\n"
                "            want = cos(resp.unsqueeze(1), resp.unsqueeze(0), dim=-1).detach()\n"
                "            have = cos(model.a.unsqueeze(1), model.a.unsqueeze(0), dim=-1)\n"
                "            loss = loss + 0.1 * ((have - want) ** 2).mean()\n",
        "embeddings get almost no gradient from the weak homeostatic signal; pulling together metabolites whose "
        "learned MLP_node curves agree (no labels used) should separate the two types",
        "Strategy 3: unsupervised auxiliary loss for embeddings (SimCLR, BYOL)"),
    _cs("4-rollout-curriculum", _ROLL,
        _ROLL.replace("T", "Tc").replace("            idx = starts[",
                      "            # strategy 4: the full rollout in the first half of training, half of it afterwards\n"
                      "            Tc = T if step < (t.n_epochs * steps_per_epoch) // 2 else max(1, T // 2)\n"
                      "            idx = starts["),
        "the longest rollout accumulates the most homeostatic drift to start learning from; shorter rollouts "
        "later refine the functions with cleaner gradients",
        "Strategy 4: curriculum on time steps (curriculum learning, scheduled sampling)"),
    _cs("5-lr-warmup-kick", _UPDATE,
        _UPDATE.replace("            opt.step()\n",
                        "            # strategy 5: 10x learning rates at the start, decaying to the configured ones over 10%\n"
                        "            kick = 1.0 + 9.0 * max(0.0, 1.0 - step / max(1.0, 0.1 * t.n_epochs * steps_per_epoch))\n"
                        "            for g in opt.param_groups:\n"
                        "                g[\"lr\"] = g[\"lr_base\"] * kick\n"
                        "            opt.step()\n"),
        "MLP_node starts at zero output where gradients are tiny; a large initial learning rate kicks it out of "
        "that flat region, the decay then lets it settle",
        "Strategy 5: higher learning rates with warmup/decay (Goyal et al. 2017)"),
    _cs("6-multi-scale-rollout", _ROLL,
        _ROLL.replace("T", "Tb").replace("            idx = starts[torch.randint(0, len(starts), (B,), generator=gen)]",
                      "            # strategy 6: a rollout length drawn per batch from 4/16/32/64\n"
                      "            Tb = min((4, 16, 32, 64)[int(torch.randint(0, 4, (1,), generator=gen))], "
                      "data.n_frames - 1)\n"
                      "            starts_b = data.window_starts(Tb)  # windows of this length inside one segment\n"
                      "            idx = starts_b[torch.randint(0, len(starts_b), (B,), generator=gen)]"),
        "short rollouts give clean gradients of the local dynamics, long ones carry the homeostatic drift; "
        "mixing them captures both",
        "Strategy 6: multi-scale rollout (multi-scale training, stochastic depth)"),
    _cs("7-gradient-accumulation", _UPDATE,
        "            (loss / 4.0).backward()  # strategy 7: accumulate gradients over 4 mini-batches\n"
        "            if (step + 1) % 4 == 0:\n"
        "                opt.step()\n"
        "                opt.zero_grad(set_to_none=True)\n"
        "            step += 1\n"
        "            lv = loss.item()\n",
        "averaging gradients over 4 mini-batches reduces their variance so the weak homeostatic gradient becomes "
        "reliable",
        "Strategy 7: gradient accumulation (Goyal et al. 2017)"),
    _cs("8-stop-gradient-reactions", _EULER,
        "            for _s in range(T):\n"
        "                # strategy 8: the reaction part without gradient: MLP_node receives the whole error\n"
        "                x = (x + dt * (model.reaction(x).detach() + model.node(x))).clamp_min(0.0)\n",
        "gradients flowing through the frozen reactions' Jacobian dilute and distort the error signal reaching "
        "MLP_node; cutting them isolates the homeostatic component",
        "Strategy 8: separate loss components (stop-gradient, Chen & He 2021)"),
]


def slope_ratios(metrics: dict[str, float]) -> list[float]:
    """The per-type MLP_node_slope_ratio_t values, in type order (non-finite kept as NaN)."""
    found = []
    for name, value in metrics.items():
        m = _SLOPE_RATIO.match(name)
        if m:
            try:
                found.append((int(m.group(1)), float(value)))
            except (TypeError, ValueError):
                found.append((int(m.group(1)), math.nan))
    return [v for _, v in sorted(found)]


def _closeness(ratio: float) -> float:
    """max(0, 1 - |ratio - 1|): 1 at the true slope, falling off both ways (overshoot is not rewarded)."""
    if not math.isfinite(ratio):
        return 0.0
    return max(0.0, 1.0 - abs(ratio - 1.0))


def _finite(metrics: dict[str, float], name: str) -> float | None:
    try:
        v = float(metrics[name])
    except (KeyError, TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def embedding_above_chance(metrics: dict[str, float]) -> float:
    """(acc - chance) / (1 - chance), clipped to [0, 1]: 0 for embeddings that carry no type information."""
    acc, chance = _finite(metrics, "embedding_cluster_acc"), _finite(metrics, "embedding_cluster_acc_chance")
    if acc is None or chance is None or chance >= 1.0:
        return 0.0
    return min(1.0, max(0.0, (acc - chance) / (1.0 - chance)))


def ratio_class(ratio: float) -> Classification:
    """One type's slope ratio: converged 0.8-1.2, partial 0.3-0.8 or 1.2-3.0, failed otherwise."""
    if not math.isfinite(ratio):
        return "failed"
    if 0.8 <= ratio <= 1.2:
        return "converged"
    if 0.3 <= ratio < 0.8 or 1.2 < ratio <= 3.0:
        return "partial"
    return "failed"


class HomeostasisRegime(Regime):
    """Phase-2 homeostasis recovery."""

    def effective_config(self, config: dict) -> dict:
        """Phase 2's `auto` loss keys resolved at the slot's rollout length (train.phase2_recipe), and
        homeostasis_embedding_lr_scaling rollout_length written as constant where it is x1 (T = 4): at T = 32
        `auto -> median_cap` trains what the parent trained."""
        from regimes.metabolism import train
        from regimes.metabolism.config import TrainingConfig

        t = dict(config.get("training") or {})
        try:
            tc = TrainingConfig.model_validate(t)
        except ValueError:
            return config  # an invalid config is the training's error to report, not a repeat
        loss, weights = train.phase2_recipe(tc)
        t["homeostasis_loss"], t["homeostasis_window_weights"] = loss, weights
        if train.embedding_lr_homeostasis(tc) == tc.learning_rate_embedding_homeostasis:
            t["homeostasis_embedding_lr_scaling"] = "constant"
        return {**config, "training": t}

    def default_config(self, variant: str | None = None, profile: Profile = "quick") -> dict:
        """regimes/metabolism/configs/homeostasis_{quick,full}.yaml."""
        self.resolve_variant(variant)
        return B.load_package_config(self, "homeostasis", profile)

    def score(self, metrics: dict[str, float]) -> float:
        """The UCB reward (SCIENCE.md A7): mean over types of max(0, 1 - |slope_ratio_t - 1|), times
        max(0, MLP_node_function_R2), times the embedding accuracy above chance. Each factor is ~0 for one
        way of scoring without learning: an overshoot or a wrong slope (closeness), a lucky slope on a
        flat or spiky curve (function R2), a type-blind curve (embeddings at chance). 0 when the frozen
        parameters changed or a component is missing."""
        if _finite(metrics, "frozen_params_changed") != 0.0:
            return 0.0
        ratios = slope_ratios(metrics)
        if not ratios:
            return 0.0
        closeness = sum(_closeness(r) for r in ratios) / len(ratios)
        function_r2 = max(0.0, _finite(metrics, "MLP_node_function_R2") or 0.0)
        return closeness * min(1.0, function_r2) * embedding_above_chance(metrics)

    def classify(self, metrics: dict[str, float]) -> Classification:
        """Per type (SCIENCE.md A7): converged when every type's slope ratio is in 0.8-1.2, partial when every
        type is at least partial (0.3-0.8 or 1.2-3.0), failed otherwise; failed when the frozen parameters
        changed. (An average of 0.2 and 1.8 is not converged.) Right slopes on a curve with
        MLP_node_function_R2 <= 0 (flat or spiky: a lucky slope) are partial, not converged."""
        if _finite(metrics, "frozen_params_changed") != 0.0:
            return "failed"
        ratios = slope_ratios(metrics)
        if not ratios:
            return "failed"
        classes = {ratio_class(r) for r in ratios}
        if "failed" in classes:
            return "failed"
        fn_r2 = _finite(metrics, "MLP_node_function_R2")
        if classes == {"converged"} and (fn_r2 is None or fn_r2 > 0.0):
            return "converged"
        return "partial"  # includes the right slopes on a curve worse than its mean (a lucky slope)

    def degeneracy(self, metrics: dict[str, float]) -> Degeneracy:
        """Not defined for phase 2: the dynamics are dominated by the frozen reaction terms,
        so test_pearson says nothing about the homeostasis (seed 003 has no degeneracy table)."""
        return Degeneracy(gap=None, diagnosis="n/a")

    def prepare(self, run_dir: Path, config: dict, device: str = "cpu", log=print) -> dict:
        """Provide the phase-1 checkpoint: the user's (`training.phase1_checkpoint` already set,
        from --phase1-checkpoint) or one trained once per dataset with the rate_constants
        regime's best known config of the run's profile, S frozen, and cached. Either one is
        scored here (trusted code, the evaluation's metrics), its figures written to
        prepare/phase1.json for the run header, and refused below PHASE1_MIN_R2 / PHASE1_MIN_TEST_R2."""
        from regimes.metabolism import phase1 as P1  # heavy (torch): only when needed

        user = get_dotted(config, "training.phase1_checkpoint")
        overrides: dict = {}
        if user:
            path = Path(user).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"training.phase1_checkpoint: {path} does not exist")
            path = path.resolve()
            log(f"homeostasis: using the phase-1 checkpoint {path} (given by the user); scoring it ...")
            metrics = P1.evaluate_phase1_checkpoint(path, config["simulation"])
            source = "given by the user"
            # MLP_sub's form belongs to the frozen reaction model: phase 2 takes the checkpoint's
            form = P1.checkpoint_sub_form(path)
            if form != get_dotted(config, "graph_model.mlp_sub_form"):
                overrides["graph_model.mlp_sub_form"] = form
                log(f"homeostasis: graph_model.mlp_sub_form={form} (the checkpoint's)")
        else:
            profile = run_profile(Path(run_dir), config, self)
            phase1 = phase1_config(config, profile)
            # trained inside the run directory (prepare/phase1/) so its progress is visible, then cached
            path, metrics = P1.ensure_phase1_checkpoint(phase1["simulation"], phase1, device, None, log,
                                                        work_dir=Path(run_dir) / "prepare" / "phase1")
            source = f"rate_constants {profile} config, S frozen"
        figures = phase1_figures(metrics)
        (Path(run_dir) / "prepare").mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / "prepare" / "phase1.json").write_text(json.dumps(figures, indent=1))
        log(f"homeostasis: phase-1 checkpoint {path} ({source}): "
            + ", ".join(f"{k}={_fmt4(v)}" for k, v in figures.items()))
        why = phase1_refusal(figures)
        if why:
            raise Phase1Refused(f"phase-1 model refused: {why}; phase 2 on it would fit reaction error, not "
                                f"homeostasis ({path}). Give a better one with --phase1-checkpoint PATH "
                                "(the model.pt of a rate_constants training, S frozen, on this simulation)")
        return {"training.phase1_checkpoint": str(path), **overrides}


class Phase1Refused(RuntimeError):
    """The phase-1 model is too poor to start phase 2 (SCIENCE.md A5)."""


#: SCIENCE.md A5: refuse a phase-1 model below these (k recovery, held-out dynamics)
PHASE1_MIN_R2 = 0.5
PHASE1_MIN_TEST_R2 = 0.5


def _fmt4(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"


def phase1_figures(metrics: dict) -> dict:
    """The phase-1 figures the run header and the refusal use. k: rate_constants_R2 on the identifiable
    reactions where the network has shared substrate sets (the others' k are not determined by any data,
    so they say nothing about the reaction model phase 2 builds on). Dynamics: test_R2_short, the first
    250 frames of the held-out rollout (over 2000 frames the chaotic cycles decorrelate even for a
    near-exact law: see regimes/metabolism/evaluate.py TEST_SHORT_FRAMES)."""
    m = metrics if isinstance(metrics, dict) else {}
    keys = ["rate_constants_R2", "rate_constants_R2_identifiable", "test_R2", "test_R2_short"]
    return {k: float(m[k]) for k in keys if isinstance(m.get(k), (int, float))}


def phase1_refusal(figures: dict) -> str | None:
    """Why a phase-1 model must not start phase 2 (None: it may)."""
    k_name = "rate_constants_R2_identifiable" if "rate_constants_R2_identifiable" in figures else "rate_constants_R2"
    t_name = "test_R2_short" if "test_R2_short" in figures else "test_R2"
    bad = []
    for name, lo in ((k_name, PHASE1_MIN_R2), (t_name, PHASE1_MIN_TEST_R2)):
        v = figures.get(name)
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo):
            bad.append(f"{name} {_fmt4(v)} < {lo}")
    return " and ".join(bad) if bad else None


def phase1_config(config: dict, profile: Profile) -> dict:
    """Homeostasis's default phase 1 at `profile` (regimes/metabolism/phase1.py default_phase1_config: the
    quick rate_constants recipe without its k prior), on this run's simulation, S frozen."""
    import copy

    from regimes.metabolism.phase1 import default_phase1_config

    sim = config.get("simulation")
    if not isinstance(sim, dict):  # a config without one trains on the regime's default dataset
        sim = RATE_CONSTANTS.default_config(None, profile)["simulation"]
    return {"simulation": copy.deepcopy(sim), **copy.deepcopy(default_phase1_config(profile))}


def run_profile(run_dir: Path, config: dict, regime: Regime) -> Profile:
    """The run's profile: `profile:` of run.yaml when present, else the default config
    (quick or full) whose training section is closest to `config`."""
    run_yaml = run_dir / "run.yaml"
    if run_yaml.is_file():
        import yaml

        data = yaml.safe_load(run_yaml.read_text()) or {}
        if isinstance(data, dict) and data.get("profile") in ("quick", "full"):
            return data["profile"]
    best, best_diff = "quick", None
    for profile in ("quick", "full"):
        try:
            ref = regime.default_config(None, profile).get("training", {})
        except FileNotFoundError:
            continue
        diff = sum(1 for k, v in ref.items() if config.get("training", {}).get(k) != v)
        if best_diff is None or diff < best_diff:
            best, best_diff = profile, diff
    return best  # type: ignore[return-value]


REGIME = HomeostasisRegime(
    name="homeostasis",
    title="Metabolism phase 2: homeostasis recovery",
    description=("From a frozen phase-1 model (k, MLP_sub, S), learn the per-type homeostasis "
                 "-lambda_t (c - b_t) with MLP_node and metabolite embeddings. Slots run rollouts of "
                 "4/16/32/64 steps. Primary: avg_slope_ratio (best 1.0); converged when every type's slope ratio "
                 "is in 0.8-1.2; the score also needs MLP_node_function_R2 and embeddings above chance."),
    package="regimes.metabolism",
    package_dir=B.METABOLISM_DIR,
    train_entry="regimes.metabolism.train",
    mutable=[
        B.lr("learning_rate_node_homeostasis", 1e-4, 1e-1, "phase-2 lr of MLP_node"),
        B.lr("learning_rate_embedding_homeostasis", 1e-4, 1e-1, "phase-2 lr of the embeddings a_i"),
        B.integer("data_augmentation_loop", 10, 5000, "iterations-per-epoch multiplier (seed range 100-5000)"),
        B.choice("batch_size", [4, 8, 16, 32], "frames per gradient step"),
        B.choice("lr_schedule_homeostasis", ["constant", "cosine"],
                 "phase-2 lr schedule (cosine: both lrs decay to 0 over the phase-2 steps, so the curves settle)"),
        B.choice("homeostasis_loss", ["end_state", "every_step", "auto"],
                 "phase-2 loss: the end state's error (the seed's), the mean of every rollout step's error, or auto "
                 "(end_state up to 4 steps, every_step beyond)"),
        B.choice("homeostasis_window_weights", ["uniform", "median_cap", "auto"],
                 "per-window weights: uniform (the seed's), median_cap (no window counts more than the median one; "
                 "the chaotic windows dominate long rollouts otherwise), or auto (uniform up to 4 steps, median_cap beyond)"),
        B.choice("homeostasis_embedding_lr_scaling", ["constant", "rollout_length"],
                 "the embeddings' lr as set, or times homeostasis_time_step / 4 (the same lr x updates in every slot)"),
    ],
    frozen=["simulation.*", "graph_model.*", "training.*", "training.freeze_stoichiometry",
            "training.skip_phase1", "training.homeostasis_training", "training.phase1_checkpoint",
            "training.n_epochs", "training.seed", *PHASE1_KEYS],
    slot_fixed={"training.homeostasis_time_step": [4, 16, 32, 64]},
    metrics=[
        B.metric("avg_slope_ratio", "mean over types of learned / true MLP_node slope (best 1.0; classification "
                 "and score use each type's ratio, not this mean)", "0.8-1.2", None),
        B.metric("MLP_node_function_R2", "every metabolite's learned MLP_node curve against its true line on the "
                 "1-99% quantile grid (pooled R2): a flat or spiky curve scores <= 0", "> 0.8"),
        B.metric("frozen_params_changed", "1 when log_k, MLP_sub or S differ (bit for bit) from the phase-1 "
                 "checkpoint: classification failed, score 0", "0", False),
        *[B.metric(f"MLP_node_slope_ratio_{t}", f"learned / true slope of type {t} (best 1.0)", "1.0", None)
          for t in (0, 1)],
        *[B.metric(f"MLP_node_offset_ratio_{t}", f"learned / true offset of type {t} (best 1.0)", "1.0", None)
          for t in (0, 1)],
        *[B.metric(f"MLP_node_slope_{t}", f"learned slope of MLP_node for type {t} (true -lambda_t)", "", None)
          for t in (0, 1)],
        *[B.metric(f"MLP_node_offset_{t}", f"learned offset of MLP_node for type {t} (true lambda_t*b_t)", "", None)
          for t in (0, 1)],
        *[B.metric(f"MLP_node_gt_slope_{t}", f"true slope -lambda_{t} of type {t} ({v})", "", None)
          for t, v in ((0, -0.001), (1, -0.002))],
        *[B.metric(f"MLP_node_gt_offset_{t}", f"true offset lambda_{t}*b_{t} of type {t}", "", None)
          for t in (0, 1)],
        B.metric("embedding_cluster_acc", "DBSCAN clusters of the embeddings vs true types (Hungarian)", "1.0"),
        B.metric("embedding_cluster_acc_chance", "that accuracy for the same cluster sizes assigned at random "
                 "(about 0.5 for two balanced types)", "", None),
        B.metric("embedding_n_clusters", "clusters DBSCAN finds in embedding space", "2", None),
        B.metric("embedding_silhouette", "silhouette of the embedding clustering", "> 0.5"),
        B.metric("phase2_loss", "phase-2 rollout loss", "lower is better", False),
        B.metric("phase2_node_magnitude", "mean |MLP_node| on the data (> 0 means MLP_node is active)", "> 0"),
        B.metric("rate_constants_R2", "phase-1 sanity check: must stay as in the checkpoint", "> 0.5"),
        *B.METABOLISM_COMMON,
    ],
    primary_metric="avg_slope_ratio",
    log_metrics=["avg_slope_ratio", "MLP_node_slope_ratio_0", "MLP_node_offset_ratio_0", "MLP_node_slope_ratio_1",
                 "MLP_node_offset_ratio_1", "MLP_node_function_R2", "embedding_cluster_acc",
                 "embedding_cluster_acc_chance", "embedding_n_clusters", "frozen_params_changed", "rate_constants_R2"],
    metric_labels={"MLP_node_slope_ratio_0": "slope_ratio_0", "MLP_node_offset_ratio_0": "offset_ratio_0",
                   "MLP_node_slope_ratio_1": "slope_ratio_1", "MLP_node_offset_ratio_1": "offset_ratio_1",
                   "MLP_node_function_R2": "node_fn_R2", "embedding_cluster_acc_chance": "emb_chance",
                   "frozen_params_changed": "frozen_changed"},
    log_config={"lr_node_homeo": "training.learning_rate_node_homeostasis",
                "lr_emb_homeo": "training.learning_rate_embedding_homeostasis",
                "data_augmentation_loop": "training.data_augmentation_loop", "batch_size": "training.batch_size"},
    editable=[EditableFile(path=TRAIN, regions=["phase2_loop"])],
    code_edit_when="block_end",
    code_warmup_iters=0,
    code_strategies=CODE_STRATEGIES,
    plots=["plots/MLP_node.png", "plots/embedding.png", "plots/rate_constants.png", "plots/loss.png",
           "plots/rollout.png"],
    instructions=B.instructions("homeostasis"),
    strategies=["exploit", "strategy-switch", "embedding-focus", "slope-focus", "explore"],
    import_allowlist=B.IMPORT_ALLOWLIST,
    truth_identifiers=list(B.METABOLISM_TRUTH),
)
