"""nodes.jsonl: the node store, append-only, the source of truth of a run.

One `NodeRecord` per finished training. Every line is flushed and fsynced; a
torn last line (a crash mid-write) is ignored with a warning and never costs
an earlier line; `agent resume` moves it to nodes.jsonl.torn (`Store.repair`).
The file is read once and kept in memory keyed by id; later reads only parse
what was appended since. A replaced or truncated file is read again from the
start. `read_nodes` is the views' reader: the same parser, cached per file.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from rundir.paths import NODES
from rundir.records import NodeRecord

log = logging.getLogger(__name__)


class JsonlTail:
    """Incremental reader of an append-only .jsonl file: each `read()` returns the complete lines
    appended since the last one (a half-written last line waits for the next call). A replaced or
    truncated file is read again from the start (`reset` is then True once)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.offset = 0  # bytes of the file already consumed (complete lines only)
        self._inode: int | None = None
        self.tail = b""  # the incomplete last line seen by the latest read

    def read(self) -> tuple[list[bytes], bool]:
        """(new complete lines, whether the file was replaced/truncated so earlier lines are void)."""
        try:
            f = open(self.path, "rb")
        except OSError:
            return [], False
        with f:
            st = os.fstat(f.fileno())
            reset = (self._inode is not None and st.st_ino != self._inode) or st.st_size < self.offset
            if reset:
                self.offset = 0
            self._inode = st.st_ino
            if st.st_size <= self.offset:
                self.tail = b""
                return [], reset
            f.seek(self.offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self.tail = data[cut:]
        self.offset += cut
        return [raw for raw in data[:cut].splitlines() if raw.strip()], reset

    def mark_end(self) -> None:
        """The whole file is consumed (after the caller appended to it)."""
        st = self.path.stat()
        self.offset, self._inode, self.tail = st.st_size, st.st_ino, b""


class Store:
    """nodes.jsonl with an in-memory index by id."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._tail = JsonlTail(self.path)
        self._nodes: dict[int, NodeRecord] = {}
        self._best: NodeRecord | None = None  # kept incrementally (status.json asks often)
        self._warned_tail: tuple[int, int] | None = None
        self.refresh()

    # ----- reading -----

    def refresh(self) -> None:
        """Parse lines appended since the last read (cheap when nothing changed)."""
        lines, reset = self._tail.read()
        if reset:
            self._nodes, self._best = {}, None
        for raw in lines:
            try:
                rec = NodeRecord.model_validate_json(raw)
            except ValueError as e:
                log.warning("nodes.jsonl: skipping an unreadable line (%s)", str(e).splitlines()[0])
                continue
            self._add(rec)
        tail = self._tail.tail
        if tail.strip() and self._warned_tail != (self._tail.offset, len(tail)):
            # a torn last line: a crash mid-write; `agent resume` moves it aside (repair)
            self._warned_tail = (self._tail.offset, len(tail))
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
        self._tail.mark_end()

    def _torn_tail(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) != b"\n"


_VIEW_TAILS: dict[str, tuple[JsonlTail, list[dict]]] = {}
_VIEW_LOCK = threading.Lock()


def read_nodes(run_dir: Path) -> list[dict]:
    """nodes.jsonl records in file order, read leniently, for the views (`agent status`, the
    live view, the report): any JSON object counts, so a view shows what there is.

    The views read a few times a second, for runs of thousands of nodes: one `JsonlTail` per
    file is kept and only what was appended since the last call is parsed."""
    path = Path(run_dir) / NODES
    key = str(path.resolve())
    with _VIEW_LOCK:
        if not path.is_file():
            _VIEW_TAILS.pop(key, None)
            return []
        tail, recs = _VIEW_TAILS.get(key) or (JsonlTail(path), [])
        lines, reset = tail.read()
        if reset:
            recs = []
        new = []
        for raw in lines:
            try:
                obj = json.loads(raw.decode("utf-8", errors="replace"))
            except ValueError:
                continue
            if isinstance(obj, dict):
                new.append(obj)
        recs = recs + new
        _VIEW_TAILS[key] = (tail, recs)
        return list(recs)
