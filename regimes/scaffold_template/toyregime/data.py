"""Dataset cache: inputs (what training may see) and truth (evaluation only) in separate files."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from toyregime.config import SimulationConfig
from toyregime.simulator import make_connectivity, simulate


@dataclass
class TrainingData:
    """Run 0 only: states, derivative targets and the step size. No ground truth."""

    x: torch.Tensor   # (T, n)
    dx: torch.Tensor  # (T, n)
    delta_t: float


def cache_dir(sim: SimulationConfig) -> Path:
    root = Path(os.environ.get("GNN_AGENT_CACHE") or Path.home() / ".cache" / "gnn-agent")
    key = hashlib.sha256(("toyregime:" + json.dumps(sim.model_dump(), sort_keys=True)).encode()).hexdigest()[:24]
    return root / "toyregime" / key


def load_or_generate(sim: SimulationConfig, log=print) -> tuple[TrainingData, Path, Path]:
    """(training data of run 0, path of the inputs file, path of the truth file)."""
    d = cache_dir(sim)
    inputs, truth = d / "inputs.pt", d / "truth.pt"
    if not inputs.is_file():
        d.mkdir(parents=True, exist_ok=True)
        gen = torch.Generator().manual_seed(sim.seed)
        w = make_connectivity(sim, gen)
        x, dx = simulate(sim, w, gen)
        torch.save({"W": w}, truth)
        torch.save({"x": x, "dx": dx, "delta_t": sim.delta_t}, inputs)  # written last: marks the entry complete
        log(f"generated toyregime data: {sim.n_nodes} nodes, {sim.n_frames} frames -> {d}")
    blob = torch.load(inputs, weights_only=True)
    return TrainingData(x=blob["x"][0], dx=blob["dx"][0], delta_t=float(blob["delta_t"])), inputs, truth
