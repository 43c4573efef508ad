"""The node store: run_dir/nodes.jsonl, append-only, the source of truth.

One JSON object per finished training (docs/contracts.md §5). Every line is
flushed and fsynced; a torn last line (a crash mid-write) is ignored with a
warning and never costs an earlier line; `agent resume` moves it to
nodes.jsonl.torn (`Store.repair`). The file is read once and kept in
memory keyed by id; later reads only parse what was appended since.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)


class DegeneracyRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")
    gap: float | None = None
    diagnosis: str = "n/a"


class NodeRecord(BaseModel):
    """One finished training (one iteration)."""

    model_config = ConfigDict(extra="forbid")

    id: int
    parent: int | None  # None: root
    block: int
    iter_in_block: int
    iteration: int  # 1-based batch index
    slot: int
    strategy: str = ""
    mutation: str = ""
    parent_rule: str = ""
    config: dict[str, Any] = Field(default_factory=dict)
    commit: str | None = None
    status: Literal["ok", "failed", "timeout", "killed"] = "ok"
    classification: Literal["converged", "partial", "failed"] = "failed"
    score: float = 0.0
    metrics: dict[str, float] = Field(default_factory=dict)
    degeneracy: DegeneracyRecord = Field(default_factory=DegeneracyRecord)
    visual: str = ""
    observation: str = ""
    next: str = ""
    duration_s: float = 0.0
    out_dir: str = ""
    finished_at: str = ""
    # extras (allowed by contracts: "extend if needed")
    hypothesis: str = ""
    code_changes: list[dict[str, str]] = Field(default_factory=list)
    reason: str = ""


class Store:
    """nodes.jsonl with an in-memory index by id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._nodes: dict[int, NodeRecord] = {}
        self._offset = 0  # bytes of the file already parsed (complete lines only)
        self._best: NodeRecord | None = None  # kept incrementally (status.json asks often)
        self._warned_tail: tuple[int, int] | None = None
        self.refresh()

    # ----- reading -----

    def refresh(self) -> None:
        """Parse lines appended since the last read (cheap when nothing changed)."""
        if not self.path.exists():
            return
        size = self.path.stat().st_size
        if size <= self._offset:
            return
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n")
        complete, tail = (data[: end + 1], data[end + 1:]) if end >= 0 else (b"", data)
        for raw in complete.splitlines():
            if not raw.strip():
                continue
            try:
                rec = NodeRecord.model_validate_json(raw)
            except ValueError as e:
                log.warning("nodes.jsonl: skipping an unreadable line (%s)", str(e).splitlines()[0])
                continue
            self._add(rec)
        self._offset += len(complete)
        if tail.strip() and self._warned_tail != (self._offset, len(tail)):
            # a torn last line: a crash mid-write; `agent resume` moves it aside (repair)
            self._warned_tail = (self._offset, len(tail))
            log.warning("nodes.jsonl: ignoring a torn last line (%d bytes)", len(tail))

    def nodes(self) -> list[NodeRecord]:
        """All records, by id."""
        return [self._nodes[k] for k in sorted(self._nodes)]

    def get(self, node_id: int) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def max_id(self) -> int:
        return max(self._nodes, default=0)

    def block_nodes(self, block: int) -> list[NodeRecord]:
        return [n for n in self.nodes() if n.block == block]

    def best(self) -> NodeRecord | None:
        """Highest score (earliest id on ties)."""
        return self._best

    def _add(self, rec: NodeRecord) -> None:
        self._nodes[rec.id] = rec
        b = self._best
        if b is None or rec.score > b.score or (rec.score == b.score and rec.id < b.id):
            self._best = rec

    @staticmethod
    def repair(path: Path) -> list[str]:
        """Move the unreadable lines of the store file `path` (a torn last line, or one a later
        append closed) to nodes.jsonl.torn and rewrite the file without them. Returns one note per
        line moved. Only a driver holding the run's lock may call it (agent resume does, first)."""
        path = Path(path)
        if not path.exists():
            return []
        data = path.read_bytes()
        good, bad = [], []
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            try:
                NodeRecord.model_validate_json(raw)
                good.append(raw)
            except ValueError:
                bad.append(raw)
        if not bad:
            return []
        aside = path.with_name(path.name + ".torn")
        with open(aside, "ab") as f:
            for raw in bad:
                f.write(raw + b"\n")
            f.flush()
            os.fsync(f.fileno())
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(b"".join(raw + b"\n" for raw in good))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return [f"{path.name}: moved an unreadable line ({len(raw)} bytes, a write cut short by a crash) "
                f"to {aside.name}" for raw in bad]

    # ----- writing -----

    def append(self, rec: NodeRecord) -> None:
        """Append one record durably (flush + fsync). A duplicate id is an error."""
        self.refresh()
        if rec.id in self._nodes:
            raise ValueError(f"node {rec.id} is already in {self.path.name}")
        line = rec.model_dump_json() + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() > 0 and self._torn_tail():
                f.write(b"\n")  # close a torn line so the new record stands alone
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        self._add(rec)
        self._offset = self.path.stat().st_size

    def _torn_tail(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"


def dump_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON via tmp + rename so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
