"""Dataset cache of the signal package, and the staging of a training's inputs.

Cache layout under `$GNN_AGENT_CACHE` (or `~/.cache/gnn-agent`),
``signal/<key>/``:

- ``run0.pt``   the training run: u, exact du/dt (n_frames, n), delta_t and the
                activity's effective ranks. Exactly the file a training gets.
- ``queries.pt`` what the training must answer (docs/contracts.md §2b): the u
                grid on the 1-99 % quantiles of run 0, the held-out run's first
                frame (where the rollout starts) and the rollout length.
- ``run1.pt``   the held-out run (u, du): evaluation only.
- ``truth.pt``  true W, gain, spectral radius, generator parameters: evaluation only.

The key is the sha256 of the canonical JSON of the simulation section plus
the package name, the generator version, the cache format and a digest of the
data secret. The generators are seeded with `runtime.system_seed`
(simulation.seed mixed with the cache root's data secret): the seed and the
simulator code, both visible to a training, do not give back W. `stage` copies
run0.pt and queries.pt into a training's private inputs directory and nothing
else; `load_staged` is all the training side reads. Only trusted code
(`stage`, evaluate.py, benchmarks, tests) opens the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from regimes.signal.config import ConfigError, SimulationConfig, load_config
from regimes.signal.simulator import connectivity_ceiling, identifiability, make_connectivity, simulate, spectral_radius

PACKAGE = "signal"
#: bump when the generator changes meaning, so stale caches are not reused
#: (2: seeded through runtime.system_seed, streams "network" and "initial")
GENERATOR_VERSION = 2
#: bump when the files of a cache entry change (2: runs split into run0/run1, queries.pt)
CACHE_FORMAT = 2
#: points of the function grid (lin_edge, lin_phi curves and the gauge fit)
N_GRID = 200
#: quantiles of run 0's activity the grid spans (SCIENCE.md: not min-max, mostly extrapolation)
GRID_QUANTILES = (0.01, 0.99)
#: frames of the free rollout from run 1's first frame (SCIENCE.md B4)
N_ROLLOUT_FRAMES = 1000

RUN0, RUN1, QUERIES, TRUTH = "run0.pt", "run1.pt", "queries.pt", "truth.pt"
#: the files `stage` writes into a training's inputs directory
STAGED_INPUTS, STAGED_QUERIES = "inputs.pt", "queries.pt"


@dataclass(frozen=True)
class TrainingData:
    """Everything training may see of the data: run 0 only, no ground truth.

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

    @property
    def n_frames(self) -> int:
        return self.u.shape[0]

    @property
    def n_neurons(self) -> int:
        return self.u.shape[1]


@dataclass(frozen=True)
class Queries:
    """What a training answers in its predictions: functions on `grid`, and a
    free rollout of `rollout_frames` frames from `rollout_u0` (run 1's frame 0)."""

    grid: torch.Tensor        # (N_GRID,)
    rollout_u0: torch.Tensor  # (n,)
    rollout_frames: int


def cache_root() -> Path:
    """The cache root: $GNN_AGENT_CACHE or ~/.cache/gnn-agent."""
    env = os.environ.get("GNN_AGENT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gnn-agent"


def _secret_tag(root: Path) -> str:
    """A digest of the data secret (not the secret): a GNN_AGENT_DATA_SECRET override over an
    existing cache root must not hit entries generated under the root's own secret."""
    from regimes.runtime import data_secret

    return hashlib.sha256(b"signal-cache|" + data_secret(root)).hexdigest()[:12]


def cache_key(sim: SimulationConfig) -> str:
    """sha256 of the canonical JSON of the simulation section (+ package, generator version,
    cache format, a digest of the data secret)."""
    payload = json.dumps({"package": PACKAGE, "version": GENERATOR_VERSION, "format": CACHE_FORMAT,
                          "secret": _secret_tag(cache_root()), "simulation": sim.model_dump(mode="json")},
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


def make_queries(u0: torch.Tensor, heldout_first_frame: torch.Tensor, n_heldout_frames: int) -> dict:
    """The query file's content: grid on the 1-99 % quantiles of the training activity u0 (T, n)."""
    flat = u0.flatten().double()
    if flat.numel() > 4_000_000:  # torch.quantile's input limit; a strided subsample is plenty for 2 quantiles
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    lo, hi = (float(v) for v in torch.quantile(flat, torch.tensor(GRID_QUANTILES, dtype=torch.float64)))
    return {"grid": torch.linspace(lo, hi, N_GRID), "rollout_u0": heldout_first_frame.clone().float(),
            "rollout_frames": int(min(N_ROLLOUT_FRAMES, n_heldout_frames))}


def generators(sim: SimulationConfig, root: Path) -> tuple[torch.Generator, torch.Generator]:
    """(network, initial-state) generators, seeded with runtime.system_seed: simulation.seed
    mixed with the cache root's data secret, so knowing the seed and the simulator code is not
    enough to regenerate W (a training can read neither the secret nor the cache)."""
    from regimes.runtime import system_seed

    return (torch.Generator().manual_seed(system_seed(sim.seed, root, "network")),
            torch.Generator().manual_seed(system_seed(sim.seed, root, "initial")))


def generate(sim: SimulationConfig, directory: Path, log: Callable[[str], None] = print,
             root: Path | None = None) -> None:
    """Simulate and write truth.pt, run1.pt, queries.pt, then run0.pt (last:
    its presence marks a complete entry). `root`: the cache root whose data
    secret seeds the generators (default: the current cache root)."""
    gen_w, gen_u = generators(sim, root or cache_root())
    w = make_connectivity(sim, gen_w)
    u, du = simulate(sim, w, gen_u)
    if not (torch.isfinite(u).all() and torch.isfinite(du).all()):
        raise RuntimeError("simulation produced non-finite values")
    rho = spectral_radius(w)
    ident = identifiability(u[0])  # flagged at generation: a degenerate system is said so before any training
    er90, er99 = ident["effective_rank_90"], ident["effective_rank_99"]
    truth = {"W": w, "gain": sim.gain, "connectivity_type": sim.connectivity_type,
             "spectral_radius": rho, "simulation": sim.model_dump(mode="json")}
    run0 = {"u": u[0].contiguous(), "du": du[0].contiguous(), "delta_t": sim.delta_t, "effective_rank_90": er90,
            "effective_rank_99": er99, "n_neurons": sim.n_neurons, "n_frames": sim.n_frames}
    # runs 2.. (n_runs > 2) are simulated (they shift the random stream) but neither trained on nor scored
    run1 = {"u": u[1].contiguous(), "du": du[1].contiguous()}
    _atomic_save(truth, directory / TRUTH)
    _atomic_save(run1, directory / RUN1)
    _atomic_save(make_queries(u[0], u[1, 0], u.shape[1]), directory / QUERIES)
    _atomic_save(run0, directory / RUN0)
    log(f"generated {sim.connectivity_type} n={sim.n_neurons} seed {sim.seed}: spectral radius: {rho:.3f}, "
        f"effective rank (90% var): {er90}, effective rank (99% var): {er99}, "
        f"saturated neurons: {ident['n_saturated_neurons']}/{sim.n_neurons}, "
        f"connectivity_R2 ceiling: {connectivity_ceiling(w, u[0]):.3f}"
        + (f"; DEGENERATE system ({ident['degenerate_reason']}): W is poorly identifiable "
           "from this seed's activity, scores on it measure the seed, not the recipe" if ident["system_degenerate"]
           else "") + f" -> {directory}")


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in (RUN0, RUN1, QUERIES, TRUTH))


def _training_data(run0: dict) -> TrainingData:
    u, du = run0["u"].float().contiguous(), run0["du"].float().contiguous()
    return TrainingData(u=u, du=du, delta_t=float(run0["delta_t"]), xnorm=float(u.std()), ynorm=float(du.std()),
                        effective_rank_90=int(run0["effective_rank_90"]),
                        effective_rank_99=int(run0["effective_rank_99"]))


def _queries(q: dict) -> Queries:
    return Queries(grid=q["grid"].float(), rollout_u0=q["rollout_u0"].float(), rollout_frames=int(q["rollout_frames"]))


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@dataclass(frozen=True)
class CacheEntry:
    """One generated dataset in the cache (trusted code only: it holds the truth)."""

    directory: Path

    def training_data(self) -> TrainingData:
        return _training_data(_load(self.directory / RUN0))

    def queries(self) -> Queries:
        return _queries(_load(self.directory / QUERIES))

    def truth(self) -> dict:
        """True W, gain, spectral radius, generator parameters."""
        return _load(self.directory / TRUTH)

    def heldout(self) -> torch.Tensor:
        """The held-out run's activity u (n_frames, n)."""
        return _load(self.directory / RUN1)["u"].float().contiguous()


def open_cache(sim: SimulationConfig, log: Callable[[str], None] = print) -> CacheEntry:
    """The cache entry of `sim`, generated first when absent or incomplete."""
    d = cache_dir(sim)
    if not _complete(d):
        generate(sim, d, log=log, root=cache_root())
    return CacheEntry(d)


def stage(config_path: str | Path, dest_dir: str | Path, log: Callable[[str], None] | None = None) -> None:
    """The regime's stage entry (docs/contracts.md §2b), run by the runner before a training.

    Generates or loads the cached dataset of the config's simulation section
    and writes into `dest_dir` only what training may see: inputs.pt (run 0's
    u, du/dt, delta_t, effective ranks) and queries.pt (the function grid, the
    held-out run's first frame, the rollout length). Never W, never run 1's
    trajectory, never a path into the cache (plain copies, no links).
    Raises runtime.EntryError("config", one line) on a broken config.
    """
    from regimes.runtime import config_error

    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        raise config_error(str(e)) from None
    entry = open_cache(cfg.simulation, log=log or (lambda s: None))
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    # copyfile, never a (hard) link: a training that could write its inputs must not reach the cache
    shutil.copyfile(entry.directory / RUN0, dest / STAGED_INPUTS)
    shutil.copyfile(entry.directory / QUERIES, dest / STAGED_QUERIES)


def load_staged(inputs_dir: str | Path) -> tuple[TrainingData, Queries]:
    """The training side's only data access: (run 0, queries) from a staged inputs directory.
    Raises runtime.EntryError("inputs", one line) when a file is missing or malformed."""
    from regimes.runtime import EntryError

    d = Path(inputs_dir)
    try:
        run0, q = _load(d / STAGED_INPUTS), _load(d / STAGED_QUERIES)
        data, queries = _training_data(run0), _queries(q)
    except (OSError, KeyError, TypeError, AttributeError, RuntimeError) as e:
        raise EntryError("inputs", f"inputs: {d} does not hold staged signal inputs "
                                   f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})") from None
    if data.u.dim() != 2 or data.u.shape != data.du.shape or queries.rollout_u0.shape != (data.n_neurons,):
        raise EntryError("inputs", f"inputs: {d}: u {tuple(data.u.shape)}, du {tuple(data.du.shape)} and "
                                   f"rollout_u0 {tuple(queries.rollout_u0.shape)} do not fit together")
    return data, queries
