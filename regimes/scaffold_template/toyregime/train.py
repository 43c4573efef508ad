"""Training entry of toyregime (the contract of gnn-agent's docs/contracts.md §2b):

    python -m toyregime.train --config C --inputs IN --out OUT [--device auto|cpu|cuda]

Reads only the staged inputs directory IN (run 0 and the queries) and the
config; on Linux gnn-agent runs it confined (no other file, no network).
Writes OUT/progress.jsonl (at least once per second), OUT/model.pt and
OUT/predictions.pt (learned W, the rollout from the held-out start, the loss
history, timing). Metrics and plots come from `python -m toyregime.evaluate`,
another process. Exit codes and OUT/failure.json come from `regimes.runtime`
(2 config, 3 diverged, 5 bad inputs): gnn-agent's module, which is installed
for the stage and evaluation, and copied into every run's workspace for the
confined training, so the same import works in both places.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from regimes import runtime
from toyregime.config import ConfigError, TrainingConfig, load_config
from toyregime.data import Queries, TrainingData, load_staged
from toyregime.model import ToyGNN


def train_model(model: ToyGNN, data: TrainingData, cfg: TrainingConfig, progress) -> torch.Tensor:
    """The training loop (the function the agent may edit). Returns the per-step prediction losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    ynorm2 = float(data.dx.var()) or 1.0
    n_frames = data.x.shape[0]
    total = cfg.n_epochs * max(1, int(n_frames * cfg.data_augmentation_loop / cfg.batch_size * 0.2))
    losses = torch.zeros(total)  # preallocated: memory does not grow with the number of steps
    for step in range(total):
        k = torch.randint(0, n_frames, (cfg.batch_size,), generator=gen)
        pred_loss = (model(data.x[k]) - data.dx[k]).square().mean() / ynorm2
        loss = pred_loss + cfg.coeff_W_L1 * model.connectivity().abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses[step] = pred_loss.detach()
        runtime.check_finite(float(losses[step]), step + 1)
        progress(step + 1, total, float(losses[step]))
    return losses


@torch.no_grad()
def predictions(model: ToyGNN, data: TrainingData, queries: Queries, losses: torch.Tensor, elapsed_s: float) -> dict:
    """The answers the evaluation scores: data only (no code crosses to the evaluation)."""
    x = queries.rollout_x0.unsqueeze(0).float()
    frames = [x]
    for _ in range(queries.rollout_frames - 1):
        x = torch.nan_to_num(x + data.delta_t * model(x), nan=1e6).clamp(-1e6, 1e6)  # a diverging rollout scores badly
        frames.append(x)
    return {"W": model.connectivity(), "rollout": torch.cat(frames), "losses": losses,
            "n_steps": int(losses.numel()), "elapsed_s": float(elapsed_s)}


def _entry(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    runtime.resolve_device(args.device)  # the toy trains on the CPU; a bad --device is still a config error
    data, queries = load_staged(args.inputs)
    torch.manual_seed(cfg.training.seed)
    model = ToyGNN(data.x.shape[1], cfg.graph_model.hidden_dim)
    writer = runtime.ProgressWriter(out / runtime.PROGRESS_FILE, total=0)
    t0 = time.perf_counter()

    def progress(step: int, total: int, loss: float) -> None:
        writer.total = total
        writer(step, loss, force=step == total)

    try:
        losses = train_model(model, data, cfg.training, progress)
    finally:
        writer.close()
    torch.save(model.state_dict(), out / runtime.MODEL_FILE)
    runtime.save_predictions(out / runtime.PREDICTIONS_FILE,
                             predictions(model, data, queries, losses, time.perf_counter() - t0))
    print(f"trained {losses.numel()} steps", flush=True)
    return runtime.EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = runtime.train_arg_parser("python -m toyregime.train").parse_args(argv)
    return runtime.run_entry(_entry, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
