"""Training of the signal package and its command-line entry (docs/contracts.md §2b).

    python -m regimes.signal.train --config C --inputs IN --out OUT [--device auto|cpu|cuda]

Reads only the staged inputs directory IN (run 0's activity and the queries,
`regimes.signal.data.load_staged`) and the config's graph_model / training
sections. Writes OUT/progress.jsonl (at least once per second of work),
OUT/model.pt and OUT/predictions.pt: the learned W (diagonal masked), the
embeddings, lin_edge and lin_phi of every neuron on the query grid, the free
rollout from the held-out start, the loss history and timing. Metrics and
plots are written by the evaluation entry (`regimes.signal.evaluate`), in
another process that reads the truth. Exit codes and failure.json:
regimes/runtime.py (2 config, 3 diverged, 5 bad inputs).

`train_model` (with `batch_loss`, `edge_decrease_penalty`, `rollout_loss`,
`make_optimizer` and model.py) is the code the agent may edit. The regimes'
code strategies (regimes/sparse_connectivity.py) match exact text here: the
four-line batch_loss/zero_grad/backward/step block and the LR-scheduler
line of `train_model`, and the W init line and the lin_edge/lin_phi lines of
model.py. Change them only together with those strategies
(tests/test_regimes_strategies.py checks it).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from regimes import runtime
from regimes.signal.config import ConfigError, TrainingConfig, load_config
from regimes.signal.data import Queries, TrainingData, load_staged
from regimes.signal.model import SignalGNN

#: seconds between two progress reports (the contract asks for >= 1 per second)
PROGRESS_EVERY_S = 0.5


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

    The loss history lives in two buffers preallocated on the device: memory
    stays flat in the number of steps (a Python list of per-step 0-d tensors
    pinned ~7 KB of fragmented heap per entry, 2.5 GB over the quick profile).
    """
    u, du = data.u.to(device), data.du.to(device)
    n_frames = u.shape[0]
    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling (model init is seeded by the caller)
    model.a.requires_grad_(not cfg.training_single_type)
    n_iter = iterations_per_epoch(n_frames, cfg.data_augmentation_loop, cfg.batch_size)
    total = n_iter * cfg.n_epochs
    ynorm2 = data.ynorm ** 2
    delta = data.xnorm / 150
    pred_losses = torch.zeros(total, device=device)
    total_losses = torch.zeros(total, device=device)
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
            pred_losses[step] = loss_pred.detach()  # in place: no per-step allocation survives the step
            total_losses[step] = loss.detach()
            step += 1
            now = time.monotonic()
            if now >= next_report or step == total:
                _check_finite(total_losses[checked:step], checked)
                checked = step
                if progress is not None:
                    progress(step, total, float(pred_losses[step - 1]), now - t0)
                next_report = now + PROGRESS_EVERY_S
    return TrainResult(pred_losses=pred_losses[:step].cpu(), total_losses=total_losses[:step].cpu(),
                       n_steps=step, elapsed_s=time.monotonic() - t0, cpu_s=time.process_time() - c0)


def _check_finite(chunk: torch.Tensor, start: int) -> None:
    """Raise runtime.EntryError("diverged") at the first non-finite loss of `chunk` (steps start+1 ...)."""
    bad = ~torch.isfinite(chunk)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise runtime.diverged(start + i + 1, float(chunk[i]))


# ---------------------------------------------------------------- entry point

@torch.no_grad()
def rollout(model: SignalGNN, u0: torch.Tensor, n_frames: int, delta_t: float) -> tuple[torch.Tensor, int]:
    """Free Euler rollout of the model from u0 (n,) for n_frames frames (frame 0 = u0).

    Returns (frames (n_frames, n) on the CPU, first frame that became
    non-finite or -1). Non-finite states are frozen at +-1e6 so the
    predictions stay finite numbers and a diverging rollout scores badly.
    """
    device = model.W.device
    out = torch.empty(n_frames, u0.shape[0], device=device)
    x = u0.to(device).float().unsqueeze(0)
    bad = -1
    for t in range(n_frames):
        out[t] = x[0]
        x = x + delta_t * model(x)
        if bad < 0 and not torch.isfinite(x).all():
            bad = t + 1
        x = torch.nan_to_num(x, nan=1e6, posinf=1e6, neginf=-1e6).clamp(-1e6, 1e6)
    return out.cpu(), bad


@torch.no_grad()
def predictions(model: SignalGNN, data: TrainingData, queries: Queries, res: TrainResult) -> dict:
    """The answers to the queries (predictions.pt, docs/contracts.md §2b): data only, no code."""
    n = model.n_neurons
    grid = queries.grid.to(model.W.device)
    ug = grid.unsqueeze(1).expand(len(grid), n)  # (G, n): every neuron at every grid value
    roll, bad = rollout(model, queries.rollout_u0, queries.rollout_frames, data.delta_t)
    return {"W": model.masked_W(), "embeddings": model.a, "lin_edge": model.edge(ug).T, "lin_phi": model.phi(ug).T,
            "grid": queries.grid, "rollout": roll, "rollout_diverged_at": int(bad),
            "pred_losses": res.pred_losses[:res.n_steps], "total_losses": res.total_losses[:res.n_steps],
            "n_steps": int(res.n_steps), "elapsed_s": float(res.elapsed_s), "cpu_s": float(res.cpu_s)}


def _entry(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    device = runtime.resolve_device(args.device)
    data, queries = load_staged(args.inputs)
    torch.manual_seed(cfg.training.seed)  # model init
    model = SignalGNN(data.n_neurons, cfg.graph_model).to(device)
    writer = runtime.ProgressWriter(out / runtime.PROGRESS_FILE, total=0, every_s=0.0)  # train_model paces it

    def progress(step: int, total: int, loss: float, elapsed: float) -> None:
        writer.total = total
        writer(step, loss, force=True)

    try:
        res = train_model(model, data, cfg.training, device=device, progress=progress)
    finally:
        writer.close()
    torch.save(model.state_dict(), out / runtime.MODEL_FILE)
    runtime.save_predictions(out / runtime.PREDICTIONS_FILE, predictions(model, data, queries, res))
    print(f"trained {res.n_steps} steps in {res.elapsed_s:.1f} s; final_loss={res.final_loss:.4g}", flush=True)
    return runtime.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = runtime.train_arg_parser("python -m regimes.signal.train", __doc__.splitlines()[0]).parse_args(argv)
    return runtime.run_entry(_entry, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
