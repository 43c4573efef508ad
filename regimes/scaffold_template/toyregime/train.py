"""Training entry of toyregime (the contract every regime's entry honours):

    python -m toyregime.train --config X.yaml --out DIR [--device auto|cpu|cuda]

Writes DIR/progress.jsonl (at least once per second), metrics.json,
analysis.log, plots/*.png and model.pt. Exit 2 on a broken config (one line),
3 when the loss becomes NaN.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from toyregime.config import ConfigError, TrainingConfig, load_config
from toyregime.data import TrainingData, load_or_generate
from toyregime.model import ToyGNN


class Diverged(RuntimeError):
    pass


def train_model(model: ToyGNN, data: TrainingData, cfg: TrainingConfig, progress) -> list[float]:
    """The training loop (the function the agent may edit). Returns the per-step prediction losses."""
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    ynorm2 = float(data.dx.var()) or 1.0
    n_frames = data.x.shape[0]
    total = cfg.n_epochs * max(1, int(n_frames * cfg.data_augmentation_loop / cfg.batch_size * 0.2))
    losses: list[float] = []
    for step in range(1, total + 1):
        k = torch.randint(0, n_frames, (cfg.batch_size,), generator=gen)
        pred_loss = (model(data.x[k]) - data.dx[k]).square().mean() / ynorm2
        loss = pred_loss + cfg.coeff_W_L1 * model.connectivity().abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(pred_loss.detach()))
        if not torch.isfinite(pred_loss):
            raise Diverged(f"training diverged: loss is nan at step {step}")
        progress(step, total, losses[-1])
    return losses


def _plots(out: Path, losses: list[float], model: ToyGNN, truth_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (out / "plots").mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.semilogy(losses)
    ax.set_xlabel("step")
    ax.set_ylabel("prediction loss")
    fig.savefig(out / "plots" / "loss.png", dpi=100)
    plt.close(fig)
    # evaluation-side plot: reads the truth here, never inside train_model
    w_true = torch.load(truth_path, weights_only=True)["W"].flatten()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(w_true, model.connectivity().detach().flatten(), s=8)
    ax.set_xlabel("true W")
    ax.set_ylabel("learned W")
    fig.savefig(out / "plots" / "W_scatter.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toyregime.train")
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.training.seed)
    data, inputs_path, truth_path = load_or_generate(cfg.simulation)
    model = ToyGNN(cfg.simulation.n_nodes, cfg.graph_model.hidden_dim)
    t0 = last = time.perf_counter()
    with open(out / "progress.jsonl", "a") as fh:
        def progress(step: int, total: int, loss: float) -> None:
            nonlocal last
            now = time.perf_counter()
            if now - last >= 0.5 or step == total:
                last = now
                fh.write(json.dumps({"step": step, "total": total, "loss": loss, "elapsed_s": now - t0}) + "\n")
                fh.flush()
        try:
            losses = train_model(model, data, cfg.training, progress)
        except Diverged as e:
            print(str(e), file=sys.stderr)
            return 3
    from toyregime.evaluate import evaluate

    k = max(1, len(losses) // 10)
    metrics = evaluate(model, inputs_path, truth_path, sum(losses[-k:]) / k)
    metrics["training_time_min"] = (time.perf_counter() - t0) / 60
    torch.save(model.state_dict(), out / "model.pt")
    _plots(out, losses, model, truth_path)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    (out / "analysis.log").write_text("".join(f"{k}: {v:.6g}\n" for k, v in metrics.items()))
    print(f"done: connectivity_R2={metrics['connectivity_R2']:.4f} test_R2={metrics['test_R2']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
