"""nodes.jsonl: append-only, durable, tolerant of a torn last line."""

import logging

import pytest

from rundir.records import NodeRecord
from rundir.store import Store


def _rec(i, parent=None, score=0.5):
    return NodeRecord(id=i, parent=parent, block=1, iter_in_block=i, iteration=(i + 1) // 2, slot=(i - 1) % 2,
                      score=score, metrics={"m": score}, classification="partial")


def test_append_and_reload(tmp_path):
    p = tmp_path / "nodes.jsonl"
    s = Store(p)
    for i in (1, 2, 3):
        s.append(_rec(i, parent=i - 1 or None, score=i / 10))
    again = Store(p)
    assert [n.id for n in again.nodes()] == [1, 2, 3]
    assert again.get(2).parent == 1 and again.best().id == 3
    assert len(p.read_text().splitlines()) == 3
    with pytest.raises(ValueError, match="already"):
        s.append(_rec(2))
    assert len(p.read_text().splitlines()) == 3


def test_torn_last_line_is_ignored_and_earlier_lines_kept(tmp_path, caplog):
    p = tmp_path / "nodes.jsonl"
    s = Store(p)
    s.append(_rec(1))
    s.append(_rec(2))
    full = _rec(3).model_dump_json()
    with open(p, "a") as f:
        f.write(full[: len(full) // 2])  # a crash mid-write
    with caplog.at_level(logging.WARNING):
        again = Store(p)
    assert [n.id for n in again.nodes()] == [1, 2]
    assert "torn last line" in caplog.text
    # the next append starts a fresh line; the earlier records survive
    again.append(_rec(3))
    third = Store(p)
    assert [n.id for n in third.nodes()] == [1, 2, 3]


def test_incremental_refresh_sees_other_writers(tmp_path):
    p = tmp_path / "nodes.jsonl"
    a, b = Store(p), Store(p)
    a.append(_rec(1))
    assert len(b) == 0
    b.refresh()
    assert [n.id for n in b.nodes()] == [1]
