"""Dataset cache and the staged training inputs (docs/contracts.md §2, §2b).

Cache layout under ``$GNN_AGENT_CACHE`` (or ``~/.cache/gnn-agent``), keyed by
`simulation_hash` (which includes the cache format version DATA_FORMAT)::

    metabolism/<key>/
        inputs.pt    run 0's concentrations and derivatives, the bipartite support, delta_t
        heldout.pt   run 1 (concentrations, derivatives): the evaluation's test run, never staged
        given_S.pt   the S values on the support (staged only when S is frozen)
        truth.pt     true S, k, types, lambda, baselines, generator weights (evaluate.py only)
        info.json    activity rank, generation time, sizes

`stage(config_path, dest_dir)` (called by the runner, trusted code, before the
training) writes into a private directory only what the training may read:

    dest/inputs.pt        run 0 + support (+ s_sub / s_all when S is frozen)
    dest/queries.pt       what the predictions must answer: c_grid (the 1-99 % quantiles of run 0),
                          node_c_grid (each metabolite's own 1-99 % quantiles),
                          s_values, rollout_c0 (run 1's first frame), rollout_frames, node_frame_idx
    dest/phase1_model.pt  homeostasis only: a copy of the phase-1 checkpoint
    dest/manifest.json    format, dataset key, file list

Each cache file is written to a unique temporary name and renamed into place,
so two processes generating the same dataset at once never leave a torn file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from regimes.metabolism.config import DATA_FORMAT, PACKAGE, Config, ConfigError, SimulationConfig, load_config, \
    simulation_hash
from regimes.metabolism.simulator import activity_rank, simulate, stream_seeds
from regimes.runtime import cache_root  # one definition for every package (phase1 takes it from here)

SUPPORT_KEYS = ("met_sub", "rxn_sub", "met_all", "rxn_all", "sub_to_all", "delta_t", "n_met", "n_rxn", "log_k_center",
                "segment_frames")
INPUT_KEYS = ("conc", "deriv") + SUPPORT_KEYS
#: names of the staged files
STAGED_INPUTS, STAGED_QUERIES, STAGED_PHASE1, STAGED_MANIFEST = "inputs.pt", "queries.pt", "phase1_model.pt", "manifest.json"
#: the function grids span these quantiles of run 0's concentrations (SCIENCE.md A6)
GRID_QUANTILES = (0.01, 0.99)
#: MLP_sub is queried at these |s| (the values the seeds' networks use)
S_VALUES = (1.0, 2.0)
#: frames of run 0 on which MLP_node's magnitude is measured
NODE_FRAMES = 200


@dataclass(frozen=True)
class TrainingData:
    """Everything training may see: run 0's trajectory and derivatives and the support.

    No ground truth (no types, k, lambda) and no held-out run: `conc` and `deriv`
    are run 0 only, shape (n_frames, n_met). The S values (`s_sub`, `s_all`) are
    present only when S is frozen (given)."""

    conc: torch.Tensor  # (n_frames, n_met): run 0
    deriv: torch.Tensor  # (n_frames, n_met): exact dc/dt at each frame of run 0
    met_sub: torch.Tensor
    rxn_sub: torch.Tensor
    met_all: torch.Tensor
    rxn_all: torch.Tensor
    sub_to_all: torch.Tensor
    delta_t: float
    n_met: int
    n_rxn: int
    log_k_center: float  # centre of the configured log10 k range (prior, from the simulation config)
    segment_frames: int  # frames per trajectory segment (each segment starts from a fresh state); n_frames if one
    s_sub: torch.Tensor | None = None  # |s| on substrate edges, only when S is given
    s_all: torch.Tensor | None = None  # signed S on all edges, only when S is given

    @property
    def n_frames(self) -> int:
        return int(self.conc.shape[0])

    def window_starts(self, span: int) -> torch.Tensor:
        """Frames t of a run such that t..t+span lie in one trajectory segment (span 0: every frame)."""
        t = torch.arange(self.n_frames - span)
        return t[(t % self.segment_frames) + span < self.segment_frames]

    @property
    def ynorm(self) -> float:
        """Std of the training derivatives (run 0)."""
        return float(self.deriv.std())

    def to(self, device: str | torch.device) -> "TrainingData":
        kw = {f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name))
              for f in fields(self)}
        return TrainingData(**kw)


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
    """Simulate the dataset and write its five files into `out`; returns info."""
    t0 = time.perf_counter()
    # seeds mixed with the data secret of the cache root this dataset is written to (out = root/metabolism/key)
    stats: list = []
    net, gen, conc, deriv = simulate(sim, tick=tick, seeds=stream_seeds(sim, out.parent.parent), stats=stats)
    gen_s = time.perf_counter() - t0
    r90, r99 = activity_rank(conc[0])
    limited = stats[0].limited_fraction
    support = {"met_sub": net.met_sub, "rxn_sub": net.rxn_sub, "met_all": net.met_all, "rxn_all": net.rxn_all,
               "sub_to_all": net.sub_to_all, "delta_t": float(sim.delta_t), "n_met": net.n_met, "n_rxn": net.n_rxn,
               "log_k_center": float(sim.log_k_center), "segment_frames": sim.frames_per_segment}
    inputs = {"conc": conc[0].clone(), "deriv": deriv[0].clone(), **support}
    heldout = {"conc": conc[1].clone(), "deriv": deriv[1].clone()}
    given = {"s_sub": net.s_sub, "s_all": net.s_all}
    truth = {"S": net.dense_S(), "s_all": net.s_all, "s_sub": net.s_sub, "log_k": gen.log_k, "k": gen.k,
             "n_sub": gen.n_sub, "types": gen.types, "lambda": gen.lam, "baseline": gen.base,
             "homeostasis": bool(sim.homeostasis), "generator": sim.generator,
             "msg_layers": gen.msg_layers, "rate_layers": gen.rate_layers,
             "simulation": sim.model_dump(mode="json"), "limited_fraction": limited}
    info = {"simulation": sim.model_dump(mode="json"), "format": DATA_FORMAT, "activity_rank_90": r90,
            "activity_rank_99": r99, "limited_fraction": limited, "generation_s": round(gen_s, 3),
            "n_sub_edges": int(len(net.met_sub)), "n_edges": int(len(net.met_all)), "conc_min": float(conc[0].min()),
            "conc_max": float(conc[0].max()), "ynorm": float(deriv[0].std())}
    note = ""
    if sim.generator == "mass_action" and not (40 <= r99 <= 60):
        note = f" (expected a rank near 50 for mass action; got {r99})"
    elif sim.network == "random" and (limited >= 0.05 or r99 < 20):
        note = (f" (the stoichiometry datasets aim at limited reaction-frames < 5% and a rank >= 20;"
                f" got {limited:.1%} and {r99})")
    info["note"] = note.strip()
    # everything else first: inputs.pt is the "dataset complete" marker
    atomic_save(truth, out / "truth.pt")
    atomic_save(heldout, out / "heldout.pt")
    atomic_save(given, out / "given_S.pt")
    atomic_save(info, out / "info.json")
    atomic_save(inputs, out / "inputs.pt")
    log(f"generated metabolism dataset {out.name} in {gen_s:.2f}s: {sim.network}/{sim.generator}, "
        f"{len(net.met_sub)} substrate edges, {len(net.met_all)} edges, activity rank 90%={r90} 99%={r99}, "
        f"limited reaction-frames {limited:.2%}{note}")
    return info


def _sim(sim_cfg: SimulationConfig | dict) -> SimulationConfig:
    return sim_cfg if isinstance(sim_cfg, SimulationConfig) else SimulationConfig.model_validate(sim_cfg)


def ensure_dataset(sim_cfg: SimulationConfig | dict, root: Path | str | None = None, log=print, tick=None) -> Path:
    """The dataset's cache directory, generated on first use."""
    sim = _sim(sim_cfg)
    d = dataset_dir(sim, root)
    if not (d / "inputs.pt").is_file():
        generate(sim, d, log=log, tick=tick)
    return d


def _training_data(raw: dict) -> TrainingData:
    kw = {k: raw[k] for k in INPUT_KEYS}
    for k in ("s_sub", "s_all"):
        if raw.get(k) is not None:
            kw[k] = raw[k]
    return TrainingData(**kw)


def load_or_generate(sim_cfg: SimulationConfig | dict, given_stoichiometry: bool = False,
                     root: Path | str | None = None, log=print, tick=None) -> tuple[TrainingData, Path]:
    """Run 0's training data of a dataset (generated on first use) and the path of its truth file
    (trusted callers only: the stage, the evaluation, tests).

    `given_stoichiometry` adds the true S values on the support (regimes that freeze S);
    `tick()` is called regularly while generating."""
    d = ensure_dataset(sim_cfg, root, log, tick)
    raw = torch.load(d / "inputs.pt", weights_only=True)
    if given_stoichiometry:
        raw.update(torch.load(d / "given_S.pt", weights_only=True))
    return _training_data(raw), d / "truth.pt"


def load_heldout(sim_cfg: SimulationConfig | dict, root: Path | str | None = None) -> dict[str, torch.Tensor]:
    """Run 1 of a dataset ({"conc", "deriv"}, each (n_frames, n_met)): the evaluation's test run."""
    return torch.load(dataset_dir(_sim(sim_cfg), root) / "heldout.pt", weights_only=True)


def dataset_info(sim_cfg: SimulationConfig | dict, root: Path | str | None = None) -> dict:
    p = dataset_dir(_sim(sim_cfg), root) / "info.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def query_grid(conc: torch.Tensor, n: int) -> torch.Tensor:
    """n concentrations evenly spaced over the 1-99 % quantiles of `conc` (run 0): the function grid of
    the MLP_sub / MLP_node metrics and monotonicity penalties (a min-max grid is mostly extrapolation:
    99 % of the values lie below a third of the max)."""
    flat = conc.detach().flatten().float()
    if flat.numel() > 4_000_000:  # torch.quantile's input limit; a strided subsample has the same quantiles
        flat = flat[:: flat.numel() // 4_000_000 + 1]
    lo, hi = torch.quantile(flat, torch.tensor(GRID_QUANTILES, dtype=flat.dtype, device=flat.device)).tolist()
    if hi <= lo:
        hi = lo + 1e-6
    return torch.linspace(lo, hi, n, dtype=torch.float32)


def own_range_grid(conc: torch.Tensor, n: int) -> torch.Tensor:
    """(n_met, n): for each metabolite, n concentrations evenly spaced over the 1-99 % quantiles of its own
    run-0 concentrations. MLP_node's slopes are fitted here: a metabolite's homeostasis is seen only where
    its concentration goes (the median metabolite's 99 % quantile is about a third of the pooled grid's top),
    and a line over the pooled grid would mostly measure extrapolation."""
    c = conc.detach().float()
    if c.numel() > 4_000_000:  # torch.quantile's input limit; strided frames have the same quantiles
        c = c[:: c.numel() // 4_000_000 + 1]
    q = torch.quantile(c, torch.tensor(GRID_QUANTILES), dim=0)  # (2, n_met)
    lo, hi = q[0], torch.maximum(q[1], q[0] + 1e-6)
    return lo[:, None] + (hi - lo)[:, None] * torch.linspace(0.0, 1.0, n)[None, :]


def node_frame_idx(n_frames: int) -> torch.Tensor:
    """Frames of run 0 where MLP_node's magnitude is measured (about NODE_FRAMES, evenly spaced)."""
    return torch.arange(0, n_frames, max(1, n_frames // NODE_FRAMES))


def rollout_shape(test_rollout_frames: int, n_frames: int, segment_frames: int, n_met: int) -> tuple[int, ...]:
    """Shape of the test rollout: (frames, n_met) from run 1's first frame, or, when the runs are made of
    trajectory segments, (n_segments, segment_frames, n_met): one rollout from each of the first segments
    of run 1 that fit in test_rollout_frames (at least one)."""
    n = min(test_rollout_frames, n_frames)
    if segment_frames >= n_frames:
        return (n, n_met)
    return (max(1, n // segment_frames), segment_frames, n_met)


def make_queries(cfg: Config, inputs: dict, heldout: dict) -> dict:
    """What the training's predictions must answer (no truth: run 0's quantiles, run 1's first frame, or
    the first frame of each of run 1's first segments when the runs are segmented)."""
    gm = cfg.graph_model
    n_frames, n_met = int(inputs["conc"].shape[0]), int(inputs["conc"].shape[1])
    shape = rollout_shape(gm.test_rollout_frames, n_frames, int(inputs["segment_frames"]), n_met)
    if len(shape) == 2:
        c0, frames = heldout["conc"][0].clone(), shape[0]
    else:
        c0, frames = heldout["conc"][0:shape[0] * shape[1]:shape[1]].clone(), shape[1]
    return {"c_grid": query_grid(inputs["conc"], gm.eval_grid), "s_values": torch.tensor(S_VALUES),
            "node_c_grid": own_range_grid(inputs["conc"], gm.eval_grid),
            "rollout_c0": c0, "rollout_frames": int(frames), "node_frame_idx": node_frame_idx(n_frames)}


def check_phase1_checkpoint(ck: Any, cfg: Config, dataset_key: str, where: str) -> None:
    """ConfigError (one line naming training.phase1_checkpoint) when `ck` cannot start phase 2 of `cfg`."""
    key = "training.phase1_checkpoint"
    if not isinstance(ck, dict) or "state_dict" not in ck or "config" not in ck:
        raise ConfigError(f"config error: {key}: {where} is not a metabolism model.pt")
    if ck.get("simulation_hash") != dataset_key:
        raise ConfigError(f"config error: {key}: {where} was trained on a different simulation section "
                          "(or an older dataset format)")
    gm_ck, gm = ck["config"]["graph_model"], cfg.graph_model
    for f in ("model", "hidden_dim", "embedding_dim", "use_mlp_node", "mlp_sub_form"):
        have = gm_ck.get(f, type(gm).model_fields[f].default)  # a key older checkpoints lack: its default
        if have != getattr(gm, f):
            raise ConfigError(f"config error: {key}: {where} has graph_model.{f}={have!r}, "
                              f"this config has {getattr(gm, f)!r}")
    if not ck["config"]["training"].get("freeze_stoichiometry"):
        raise ConfigError(f"config error: {key}: {where} was trained with a learned S (phase 1 needs freeze_stoichiometry)")


def read_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or not a torch file
        raise ConfigError(f"config error: training.phase1_checkpoint: cannot read {path} ({type(e).__name__})") from None


def phase1_checkpoint_path(cfg: Config) -> Path:
    """The configured phase-1 checkpoint (trusted side: stage and evaluation), checked to exist."""
    if not cfg.training.phase1_checkpoint:
        raise ConfigError("config error: training.phase1_checkpoint: required when skip_phase1 is true "
                          "(the homeostasis regime's prepare() sets it)")
    p = Path(cfg.training.phase1_checkpoint).expanduser()
    if not p.is_file():
        raise ConfigError(f"config error: training.phase1_checkpoint: no such file: {p}")
    return p


def stage(config_path: str | Path, dest_dir: str | Path, root: Path | str | None = None, log=print) -> None:
    """Write the training's private inputs directory (see the module doc). Trusted code: runs in the
    runner (or phase1.py) before the training, generating the dataset into the cache if needed.
    A broken config or phase-1 checkpoint raises runtime.EntryError("config", one line)."""
    from regimes import runtime

    try:
        cfg = load_config(config_path)
        t = cfg.training
        ck_path = phase1_checkpoint_path(cfg) if t.skip_phase1 else None
        key = simulation_hash(cfg.simulation)
        if ck_path is not None:
            check_phase1_checkpoint(read_checkpoint(ck_path), cfg, key, str(ck_path))
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    d = ensure_dataset(cfg.simulation, root, log=log)
    inputs = torch.load(d / "inputs.pt", weights_only=True)
    if t.freeze_stoichiometry:
        inputs.update(torch.load(d / "given_S.pt", weights_only=True))
    heldout = torch.load(d / "heldout.pt", weights_only=True)
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    files = [STAGED_INPUTS, STAGED_QUERIES]
    atomic_save(inputs, dest / STAGED_INPUTS)
    atomic_save(make_queries(cfg, inputs, heldout), dest / STAGED_QUERIES)
    if ck_path is not None:
        # a copy, never a hard link: an unconfined training writing into it must not alter the cache's
        # checkpoint, against which the evaluation checks that the frozen parameters did not change
        shutil.copyfile(ck_path, dest / STAGED_PHASE1)
        files.append(STAGED_PHASE1)
    atomic_save({"package": PACKAGE, "format": DATA_FORMAT, "dataset": key, "files": files,
                 "given_stoichiometry": bool(t.freeze_stoichiometry)}, dest / STAGED_MANIFEST)
    for name in files + [STAGED_MANIFEST]:
        os.chmod(dest / name, 0o444)  # read-only for the training (Landlock also denies writes there)


def load_staged(inputs_dir: str | Path) -> tuple[TrainingData, dict, dict]:
    """The training side: (run 0 TrainingData, queries, manifest) from a staged directory;
    runtime.EntryError("inputs") when something is missing or malformed."""
    from regimes import runtime

    d = Path(inputs_dir)
    try:
        manifest = json.loads((d / STAGED_MANIFEST).read_text())
        if manifest.get("package") != PACKAGE or manifest.get("format") != DATA_FORMAT:
            raise ValueError(f"manifest is for {manifest.get('package')!r} format {manifest.get('format')!r}, "
                             f"expected {PACKAGE!r} format {DATA_FORMAT}")
        raw = torch.load(d / STAGED_INPUTS, map_location="cpu", weights_only=True)
        queries = torch.load(d / STAGED_QUERIES, map_location="cpu", weights_only=True)
        data = _training_data(raw)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise runtime.EntryError("inputs", f"inputs: {d} is not a staged metabolism inputs directory "
                                           f"({str(e).splitlines()[0][:200]})") from None
    return data, queries, manifest
