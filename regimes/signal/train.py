"""Training of the signal package and its command-line entry.

    python -m regimes.signal.train --config X.yaml --out DIR [--device auto|cpu|cuda]

Writes DIR/progress.jsonl (at least once per second of work), model.pt,
metrics.json, analysis.log and plots/*.png. Exit 2 on a broken config (one
line naming the dotted key), 3 when the loss becomes NaN/inf.

`train_model` (with `batch_loss`, `edge_decrease_penalty`, `rollout_loss`,
`make_optimizer` and model.py) is the code the agent may edit. The regimes'
code strategies (regimes/sparse_connectivity.py) match exact text here: the
four-line batch_loss/zero_grad/backward/step block and the LR-scheduler
line of `train_model`, and the W init line and the lin_edge/lin_phi lines of
model.py. Change them only together with those strategies
(tests/test_regimes_strategies.py checks it).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from regimes.signal.config import Config, ConfigError, TrainingConfig, load_config
from regimes.signal.data import TrainingData, load_or_generate
from regimes.signal.model import SignalGNN

#: seconds between two progress reports (the contract asks for >= 1 per second)
PROGRESS_EVERY_S = 0.5


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite at `step`."""

    def __init__(self, step: int, what: str = "nan"):
        super().__init__(f"loss is {what} at step {step}")
        self.step = step


@dataclass
class TrainResult:
    """Per-step losses (prediction part and total) and timing of one training."""

    pred_losses: torch.Tensor
    total_losses: torch.Tensor
    n_steps: int
    elapsed_s: float
    cpu_s: float
    extra: dict = field(default_factory=dict)

    @property
    def final_loss(self) -> float:
        """Mean prediction loss over the last 10% of steps."""
        k = max(1, self.n_steps // 10)
        return float(self.pred_losses[self.n_steps - k:self.n_steps].mean())


def iterations_per_epoch(n_frames: int, data_augmentation_loop: int, batch_size: int) -> int:
    """int(n_frames * data_augmentation_loop / batch_size * 0.2), at least 1 (SCIENCE.md general rules)."""
    return max(1, int(n_frames * data_augmentation_loop / batch_size * 0.2))


def make_optimizer(model: SignalGNN, cfg: TrainingConfig) -> torch.optim.Optimizer:
    """Adam with one learning rate per group: W, the MLPs, and (unless frozen) the embeddings."""
    groups = [{"params": [model.W], "lr": cfg.learning_rate_W_start, "name": "W"},
              {"params": list(model.lin_edge.parameters()) + list(model.lin_phi.parameters()),
               "lr": cfg.learning_rate_start, "name": "mlp"}]
    if not cfg.training_single_type:
        groups.append({"params": [model.a], "lr": cfg.learning_rate_embedding_start, "name": "embedding"})
    return torch.optim.Adam(groups, fused=True)  # fused: one kernel per parameter (CPU and CUDA)


def rollout_loss(model: SignalGNN, u: torch.Tensor, k: torch.Tensor, time_step: int, delta_t: float,
                 noise: float, ynorm2: float) -> torch.Tensor:
    """Recurrent loss: Euler-roll the model `time_step` steps from the true
    state at frames k (plus Gaussian noise per step), MSE to the true state at
    k + time_step, divided by (delta_t * time_step)^2 and ynorm^2."""
    x = u[k]
    for _ in range(time_step):
        x = x + delta_t * model(x)
        if noise > 0:
            x = x + noise * torch.randn_like(x)
    return ((x - u[k + time_step]) ** 2).mean() / ((delta_t * time_step) ** 2 * ynorm2)


def edge_decrease_penalty(model: SignalGNN, x: torch.Tensor, edge_x: torch.Tensor, delta: float) -> torch.Tensor:
    """mean ReLU(lin_edge(u) - lin_edge(u + delta)) over the batch's activities x (B, n).

    Only entries where lin_edge decreases carry a gradient, so lin_edge(u + delta)
    is evaluated first without autograd and again with autograd only at those
    entries: same value and gradient, and once lin_edge is monotone (the
    usual state under coeff_edge_diff = 1e4) the backward pass skips the
    shifted half of the batch entirely.
    """
    x_shift = x + delta
    with torch.no_grad():
        decreasing = (edge_x - model.edge(x_shift)) > 0
    rows, cols = decreasing.nonzero(as_tuple=True)
    shifted = model.edge_at(x_shift[rows, cols], cols)
    return F.relu(edge_x[rows, cols] - shifted).sum() / edge_x.numel()


def batch_loss(model: SignalGNN, u: torch.Tensor, du: torch.Tensor, k: torch.Tensor, cfg: TrainingConfig,
               coeff_L1: float, recurrent: bool, delta: float, ynorm2: float, delta_t: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(total loss, prediction loss) of the batch of frames k.

    Total = prediction loss (MSE of du/dt / ynorm^2, or the recurrent rollout
    loss) + coeff_L1 * sum|W| + coeff_edge_diff * mean ReLU(lin_edge(u) -
    lin_edge(u + delta)) on the batch's activities.
    """
    x = u[k]
    if recurrent:
        loss_pred = rollout_loss(model, u, k, cfg.time_step, delta_t, cfg.noise_recurrent_level, ynorm2)
        edge_x = model.edge(x) if cfg.coeff_edge_diff > 0 else None
    else:
        pred, edge_x = model.forward_and_edge(x)
        loss_pred = ((pred - du[k]) ** 2).mean() / ynorm2
    edge_diff = edge_decrease_penalty(model, x, edge_x, delta) if cfg.coeff_edge_diff > 0 else None
    loss = loss_pred
    if coeff_L1 > 0:
        loss = loss + coeff_L1 * model.masked_W().abs().sum()
    if edge_diff is not None:
        loss = loss + cfg.coeff_edge_diff * edge_diff
    return loss, loss_pred


def train_model(model: SignalGNN, data: TrainingData, cfg: TrainingConfig, device: str = "cpu",
                progress: Callable[[int, int, float, float], None] | None = None) -> TrainResult:
    """Train `model` on run 0 of `data` with the keys of SCIENCE.md B3.

    Per epoch: int(n_frames * data_augmentation_loop / batch_size * 0.2)
    steps, each on `batch_size` random frames of run 0 (seeded by `cfg.seed`).
    L1 weight: first_coeff_L1 before epoch n_epochs_init, coeff_W_L1 from then
    on. Recurrent rollout loss from epoch recurrent_training_start_epoch on
    when recurrent_training is set. Embeddings are frozen when
    training_single_type. See `batch_loss` for the loss.
    """
    u, du = data.u.to(device), data.du.to(device)
    n_frames = u.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling (model init is seeded by the caller)
    model.a.requires_grad_(not cfg.training_single_type)
    n_iter = iterations_per_epoch(n_frames, cfg.data_augmentation_loop, cfg.batch_size)
    total = n_iter * cfg.n_epochs
    ynorm2 = data.ynorm ** 2
    delta = data.xnorm / 150
    pred_losses: list[torch.Tensor] = []
    total_losses: list[torch.Tensor] = []
    optimizer = make_optimizer(model, cfg)
    scheduler = None  # no LR schedule by default; a code strategy may create one here (it steps after optimizer.step())
    t0, c0 = time.monotonic(), time.process_time()
    next_report, checked, step = t0 + PROGRESS_EVERY_S, 0, 0
    for epoch in range(cfg.n_epochs):
        coeff_L1 = cfg.first_coeff_L1 if epoch < cfg.n_epochs_init else cfg.coeff_W_L1
        recurrent = cfg.recurrent_training and epoch >= cfg.recurrent_training_start_epoch
        horizon = cfg.time_step if recurrent else 0
        frames = torch.randint(0, n_frames - horizon, (n_iter, cfg.batch_size), generator=gen)
        if recurrent:
            frames = frames // cfg.time_step * cfg.time_step  # start frames aligned to time_step (seed document)
        frames = frames.to(device)
        for it in range(n_iter):
            loss, loss_pred = batch_loss(model, u, du, frames[it], cfg, coeff_L1, recurrent, delta, ynorm2, data.delta_t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            pred_losses.append(loss_pred.detach())
            total_losses.append(loss.detach())
            step += 1
            now = time.monotonic()
            if now >= next_report or step == total:
                _check_finite(torch.stack(total_losses[checked:step]), checked)
                checked = step
                if progress is not None:
                    progress(step, total, float(pred_losses[-1]), now - t0)
                next_report = now + PROGRESS_EVERY_S
    return TrainResult(pred_losses=torch.stack(pred_losses).cpu(), total_losses=torch.stack(total_losses).cpu(),
                       n_steps=step, elapsed_s=time.monotonic() - t0, cpu_s=time.process_time() - c0)


def _check_finite(chunk: torch.Tensor, start: int) -> None:
    """Raise TrainingDiverged at the first non-finite loss of `chunk` (steps start+1 ...)."""
    bad = ~torch.isfinite(chunk)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise TrainingDiverged(start + i + 1, "nan" if torch.isnan(chunk[i]) else "inf")


# ---------------------------------------------------------------- entry point

def resolve_device(name: str) -> str:
    """auto -> cuda when available else cpu; cuda without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device: cuda requested but no CUDA device is available")
    return name


class ProgressWriter:
    """Appends `{"step","total","loss","elapsed_s"}` lines to progress.jsonl, flushed."""

    def __init__(self, path: Path):
        self.f = open(path, "a", buffering=1)

    def __call__(self, step: int, total: int, loss: float, elapsed: float) -> None:
        self.f.write(json.dumps({"step": step, "total": total, "loss": loss, "elapsed_s": round(elapsed, 3)}) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def run(cfg: Config, out: Path, device: str = "cpu", log=print) -> dict:
    """Generate/load data, train, evaluate, write every output; returns the metrics."""
    from regimes.signal import evaluate as ev_mod  # evaluation (and its truth access) only after training
    from regimes.signal import plots

    out.mkdir(parents=True, exist_ok=True)
    data, truth_path = load_or_generate(cfg.simulation, log=log)
    torch.manual_seed(cfg.training.seed)  # model init independent of whether data came from the cache
    model = SignalGNN(data.n_neurons, cfg.graph_model).to(device)
    writer = ProgressWriter(out / "progress.jsonl")
    try:
        res = train_model(model, data, cfg.training, device=device, progress=writer)
    finally:
        writer.close()
    torch.save(model.state_dict(), out / "model.pt")
    ev = ev_mod.evaluate(ev_mod.LearnedView(model), data, truth_path, final_loss=res.final_loss,
                         training_time_s=res.elapsed_s, n_steps=res.n_steps)
    (out / "metrics.json").write_text(json.dumps(ev.metrics, indent=1) + "\n")
    (out / "analysis.log").write_text(ev_mod.format_analysis_log(ev))
    plots.write_all(out / "plots", ev.arrays, res.pred_losses[: res.n_steps].numpy(),
                    res.total_losses[: res.n_steps].numpy())
    return ev.metrics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m regimes.signal.train", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = p.parse_args(argv)
    try:
        cfg = load_config(args.config)
        device = resolve_device(args.device)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        metrics = run(cfg, args.out, device=device, log=lambda s: print(s, flush=True))
    except TrainingDiverged as e:
        print(f"training diverged: {e}", file=sys.stderr)
        return 3
    print(" ".join(f"{k}={metrics[k]:.4g}" for k in ("connectivity_R2", "support_auroc", "test_pearson") if k in metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main())
