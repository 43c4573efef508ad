"""Time `agent run --policy claude` to its exit with a bad key, model or base URL,
against the loopback Messages API (tests/fake_anthropic.py; no network).

    python -m benchmarks.claude_bad_key [--repeat 2]

Prints one JSON line per case and try: exit code, wall and CPU seconds of the
`agent` process, its stderr lines, whether a run directory was left behind.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_anthropic import FakeAnthropic

    fake = FakeAnthropic().start()
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    base = [sys.executable, "-m", "agent", "run", "--regime", "toy", "--regime-path",
            str(ROOT / "tests/fixtures/toy_regime/plugins"), "--slots", "2", "--iterations", "2",
            "--policy", "claude", "--no-live"]
    cases = {"bad key": ({"ANTHROPIC_API_KEY": "sk-wrong", "ANTHROPIC_BASE_URL": fake.url}, []),
             "bad model": ({"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": fake.url},
                           ["--model", "claude-nope-9"]),
             "bad base URL": ({"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{dead}"}, [])}
    tmp = Path(tempfile.mkdtemp(prefix="bad-key-"))
    try:
        for name, (env, extra) in cases.items():
            for k in range(a.repeat):
                run_dir = tmp / f"{name.replace(' ', '_')}_{k}"
                t0, r0 = time.monotonic(), os.times()
                p = subprocess.run(base + ["--run-dir", str(run_dir)] + extra, cwd=ROOT, capture_output=True,
                                   text=True, env={**os.environ, **env})
                r1 = os.times()
                print(json.dumps({"case": name, "exit": p.returncode, "wall_s": round(time.monotonic() - t0, 2),
                                  "cpu_s": round(r1.children_user - r0.children_user
                                                 + r1.children_system - r0.children_system, 2),
                                  "stderr": [ln for ln in p.stderr.splitlines() if ln.strip()],
                                  "run_dir_left": run_dir.exists()}))
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
