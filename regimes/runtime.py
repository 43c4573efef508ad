"""What every training and evaluation entry shares (docs/contracts.md §2).

A training is two processes (docs/contracts.md §2b): the *training entry*
(workspace code, possibly edited by the policy, confined by the OS) reads only
a staged inputs directory and writes the model and its predictions; the
*evaluation entry* (trusted installed code) reads those predictions, the truth
and the held-out run and writes metrics.json, analysis.log and plots. Both use
this module for the parts that must behave the same everywhere:

- exit codes and `failure.json` ({"kind", "message"}), which the runner reads
  instead of scraping stderr;
- the one-line `config error: ...` convention;
- `ProgressWriter` for progress.jsonl;
- `resolve_device` for `--device auto|cpu|cuda`;
- `save_predictions` / `load_predictions`: the data-only file that crosses the
  boundary (a flat dict of tensors and numbers; loaded with weights_only, so no
  code travels with it).

Only the standard library at import time; torch is imported where needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

#: exit codes of both entries
EXIT_OK = 0
EXIT_CRASH = 1  # an unexpected exception (traceback on stderr)
EXIT_CONFIG = 2  # the config (or a command-line argument) is wrong: one line names the key
EXIT_DIVERGED = 3  # the loss became nan/inf
EXIT_PREDICTIONS = 4  # evaluation: predictions missing or malformed (the training's fault)
EXIT_INPUTS = 5  # the staged inputs are missing or malformed (the runner's fault)

#: failure kinds written to failure.json, with their exit codes
FAILURE_KINDS = {"crash": EXIT_CRASH, "config": EXIT_CONFIG, "diverged": EXIT_DIVERGED,
                 "predictions": EXIT_PREDICTIONS, "inputs": EXIT_INPUTS}

FAILURE_FILE = "failure.json"
PROGRESS_FILE = "progress.jsonl"
MODEL_FILE = "model.pt"
PREDICTIONS_FILE = "predictions.pt"
METRICS_FILE = "metrics.json"
ANALYSIS_FILE = "analysis.log"


class EntryError(Exception):
    """A failure with a kind (a key of FAILURE_KINDS) and a one-line message."""

    def __init__(self, kind: str, message: str):
        if kind not in FAILURE_KINDS:
            raise ValueError(f"unknown failure kind {kind!r}")
        super().__init__(message)
        self.kind = kind
        self.message = message.splitlines()[0] if message else kind


def config_error(message: str) -> EntryError:
    """`config error: <message>` (the prefix is added when missing)."""
    return EntryError("config", message if message.startswith("config error:") else f"config error: {message}")


def diverged(step: int, value: float) -> EntryError:
    kind = "nan" if math.isnan(value) else "inf"
    return EntryError("diverged", f"training diverged: loss is {kind} at step {step}")


def check_finite(loss: float, step: int) -> None:
    if not math.isfinite(loss):
        raise diverged(step, loss)


def write_failure(out: Path | str, kind: str, message: str) -> None:
    """Atomically write out/failure.json."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / (FAILURE_FILE + ".tmp")
    tmp.write_text(json.dumps({"kind": kind, "message": message}) + "\n")
    os.replace(tmp, out / FAILURE_FILE)


def read_failure(out: Path | str) -> dict | None:
    """{"kind", "message"} from out/failure.json, or None (absent or unreadable)."""
    try:
        rec = json.loads((Path(out) / FAILURE_FILE).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("kind"), str) or not isinstance(rec.get("message"), str):
        return None
    return {"kind": rec["kind"], "message": rec["message"][:1000]}


def run_entry(main: Callable[[argparse.Namespace], int | None], args: argparse.Namespace, out: Path | str) -> int:
    """Run an entry's body, turning every failure into failure.json + one stderr line + its exit code."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    try:
        (Path(out) / FAILURE_FILE).unlink(missing_ok=True)
        code = main(args)
        return EXIT_OK if code is None else int(code)
    except EntryError as e:
        write_failure(out, e.kind, e.message)
        print(e.message, file=sys.stderr)
        return FAILURE_KINDS[e.kind]
    except KeyboardInterrupt:
        write_failure(out, "crash", "interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the entry's last word: say what broke
        traceback.print_exc(file=sys.stderr)
        last = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        try:
            write_failure(out, "crash", last)
        except OSError:
            pass
        return EXIT_CRASH


def train_arg_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """`--config C --inputs DIR --out DIR [--device auto|cpu|cuda]`."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", required=True, help="the slot's YAML config")
    ap.add_argument("--inputs", required=True, help="the staged inputs directory (read-only)")
    ap.add_argument("--out", required=True, help="output directory (model, predictions, progress)")
    ap.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    return ap


def eval_arg_parser(prog: str, description: str = "") -> argparse.ArgumentParser:
    """`--config C --inputs DIR --out DIR`: reads out/predictions.pt, writes metrics and plots into out."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    ap.add_argument("--config", required=True, help="the slot's YAML config")
    ap.add_argument("--inputs", required=True, help="the staged inputs directory the training read")
    ap.add_argument("--out", required=True, help="the training's output directory")
    ap.add_argument("--no-plots", action="store_true", help="skip the plots (tests)")
    return ap


def resolve_device(name: str) -> str:
    """auto -> cuda when available, else cpu; cuda without CUDA is a config error."""
    if name not in ("auto", "cpu", "cuda"):
        raise config_error(f"--device: {name!r} is not one of auto, cpu, cuda")
    if name == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if name == "cuda":
        raise config_error("--device: cuda requested but not available")
    return "cpu"


class ProgressWriter:
    """Appends `{"step","total","loss","elapsed_s"}` lines to progress.jsonl, at most
    every `every_s` seconds (always when forced), flushed each time."""

    def __init__(self, path: Path | str | None, total: int, every_s: float = 0.5):
        self.path, self.total, self.every_s = path, int(total), every_s
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.step = 0
        self.base = 0  # steps done by earlier phases
        self._f = open(path, "a") if path is not None else None

    def __call__(self, step: int, loss: float, force: bool = False) -> None:
        self.step = step
        now = time.perf_counter()
        if self._f is None or (not force and now - self.last < self.every_s):
            return
        self.last = now
        loss = float(loss)
        rec = {"step": int(step), "total": self.total, "loss": loss if math.isfinite(loss) else None,
               "elapsed_s": round(now - self.t0, 3)}
        self._f.write(json.dumps(rec) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def save_predictions(path: Path | str, predictions: dict[str, Any]) -> None:
    """Write the data-only predictions file (flat str -> tensor | number | str), atomically."""
    import torch

    for k, v in predictions.items():
        if not isinstance(k, str) or not isinstance(v, (torch.Tensor, int, float, str, bool)):
            raise TypeError(f"predictions[{k!r}] must be a tensor, number or string, not {type(v).__name__}")
    clean = {k: (v.detach().cpu().contiguous() if isinstance(v, torch.Tensor) else v) for k, v in predictions.items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(clean, tmp)
    os.replace(tmp, path)


def load_predictions(path: Path | str, required: dict[str, tuple | None] | None = None) -> dict[str, Any]:
    """Load a predictions file with weights_only (no code can travel in it) and check it.

    `required` maps names to an expected shape (a tuple; None in a tuple = any size)
    or to None (present, any shape). Raises EntryError("predictions") naming what is wrong.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise EntryError("predictions", f"predictions: {path.name} is missing (the training wrote no predictions)")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the training's
        raise EntryError("predictions", f"predictions: {path.name} cannot be read safely ({str(e).splitlines()[0][:200]})")
    if not isinstance(raw, dict) or not all(isinstance(k, str) for k in raw):
        raise EntryError("predictions", f"predictions: {path.name} must hold a flat name -> tensor dict")
    for name, shape in (required or {}).items():
        if name not in raw:
            raise EntryError("predictions", f"predictions: {name} is missing")
        v = raw[name]
        if shape is None:
            continue
        if not isinstance(v, torch.Tensor):
            raise EntryError("predictions", f"predictions: {name} must be a tensor, not {type(v).__name__}")
        if v.dim() != len(shape) or any(s is not None and s != d for s, d in zip(shape, v.shape)):
            raise EntryError("predictions", f"predictions: {name} has shape {tuple(v.shape)}, expected {shape}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise EntryError("predictions", f"predictions: {name} holds nan or inf")
    return raw


def write_metrics(out: Path | str, metrics: dict[str, float], analysis_lines: list[str]) -> None:
    """metrics.json (flat name -> number) and analysis.log (`name: value` lines), atomically."""
    out = Path(out)
    for name, text in ((METRICS_FILE, json.dumps(metrics, indent=1, sort_keys=False) + "\n"),
                       (ANALYSIS_FILE, "\n".join(analysis_lines) + "\n")):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)


#: environment variable that fixes the data secret (hex), e.g. to reproduce a dataset on another machine
DATA_SECRET_ENV = "GNN_AGENT_DATA_SECRET"
DATA_SECRET_FILE = "data-secret"


def cache_root(root: Path | str | None = None) -> Path:
    """The data cache: `root` when given, else $GNN_AGENT_CACHE, else ~/.cache/gnn-agent (where the data
    secret lives too, see `data_secret`)."""
    if root is not None:
        return Path(root)
    env = os.environ.get("GNN_AGENT_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "gnn-agent"


def data_secret(cache_root: Path | str) -> bytes:
    """The secret mixed into every simulation seed (docs/contracts.md §2b).

    The simulators are in the workspace and the seeds are in the config, so
    without a secret a training could regenerate the truth (W, S, k, types)
    from `simulation.seed` alone. The secret lives in the cache root, which the
    confined training cannot read; `GNN_AGENT_DATA_SECRET` (hex) overrides it
    (never passed to a training: the runner drops names containing SECRET).
    Same cache root (or same secret) + same config = same data.
    """
    env = os.environ.get(DATA_SECRET_ENV)
    if env:
        try:
            return bytes.fromhex(env.strip())
        except ValueError:
            raise config_error(f"{DATA_SECRET_ENV}: not a hex string") from None
    root = Path(cache_root)
    path = root / DATA_SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f"{DATA_SECRET_FILE}.{os.getpid()}.tmp"
    tmp.write_text(os.urandom(16).hex() + "\n")
    os.chmod(tmp, 0o600)
    try:
        os.link(tmp, path)  # first writer wins; concurrent generators agree on one secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return bytes.fromhex(path.read_text().strip())


def system_seed(seed: int, cache_root: Path | str, stream: str = "") -> int:
    """A 63-bit generator seed from `simulation.seed`, the data secret and a stream
    name (e.g. "network", "initial"): what every simulator seeds its generators with."""
    import hashlib

    h = hashlib.sha256(data_secret(cache_root) + f"|{int(seed)}|{stream}".encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1
