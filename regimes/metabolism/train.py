"""Training of the metabolism models and the training entry point.

    python -m regimes.metabolism.train --config X.yaml --out DIR [--device auto|cpu|cuda]

Phase 1 (`train_phase1`): derivative regression (or recurrent rollout) of the
stoichiometry or kinetics model; S learnable or frozen. Phase 2
(`train_phase2`, homeostasis, SCIENCE.md A5): from a phase-1 model, freeze
log_k, MLP_sub and S; train a fresh MLP_node and embeddings by recurrent
rollout. The agent may edit `train_phase1` (stoichiometry / rate-constant
regimes) and the marker region ``phase2_loop`` inside `train_phase2`
(homeostasis regime); keep their names and the markers stable.

Exit codes: 0 success; 2 config error (one line on stderr); 3 training
diverged (one line); 1 any other failure (traceback on stderr).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path

import torch

from regimes.metabolism.config import Config, ConfigError, load_config, simulation_hash
from regimes.metabolism.data import TrainingData, load_or_generate
from regimes.metabolism.model import KineticsModel, build_model


class Diverged(RuntimeError):
    """Loss became NaN or infinite."""


class Progress:
    """Appends `{"step","total","loss","elapsed_s"}` lines to progress.jsonl, at most
    every `every_s` seconds (and always when forced), flushed each time."""

    def __init__(self, path: Path | None, total: int, every_s: float = 0.5):
        self.path, self.total, self.every_s = path, total, every_s
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.step = 0
        self.base = 0  # steps done by earlier phases
        self._f = open(path, "a") if path is not None else None

    def __call__(self, step: int, loss: float, force: bool = False) -> None:
        self.step = step
        now = time.perf_counter()
        if self._f is None or (not force and now - self.last < self.every_s):
            return
        self.last = now
        rec = {"step": int(step), "total": int(self.total), "loss": float(loss) if math.isfinite(loss) else None,
               "elapsed_s": round(now - self.t0, 3)}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        kind = "nan" if math.isnan(loss) else "inf"
        raise Diverged(f"training diverged: loss is {kind} at step {step}")


def iterations_per_epoch(n_frames: int, data_augmentation_loop: int, batch_size: int) -> int:
    """int(n_frames * data_augmentation_loop / batch_size * 0.2), at least 1."""
    return max(1, int(n_frames * data_augmentation_loop / batch_size * 0.2))


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """Adam parameter groups with their own learning rates (lr_S 0 -> lr)."""
    t = cfg.training
    groups = [{"name": "S", "params": model.s_param_groups(), "lr": t.lr("S")},
              {"name": "log_k", "params": [model.log_k], "lr": t.lr("k")}]
    if isinstance(model, KineticsModel):
        groups.append({"name": "MLP_sub", "params": list(model.mlp_sub.parameters()), "lr": t.lr("sub")})
        if model.use_node:
            groups.append({"name": "MLP_node", "params": list(model.mlp_node.parameters()), "lr": t.lr("node")})
            groups.append({"name": "embedding", "params": [model.a], "lr": t.lr("embedding")})
    else:
        groups.append({"name": "MLP", "params": model.mlp_parameters(), "lr": t.learning_rate_start})
    return [g for g in groups if g["params"]]


def sub_grid(model: KineticsModel, data: TrainingData, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Concentration grid over the training data range and the |s| values of the support ({1, 2} if learned)."""
    c0 = data.conc[0]
    c = torch.linspace(float(c0.min()), float(c0.max()), n, device=c0.device)
    s = torch.unique(model.pair_s) if model.freeze_S else torch.tensor([1.0, 2.0], device=c0.device)
    return c, s


def train_phase1(model: torch.nn.Module, data: TrainingData, cfg: Config, progress: Progress) -> dict:
    """Phase 1: fit dc/dt (or a `time_step` recurrent rollout) of run 0.

    Loss = MSE / ynorm^2 (+ the regularisers whose coefficient is non-zero).
    Returns {"loss": [per step], "regul": [per step], "steps": n}."""
    t = cfg.training
    dev = data.conc.device
    gen = torch.Generator().manual_seed(t.seed + 1)
    opt = torch.optim.Adam(param_groups(model, cfg))
    conc0, deriv0 = data.conc[0], data.deriv[0]
    ynorm2 = data.ynorm ** 2
    dt, T, B = data.delta_t, t.time_step, t.batch_size
    ipe = iterations_per_epoch(data.n_frames, t.data_augmentation_loop, B)
    kinetic = isinstance(model, KineticsModel)
    learned_S = not model.freeze_S
    if kinetic and (t.coeff_MLP_sub_diff or t.coeff_MLP_sub_norm):
        c_grid, s_grid = sub_grid(model, data)
        one = torch.ones(1, device=dev)
    k_center = data.log_k_center
    max_start = data.n_frames - (T if t.recurrent_training else 0)
    losses: list[float] = []
    reguls: list[float] = []
    step = 0
    for epoch in range(t.n_epochs):
        coeff_L1 = t.first_coeff_L1 if epoch < t.n_epochs_init else t.coeff_S_L1
        for _ in range(ipe):
            idx = torch.randint(0, max_start, (B,), generator=gen).to(dev)
            c = conc0[idx]
            if t.recurrent_training:
                x = c
                for _s in range(T):
                    x = (x + dt * model(x)).clamp_min(0.0)
                    if t.noise_recurrent_level > 0:
                        x = x + t.noise_recurrent_level * torch.randn(x.shape, generator=gen).to(dev)
                pred_loss = ((x - conc0[idx + T]) ** 2).mean() / ((dt * T) ** 2 * ynorm2)
            else:
                pred_loss = ((model(c) - deriv0[idx]) ** 2).mean() / ynorm2
            regul = pred_loss.new_zeros(())
            if learned_S:
                s = model.sto_all
                if coeff_L1:
                    regul = regul + coeff_L1 * s.abs().mean()
                if t.coeff_S_L2:
                    regul = regul + t.coeff_S_L2 * (s ** 2).mean()
                if t.coeff_S_integer:
                    regul = regul + t.coeff_S_integer * torch.sin(math.pi * s).pow(2).mean()
                if t.coeff_mass_conservation:
                    col = s.new_zeros(model.n_rxn).index_add_(0, model.rxn_all, s)
                    regul = regul + t.coeff_mass_conservation * (col ** 2).mean()
            if kinetic:
                if t.coeff_MLP_sub_diff:
                    f = model.f_sub(c_grid.unsqueeze(0), s_grid.unsqueeze(1))  # (n_s, n_c)
                    regul = regul + t.coeff_MLP_sub_diff * torch.relu(f[:, :-1] - f[:, 1:]).mean()
                if t.coeff_MLP_sub_norm:
                    regul = regul + t.coeff_MLP_sub_norm * (model.f_sub(one, one) - 1.0).pow(2).sum()
                if t.coeff_MLP_node_L1 and model.use_node:
                    regul = regul + t.coeff_MLP_node_L1 * model.node(c).abs().mean()
            if t.coeff_k_center:
                regul = regul + t.coeff_k_center * (model.log_k.mean() - k_center) ** 2
            loss = pred_loss + regul
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            lv = pred_loss.item()
            check_finite(lv + regul.item(), step)
            losses.append(lv)
            reguls.append(regul.item())
            progress(progress.base + step, lv)
    return {"loss": losses, "regul": reguls, "steps": step}


def train_phase2(model: KineticsModel, data: TrainingData, cfg: Config, progress: Progress) -> dict:
    """Phase 2 (homeostasis): freeze log_k, MLP_sub and S; train a fresh MLP_node
    (zero output) and embeddings with their own learning rates, by recurrent
    rollout of `homeostasis_time_step` Euler steps, for
    `iterations_per_epoch // homeostasis_time_step` steps per epoch.
    Returns {"loss": [per step], "steps": n}."""
    t = cfg.training
    dev = data.conc.device
    torch.manual_seed(t.seed + 2)
    model.reset_node()
    for p in model.parameters():
        p.requires_grad_(False)
    node_params = list(model.mlp_node.parameters())
    for p in node_params + [model.a]:
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(t.seed + 3)
    conc0 = data.conc[0]
    ynorm2 = data.ynorm ** 2
    dt, B = data.delta_t, t.batch_size
    T = t.homeostasis_time_step
    steps_per_epoch = max(1, iterations_per_epoch(data.n_frames, t.data_augmentation_loop, B) // T)
    losses: list[float] = []
    step = 0
    # >>> editable: phase2_loop
    opt = torch.optim.Adam([{"params": node_params, "lr": t.learning_rate_node_homeostasis},
                            {"params": [model.a], "lr": t.learning_rate_embedding_homeostasis}])
    for epoch in range(t.n_epochs):
        for _ in range(steps_per_epoch):
            idx = torch.randint(0, data.n_frames - T, (B,), generator=gen).to(dev)
            x = conc0[idx]
            for _s in range(T):
                x = (x + dt * model(x)).clamp_min(0.0)
                if t.noise_recurrent_level > 0:
                    x = x + t.noise_recurrent_level * torch.randn(x.shape, generator=gen).to(dev)
            loss = ((x - conc0[idx + T]) ** 2).mean() / ((dt * T) ** 2 * ynorm2)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            lv = loss.item()
            check_finite(lv, step)
            losses.append(lv)
            progress(progress.base + step, lv)
    # <<< editable
    for p in model.parameters():
        p.requires_grad_(False)
    return {"loss": losses, "steps": step}


def phase_steps(cfg: Config, n_frames: int) -> tuple[int, int]:
    """Planned gradient steps of phase 1 and phase 2."""
    t = cfg.training
    ipe = iterations_per_epoch(n_frames, t.data_augmentation_loop, t.batch_size)
    p1 = 0 if t.skip_phase1 else ipe * t.n_epochs
    p2 = max(1, ipe // t.homeostasis_time_step) * t.n_epochs if t.homeostasis_training else 0
    return p1, p2


def load_phase1_checkpoint(model: KineticsModel, cfg: Config, path: Path) -> dict:
    """Load a phase-1 model.pt into `model`; ConfigError (one line) when it does not fit."""
    key = "training.phase1_checkpoint"
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or not a torch file
        raise ConfigError(f"config error: {key}: cannot read {path} ({type(e).__name__})") from None
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise ConfigError(f"config error: {key}: {path} is not a metabolism model.pt")
    if ck.get("simulation_hash") != simulation_hash(cfg.simulation):
        raise ConfigError(f"config error: {key}: {path} was trained on a different simulation section")
    gm_ck, gm = ck["config"]["graph_model"], cfg.graph_model
    for f in ("model", "hidden_dim", "embedding_dim", "use_mlp_node"):
        if gm_ck.get(f) != getattr(gm, f):
            raise ConfigError(f"config error: {key}: {path} has graph_model.{f}={gm_ck.get(f)!r}, "
                              f"this config has {getattr(gm, f)!r}")
    if not ck["config"]["training"].get("freeze_stoichiometry"):
        raise ConfigError(f"config error: {key}: {path} was trained with a learned S (phase 1 needs freeze_stoichiometry)")
    model.load_state_dict(ck["state_dict"])
    return ck


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config error: --device: cuda requested but not available")
    return device


def run(cfg: Config, out: Path, device: str = "cpu", log=print, plots_on: bool = True) -> dict:
    """Train, evaluate, plot and write everything into `out`; returns the metrics.
    (`plots_on=False` skips the plots: tests only.)"""
    from regimes.metabolism import evaluate, plots  # heavy imports only when training

    out.mkdir(parents=True, exist_ok=True)
    t = cfg.training
    ck_path = None
    if t.skip_phase1:
        if not t.phase1_checkpoint:
            raise ConfigError("config error: training.phase1_checkpoint: required when skip_phase1 is true "
                              "(the homeostasis regime's prepare() sets it)")
        ck_path = Path(t.phase1_checkpoint).expanduser()
        if not ck_path.is_file():
            raise ConfigError(f"config error: training.phase1_checkpoint: no such file: {ck_path}")
    p1, p2 = phase_steps(cfg, cfg.simulation.n_frames)
    progress = Progress(out / "progress.jsonl", p1 + p2)
    progress(0, float("nan"), force=True)
    data, truth_path = load_or_generate(cfg.simulation, given_stoichiometry=t.freeze_stoichiometry, log=log,
                                        tick=lambda: progress(0, float("nan")))
    data = data.to(device)
    torch.manual_seed(t.seed)
    model = build_model(cfg.graph_model, data, t.freeze_stoichiometry).to(device)
    hist: dict = {}
    t0 = time.perf_counter()
    if ck_path is not None:
        load_phase1_checkpoint(model, cfg, ck_path)
        model.to(device)
    else:
        hist["phase1"] = train_phase1(model, data, cfg, progress)
    t1 = time.perf_counter()
    if t.homeostasis_training:
        progress.base = hist.get("phase1", {}).get("steps", 0)
        hist["phase2"] = train_phase2(model, data, cfg, progress)
    t2 = time.perf_counter()
    steps = sum(h["steps"] for h in hist.values())
    last = (hist.get("phase2") or hist.get("phase1"))["loss"]
    progress(steps, last[-1] if last else float("nan"), force=True)
    torch.save({"state_dict": model.state_dict(), "config": cfg.dump(), "simulation_hash": simulation_hash(cfg.simulation),
                "kind": model.kind}, out / "model.pt")
    timing = {"training_time_min": (t2 - t0) / 60.0, "steps_per_second": steps / max(t2 - t0, 1e-9),
              "phase1_time_s": t1 - t0, "phase2_time_s": t2 - t1}
    model.eval()
    tick = lambda: progress(steps, last[-1] if last else float("nan"), force=True)  # noqa: E731
    result = evaluate.evaluate_model(model, data, truth_path, cfg, hist, timing, tick=tick)
    tick()
    if plots_on:
        plots.write_plots(out / "plots", result, tick=tick)
    evaluate.write_outputs(out, result)
    progress.close()
    return result.metrics


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m regimes.metabolism.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.config)
        device = resolve_device(args.device)
        metrics = run(cfg, Path(args.out), device=device)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    except Diverged as e:
        print(str(e), file=sys.stderr)
        return 3
    except Exception:
        traceback.print_exc(file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items() if k in ("final_loss", "stoichiometry_R2", "rate_constants_R2",
                                                                     "avg_slope_ratio", "test_R2", "training_time_min")))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    sys.exit(main())
