"""Dataset cache: `load_or_generate(sim_cfg) -> (TrainingData, truth_path)`.

Layout under ``$GNN_AGENT_CACHE`` (or ``~/.cache/gnn-agent``)::

    metabolism/<simulation hash>/
        inputs.pt    concentrations, derivatives, the bipartite support, delta_t
        given_S.pt   the S values on the support (loaded only when S is frozen)
        truth.pt     true S, k, types, lambda, baselines, generator weights (evaluate.py only)
        info.json    activity rank, generation time, sizes

Each file is written to a unique temporary name and renamed into place, so two
processes generating the same dataset at once never leave a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from regimes.metabolism.config import PACKAGE, SimulationConfig, simulation_hash
from regimes.metabolism.simulator import activity_rank, simulate

INPUT_KEYS = ("conc", "deriv", "met_sub", "rxn_sub", "met_all", "rxn_all", "sub_to_all", "delta_t",
              "n_met", "n_rxn", "log_k_center")


@dataclass(frozen=True)
class TrainingData:
    """Everything training may see: trajectories, derivatives and the support.

    No ground truth: no types, no k, no lambda; the S values (`s_sub`, `s_all`)
    are present only when the caller asked for them (S frozen)."""

    conc: torch.Tensor  # (2, n_frames, n_met): run 0 trains, run 1 is held out
    deriv: torch.Tensor  # (2, n_frames, n_met): exact dc/dt at each frame
    met_sub: torch.Tensor
    rxn_sub: torch.Tensor
    met_all: torch.Tensor
    rxn_all: torch.Tensor
    sub_to_all: torch.Tensor
    delta_t: float
    n_met: int
    n_rxn: int
    log_k_center: float  # centre of the configured log10 k range (prior, from the simulation config)
    s_sub: torch.Tensor | None = None  # |s| on substrate edges, only when S is given
    s_all: torch.Tensor | None = None  # signed S on all edges, only when S is given

    @property
    def n_frames(self) -> int:
        return int(self.conc.shape[1])

    @property
    def ynorm(self) -> float:
        """Std of the training derivatives (run 0)."""
        return float(self.deriv[0].std())

    def to(self, device: str | torch.device) -> "TrainingData":
        kw = {f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name))
              for f in fields(self)}
        return TrainingData(**kw)


def cache_root(root: Path | str | None = None) -> Path:
    if root is not None:
        return Path(root)
    env = os.environ.get("GNN_AGENT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gnn-agent"


def dataset_dir(sim: SimulationConfig, root: Path | str | None = None) -> Path:
    return cache_root(root) / PACKAGE / simulation_hash(sim)


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save (or JSON for .json) to a unique temp file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            if path.suffix == ".json":
                f.write(json.dumps(obj, indent=1, sort_keys=True).encode())
            else:
                torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def generate(sim: SimulationConfig, out: Path, log=print, tick=None) -> dict:
    """Simulate the dataset and write its four files into `out`; returns info."""
    t0 = time.perf_counter()
    net, gen, conc, deriv = simulate(sim, tick=tick)
    gen_s = time.perf_counter() - t0
    r90, r99 = activity_rank(conc[0])
    inputs = {"conc": conc, "deriv": deriv, "met_sub": net.met_sub, "rxn_sub": net.rxn_sub,
              "met_all": net.met_all, "rxn_all": net.rxn_all, "sub_to_all": net.sub_to_all,
              "delta_t": float(sim.delta_t), "n_met": net.n_met, "n_rxn": net.n_rxn,
              "log_k_center": float(sim.log_k_center)}
    given = {"s_sub": net.s_sub, "s_all": net.s_all}
    truth = {"S": net.dense_S(), "s_all": net.s_all, "s_sub": net.s_sub, "log_k": gen.log_k, "k": gen.k,
             "n_sub": gen.n_sub, "types": gen.types, "lambda": gen.lam, "baseline": gen.base,
             "homeostasis": bool(sim.homeostasis), "generator": sim.generator,
             "msg_layers": gen.msg_layers, "rate_layers": gen.rate_layers,
             "simulation": sim.model_dump(mode="json")}
    info = {"simulation": sim.model_dump(mode="json"), "activity_rank_90": r90, "activity_rank_99": r99,
            "generation_s": round(gen_s, 3), "n_sub_edges": int(len(net.met_sub)), "n_edges": int(len(net.met_all)),
            "conc_min": float(conc.min()), "conc_max": float(conc.max()), "ynorm": float(deriv[0].std())}
    note = ""
    if sim.generator == "mass_action" and not (40 <= r99 <= 60):
        note = f" (expected a rank near 50 for mass action; got {r99})"
    info["note"] = note.strip()
    # truth and given_S first: inputs.pt is the "dataset complete" marker
    atomic_save(truth, out / "truth.pt")
    atomic_save(given, out / "given_S.pt")
    atomic_save(info, out / "info.json")
    atomic_save(inputs, out / "inputs.pt")
    log(f"generated metabolism dataset {out.name} in {gen_s:.2f}s: {sim.network}/{sim.generator}, "
        f"{len(net.met_sub)} substrate edges, {len(net.met_all)} edges, activity rank 90%={r90} 99%={r99}{note}")
    return info


def load_or_generate(sim_cfg: SimulationConfig | dict, given_stoichiometry: bool = False,
                     root: Path | str | None = None, log=print, tick=None) -> tuple[TrainingData, Path]:
    """The training inputs of a dataset (generated on first use) and the path of its truth file.

    `given_stoichiometry` adds the true S values on the support (regimes that freeze S);
    `tick()` is called regularly while generating."""
    sim = sim_cfg if isinstance(sim_cfg, SimulationConfig) else SimulationConfig.model_validate(sim_cfg)
    d = dataset_dir(sim, root)
    if not (d / "inputs.pt").is_file():
        generate(sim, d, log=log, tick=tick)
    raw = torch.load(d / "inputs.pt", weights_only=True)
    kw = {k: raw[k] for k in INPUT_KEYS}
    if given_stoichiometry:
        kw.update(torch.load(d / "given_S.pt", weights_only=True))
    return TrainingData(**kw), d / "truth.pt"


def dataset_info(sim_cfg: SimulationConfig | dict, root: Path | str | None = None) -> dict:
    sim = sim_cfg if isinstance(sim_cfg, SimulationConfig) else SimulationConfig.model_validate(sim_cfg)
    p = dataset_dir(sim, root) / "info.json"
    return json.loads(p.read_text()) if p.is_file() else {}


