"""Dataset cache and the staging of a training's inputs (docs/contracts.md §2b of gnn-agent).

Cache (`$GNN_AGENT_CACHE` or ~/.cache/gnn-agent, `toyregime/<key>/`):
run0.pt (the training run), queries.pt (what the training must answer),
run1.pt (the held-out run) and truth.pt (the true W). `stage` copies only
run0.pt and queries.pt into the training's private inputs directory; the
training reads them with `load_staged` and nothing else. evaluate.py (trusted,
another process) opens the cache for the truth and run 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from toyregime.config import ConfigError, SimulationConfig, load_config
from toyregime.simulator import make_connectivity, simulate

#: bump when the generator or the files of an entry change, so stale caches are not reused
CACHE_FORMAT = 2
RUN0, RUN1, QUERIES, TRUTH = "run0.pt", "run1.pt", "queries.pt", "truth.pt"
STAGED_INPUTS, STAGED_QUERIES = "inputs.pt", "queries.pt"


@dataclass
class TrainingData:
    """Run 0 only: states, derivative targets and the step size. No ground truth."""

    x: torch.Tensor   # (T, n)
    dx: torch.Tensor  # (T, n)
    delta_t: float


@dataclass
class Queries:
    """What the training answers: a free rollout of `rollout_frames` frames from `rollout_x0`
    (the held-out run's first frame; the evaluation compares it with that run)."""

    rollout_x0: torch.Tensor  # (n,)
    rollout_frames: int


def cache_root() -> Path:
    return Path(os.environ.get("GNN_AGENT_CACHE") or Path.home() / ".cache" / "gnn-agent")


def cache_dir(sim: SimulationConfig) -> Path:
    from regimes.runtime import data_secret

    root = cache_root()
    secret_tag = hashlib.sha256(b"toyregime|" + data_secret(root)).hexdigest()[:12]  # a digest, not the secret
    payload = json.dumps({"format": CACHE_FORMAT, "secret": secret_tag, "simulation": sim.model_dump()}, sort_keys=True)
    return root / "toyregime" / hashlib.sha256(("toyregime:" + payload).encode()).hexdigest()[:24]


def _save(obj, path: Path) -> None:
    """Write then rename: a concurrent reader never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def ensure_cache(sim: SimulationConfig, log=print) -> Path:
    """The cache directory of `sim`, generated when incomplete (run0.pt is written last)."""
    d = cache_dir(sim)
    if not (d / RUN0).is_file():
        d.mkdir(parents=True, exist_ok=True)
        # seeds mixed with the cache root's data secret: the training sees simulation.seed and the
        # simulator code, and must still not be able to regenerate W
        from regimes.runtime import system_seed

        w = make_connectivity(sim, torch.Generator().manual_seed(system_seed(sim.seed, cache_root(), "network")))
        x, dx = simulate(sim, w, torch.Generator().manual_seed(system_seed(sim.seed, cache_root(), "initial")))
        _save({"W": w}, d / TRUTH)
        _save({"x": x[1], "dx": dx[1]}, d / RUN1)
        _save({"rollout_x0": x[1, 0].clone(), "rollout_frames": int(x.shape[1])}, d / QUERIES)
        _save({"x": x[0], "dx": dx[0], "delta_t": sim.delta_t}, d / RUN0)
        log(f"generated toyregime data: {sim.n_nodes} nodes, {sim.n_frames} frames -> {d}")
    return d


def stage(config_path: str | Path, dest_dir: str | Path, log=None) -> None:
    """The stage entry: called by gnn-agent's runner before each training. Writes into
    `dest_dir` only run 0 (inputs.pt) and the queries (queries.pt): plain copies, no truth."""
    from regimes.runtime import config_error

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise config_error(str(e)) from None
    d = ensure_cache(cfg.simulation, log=log or (lambda s: None))
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(d / RUN0, dest / STAGED_INPUTS)
    shutil.copyfile(d / QUERIES, dest / STAGED_QUERIES)


def load_staged(inputs_dir: str | Path) -> tuple[TrainingData, Queries]:
    """All the training reads: run 0 and the queries from its staged inputs directory."""
    from regimes.runtime import EntryError

    d = Path(inputs_dir)
    try:
        run0, q = _load(d / STAGED_INPUTS), _load(d / STAGED_QUERIES)
        return (TrainingData(x=run0["x"], dx=run0["dx"], delta_t=float(run0["delta_t"])),
                Queries(rollout_x0=q["rollout_x0"], rollout_frames=int(q["rollout_frames"])))
    except (OSError, KeyError, RuntimeError) as e:
        raise EntryError("inputs", f"inputs: {d} does not hold staged toyregime inputs ({type(e).__name__})") from None


def load_truth(sim: SimulationConfig) -> torch.Tensor:
    """The true W (evaluation only)."""
    return _load(ensure_cache(sim, log=lambda s: None) / TRUTH)["W"]


def load_heldout(sim: SimulationConfig) -> torch.Tensor:
    """The held-out run's states x (T, n) (evaluation only)."""
    return _load(ensure_cache(sim, log=lambda s: None) / RUN1)["x"]
