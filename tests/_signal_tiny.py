"""Tiny signal datasets and the stage -> train -> evaluate chain for the signal tests."""

from __future__ import annotations

from pathlib import Path

import yaml

from regimes.signal import evaluate as evaluate_mod
from regimes.signal import train as train_mod
from regimes.signal.data import stage

SIM = {"connectivity_type": "sparse", "n_neurons": 16, "n_frames": 200}
BASE = {"n_epochs": 2, "data_augmentation_loop": 1, "batch_size": 8, "n_epochs_init": 1,
        "coeff_W_L1": 1e-3, "first_coeff_L1": 0.0, "learning_rate_start": 1e-3}


def write_config(path: Path, training: dict | None = None, simulation: dict | None = None, **sections) -> Path:
    cfg = {"simulation": {**SIM, **(simulation or {})}, "graph_model": {}, "training": {**BASE, **(training or {})},
           "claude": {"n_epochs": 2, "data_augmentation_loop": 1, "n_iter_block": 4, "ucb_c": 1.414}}
    cfg.update(sections)
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_chain(cfg: Path, root: Path, plots: bool = False) -> tuple[int, int, Path, Path]:
    """stage into root/inputs, train into root/out, evaluate: (train rc, eval rc, inputs, out)."""
    inputs, out = root / "inputs", root / "out"
    stage(cfg, inputs)
    rc_train = train_mod.main(["--config", str(cfg), "--inputs", str(inputs), "--out", str(out), "--device", "cpu"])
    if rc_train != 0:
        return rc_train, -1, inputs, out
    args = ["--config", str(cfg), "--inputs", str(inputs), "--out", str(out)] + ([] if plots else ["--no-plots"])
    return rc_train, evaluate_mod.main(args), inputs, out
