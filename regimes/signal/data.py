"""Dataset cache of the signal package.

Layout under `$GNN_AGENT_CACHE` (or `~/.cache/gnn-agent`):
``signal/<key>/inputs.pt`` (activity u and exact du/dt of every run, plus
statistics of the activity) and ``signal/<key>/truth.pt`` (true W and the
generator parameters). The key is the sha256 of the canonical JSON of the
simulation section plus the package name and a generator version. Only
evaluate.py opens the truth file; training receives a `TrainingData` built
from the inputs file alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from regimes.signal.config import SimulationConfig
from regimes.signal.simulator import effective_rank, make_connectivity, simulate, spectral_radius

PACKAGE = "signal"
#: bump when the generator changes meaning, so stale caches are not reused
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class TrainingData:
    """Everything training may see: the training run only, no ground truth.

    u, du: (n_frames, n) activity and its exact time derivative (run 0).
    xnorm, ynorm: std of u and of du over the training run.
    """

    u: torch.Tensor
    du: torch.Tensor
    delta_t: float
    xnorm: float
    ynorm: float
    effective_rank_90: int
    effective_rank_99: int
    inputs_path: Path
    meta: dict = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.u.shape[0]

    @property
    def n_neurons(self) -> int:
        return self.u.shape[1]


def cache_root() -> Path:
    """The cache root: $GNN_AGENT_CACHE or ~/.cache/gnn-agent."""
    env = os.environ.get("GNN_AGENT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gnn-agent"


def cache_key(sim: SimulationConfig) -> str:
    """sha256 of the canonical JSON of the simulation section (+ package, generator version)."""
    payload = json.dumps({"package": PACKAGE, "version": GENERATOR_VERSION, "simulation": sim.model_dump(mode="json")},
                         sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def cache_dir(sim: SimulationConfig) -> Path:
    return cache_root() / PACKAGE / cache_key(sim)


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same directory, then rename, so a
    concurrent reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def generate(sim: SimulationConfig, directory: Path, log=print) -> None:
    """Simulate and write truth.pt then inputs.pt (inputs last: its presence
    marks a complete entry)."""
    gen = torch.Generator().manual_seed(sim.seed)
    w = make_connectivity(sim, gen)
    u, du = simulate(sim, w, gen)
    if not (torch.isfinite(u).all() and torch.isfinite(du).all()):
        raise RuntimeError("simulation produced non-finite values")
    rho = spectral_radius(w)
    er90, er99 = effective_rank(u[0])
    truth = {"W": w, "gain": sim.gain, "connectivity_type": sim.connectivity_type,
             "spectral_radius": rho, "simulation": sim.model_dump(mode="json")}
    inputs = {"u": u, "du": du, "delta_t": sim.delta_t, "effective_rank_90": er90,
              "effective_rank_99": er99, "n_neurons": sim.n_neurons, "n_frames": sim.n_frames}
    _atomic_save(truth, directory / "truth.pt")
    _atomic_save(inputs, directory / "inputs.pt")
    log(f"generated {sim.connectivity_type} n={sim.n_neurons}: spectral radius: {rho:.3f}, "
        f"effective rank (90% var): {er90}, effective rank (99% var): {er99} -> {directory}")


def load_inputs(inputs_path: Path) -> dict:
    return torch.load(inputs_path, weights_only=True)


def training_data_from_inputs(inputs_path: Path, inputs: dict | None = None) -> TrainingData:
    """Build the TrainingData of run 0 from an inputs file."""
    inputs = inputs if inputs is not None else load_inputs(inputs_path)
    u, du = inputs["u"][0].contiguous(), inputs["du"][0].contiguous()
    return TrainingData(u=u, du=du, delta_t=float(inputs["delta_t"]),
                        xnorm=float(u.std()), ynorm=float(du.std()),
                        effective_rank_90=int(inputs["effective_rank_90"]),
                        effective_rank_99=int(inputs["effective_rank_99"]),
                        inputs_path=Path(inputs_path),
                        meta={"n_runs": int(inputs["u"].shape[0])})


def load_or_generate(sim: SimulationConfig, log=print) -> tuple[TrainingData, Path]:
    """(TrainingData of run 0, path of the truth file), generating the cache entry if absent."""
    d = cache_dir(sim)
    if not ((d / "inputs.pt").is_file() and (d / "truth.pt").is_file()):
        generate(sim, d, log=log)
    return training_data_from_inputs(d / "inputs.pt"), d / "truth.pt"


def load_test_run(inputs_path: Path, run: int = 1) -> torch.Tensor:
    """The held-out run's activity (n_frames, n); used by evaluation only."""
    return load_inputs(inputs_path)["u"][run].contiguous()
