"""Issue 19: every kill point is recoverable — creation, each file write of the loop, each git call,
each checkpoint — walked by tests/_killwalk.py (forked children dying by os._exit, like SIGKILL)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _walk(tmp_path: Path, *args: str, timeout: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "tests._killwalk", str(tmp_path / "walk"), *args], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(900)
def test_a_sample_of_kill_points_over_creation_and_the_loop_is_recoverable(tmp_path):
    # every 29th of ~330 points of a 2-batch run with a block end, and a second kill during every
    # other recovery (~25 s of CPU; the full walk below is marked slow)
    res = _walk(tmp_path, "--iterations", "4", "--stride", "29", "--double", "2", timeout=900)
    assert res["points"] > 250 and res["tried"] >= res["points"] // 29
    assert res["unrecoverable"] == []
    assert {"open", "checkpoint"} <= set(res["kinds"]) and len(res["kinds"]) >= 3


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_every_kill_point_is_recoverable(tmp_path):
    res = _walk(tmp_path, "--iterations", "6", "--stride", "1", "--double", "10", timeout=7200)
    assert res["unrecoverable"] == [] and res["tried"] > res["points"]
