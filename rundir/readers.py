"""Readers of a run directory for the views (`agent status`, the live view, the report).

Lenient by design: a file that is missing or half-written reads as None / empty,
and a malformed field takes its default, so a view never fails because the loop
is writing. The records are those of `rundir.records`; the writers are the loop's.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from rundir import paths
from rundir.io import read_json, read_yaml_lenient, tail_lines
from rundir.records import RunStatus


class ProgressPoint(BaseModel):
    """One progress.jsonl line written by a training (docs/contracts.md §2)."""

    model_config = ConfigDict(extra="ignore")
    step: float
    total: float | None = None
    loss: float | None = None
    elapsed_s: float = 0.0


class Progress(BaseModel):
    """What the view shows of one training's progress."""

    step: float = 0
    total: float | None = None
    loss: float | None = None
    rate: float | None = None  # steps per second over the recent window
    eta_s: float | None = None


class RunFileError(Exception):
    """A run directory is missing or is not a run directory."""


def check_run_dir(run_dir: Path) -> Path:
    """Return `run_dir` if it looks like a run directory, else raise RunFileError naming why."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise RunFileError(f"run directory {str(run_dir)!r} does not exist")
    if not run_dir.is_dir():
        raise RunFileError(f"{str(run_dir)!r} is not a directory")
    if not any((run_dir / f).exists() for f in ("status.json", "run.yaml", "nodes.jsonl")):
        raise RunFileError(f"{str(run_dir)!r} is not a run directory (no status.json, run.yaml or nodes.jsonl)")
    return run_dir


def read_status(run_dir: Path) -> RunStatus | None:
    """status.json as a RunStatus, or None when absent or unreadable."""
    data = read_json(Path(run_dir) / paths.STATUS)
    if not isinstance(data, dict):
        return None
    try:
        return RunStatus.model_validate(data)
    except ValidationError:
        # A malformed field must not take the whole view down; keep what parses.
        clean = {k: v for k, v in data.items() if k not in ("slots", "best")}
        try:
            return RunStatus.model_validate(clean)
        except ValidationError:
            return None


def read_run_yaml(run_dir: Path) -> dict:
    """run.yaml as a dict ({} when absent)."""
    return read_yaml_lenient(Path(run_dir) / paths.RUN_YAML)


def read_progress(out_dir: Path, window: int = 30) -> Progress | None:
    """Progress of a training from the tail of its progress.jsonl (None when there is none yet)."""
    points = []
    for line in tail_lines(Path(out_dir) / "progress.jsonl", window):
        try:
            points.append(ProgressPoint.model_validate_json(line))
        except ValidationError:
            continue
    if not points:
        return None
    last, first = points[-1], points[0]
    rate = None
    if last.elapsed_s > first.elapsed_s and last.step > first.step:
        rate = (last.step - first.step) / (last.elapsed_s - first.elapsed_s)
    elif last.elapsed_s > 0 and last.step > 0:
        rate = last.step / last.elapsed_s
    eta = None
    if rate and last.total:
        eta = max(0.0, (last.total - last.step) / rate)
    return Progress(step=last.step, total=last.total, loss=last.loss, rate=rate, eta_s=eta)


def read_ucb(run_dir: Path, n: int = 5) -> list[str]:
    """The first `n` lines of ucb_scores.txt (best first; empty at a block start)."""
    try:
        lines = (Path(run_dir) / paths.UCB).read_text().splitlines()
    except OSError:
        return []
    return [ln.strip() for ln in lines if ln.strip()][:n]


def slot_out_dir(run_dir: Path, out_dir: str | None) -> Path | None:
    """A slot's output directory, resolving paths relative to the run directory."""
    if not out_dir:
        return None
    p = Path(out_dir)
    return p if p.is_absolute() else Path(run_dir) / p


def parse_time(s: str | None) -> datetime | None:
    """An ISO-8601 timestamp as an aware datetime (naive ones are taken as UTC)."""
    if not s:
        return None
    try:
        t = datetime.fromisoformat(str(s).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)
