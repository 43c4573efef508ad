"""Atomic writes and lenient reads of run-directory files, and the one timestamp format.

Writers go through a temporary file and `os.replace`, so a reader (the live
view, `agent status`, a resumed run) never sees half a file. Readers return
None / empty for a file that is missing or half-written: a view must not fail
because the loop is writing.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import yaml

#: the C loader/dumper when libyaml is there: configs are read many times per batch
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)

#: every timestamp a run writes: UTC, second resolution, ISO 8601 with Z
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def utc_now() -> str:
    """Now, as every run-directory file stamps it (``2026-12-02T01:02:03Z``)."""
    return time.strftime(TIME_FORMAT, time.gmtime())


def utc_stamp() -> str:
    """Now as a directory-name suffix (``20261202-010203``, UTC): run and replay directories."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime())


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` via tmp + rename (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def dump_json_atomic(path: Path, obj: Any) -> None:
    """JSON via tmp + rename so readers never see half a file."""
    write_text_atomic(path, json.dumps(obj, indent=1, default=str))


def load_yaml(path: Path) -> dict:
    """A YAML mapping ({} for an empty file); errors propagate (a config must be readable)."""
    return yaml.load(Path(path).read_text(), Loader=_Loader) or {}


def dump_yaml_atomic(path: Path, data: dict) -> None:
    """YAML (key order kept) via tmp + rename."""
    write_text_atomic(path, yaml.dump(data, Dumper=_Dumper, sort_keys=False))


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line (the run's logs: rejected.jsonl, policy_steps.jsonl)."""
    with open(path, "a") as f:
        f.write(json.dumps(obj, default=str) + "\n")


def read_json(path: Path) -> Any:
    """Parsed JSON of a file, or None when it is missing or half-written."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def read_yaml_lenient(path: Path) -> dict:
    """A YAML mapping, or {} when the file is absent, unreadable or not a mapping (views)."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_jsonl(path: Path) -> list[dict]:
    """All complete JSON objects of a .jsonl file (a half-written last line is skipped)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def tail_lines(path: Path, n: int, max_bytes: int = 16384) -> list[str]:
    """The last `n` non-empty lines of a text file, reading at most `max_bytes` from its end."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    lines = [ln for ln in data.splitlines() if ln.strip()]
    if size > max_bytes and lines:
        lines = lines[1:]  # the first line is probably cut
    return lines[-n:] if n else []


_COST_CACHE: dict[str, tuple[int, float, int]] = {}  # path -> (bytes, total, calls)


def llm_cost(run_dir: Path) -> tuple[float, int]:
    """(total cost in USD, number of calls) of llm_calls.jsonl; re-read only when the file grew."""
    path = Path(run_dir) / "llm_calls.jsonl"
    try:
        size = path.stat().st_size
    except OSError:
        return 0.0, 0
    key = str(path.resolve())
    cached = _COST_CACHE.get(key)
    if cached is not None and cached[0] == size:
        return cached[1], cached[2]
    calls = read_jsonl(path)
    total = 0.0
    for c in calls:
        v = c.get("cost_usd", c.get("cost"))
        if isinstance(v, (int, float)) and math.isfinite(v):
            total += float(v)
    _COST_CACHE[key] = (size, total, len(calls))
    return total, len(calls)
