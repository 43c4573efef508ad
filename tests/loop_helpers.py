"""Shared helpers for the loop's tests (toy regime runs, tool envs)."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.policies.heuristic import HeuristicPolicy
from agent.runctx import RunCtx
from rundir.records import RunInfo
from regimes.registry import get_regime
from rundir.io import load_yaml
from tools.env import Step
from tools.toolbox import ToolBox

TOY_PLUGINS = Path(__file__).resolve().parent / "fixtures" / "toy_regime" / "plugins"


def toy_options(run_dir: Path, **kw):
    from agent.run import RunOptions

    base = dict(regime="toy", regime_path=[TOY_PLUGINS], slots=2, iterations=4, policy="heuristic",
                run_dir=run_dir, seed=0)
    base.update(kw)
    return RunOptions(**base)


def open_ctx(run_dir: Path) -> RunCtx:
    """A RunCtx over an existing run (heuristic policy)."""
    from sandbox.workspace import Workspace

    info = RunInfo.model_validate(load_yaml(run_dir / "run.yaml"))
    regime = get_regime(info.regime, [Path(p) for p in info.regime_path])
    return RunCtx(run_dir, info, regime, Workspace.open(run_dir / "workspace"), HeuristicPolicy(), HeuristicPolicy())


def at(ctx: RunCtx, name: str, slots: list[int] | None = None, iteration: int = 1, **fields) -> Step:
    """The Step a graph node `name` would hand the tools, over `ctx`'s run: the batch of
    `iteration` in view unless `batch` is given, every slot unless `slots` is."""
    fields.setdefault("batch", ctx.load_batch(iteration))
    return Step(name=name, slots=tuple(range(ctx.info.slots) if slots is None else slots), iteration=iteration,
                **fields)


def box(ctx: RunCtx, name: str, slots: list[int] | None = None, **fields) -> ToolBox:
    """A ToolBox of step `name` over `ctx` (see `at`)."""
    return ToolBox(ctx.env, at(ctx, name, slots, **fields))


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
