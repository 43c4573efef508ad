"""Every built-in code strategy applies to the pristine science files, compiles and passes the guard."""

from pathlib import Path

import pytest

from regimes.registry import get_regime

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["stoichiometry", "rate_constants", "homeostasis", "sparse_connectivity", "low_rank_connectivity"]
CASES = [(n, s.name) for n in NAMES for s in get_regime(n).code_strategies]

try:
    from sandbox.guard import check_code_edit
except ImportError:  # the guard is another part; without it the text checks still run
    check_code_edit = None


def test_every_regime_with_code_edits_has_strategies():
    counts = {n: len(get_regime(n).code_strategies) for n in NAMES}
    assert counts["homeostasis"] == 8 and min(counts.values()) >= 3
    names = {s.name for s in get_regime("sparse_connectivity").code_strategies}
    assert {"W-init-1/sqrt(n)", "grad-clip-W", "cosine-lr", "proximal-L1", "zero-diagonal"} <= names


@pytest.mark.parametrize("regime_name,strategy", CASES)
def test_strategy_applies_compiles_and_passes_guard(regime_name, strategy):
    regime = get_regime(regime_name)
    s = next(c for c in regime.code_strategies if c.name == strategy)
    assert s.hypothesis and s.old != s.new
    path = ROOT / s.file
    text = path.read_text()
    assert text.count(s.old) == 1, f"{s.file}: the old text of {strategy} must occur exactly once"
    new_text = text.replace(s.old, s.new)
    compile(new_text, str(path), "exec")
    if check_code_edit is not None:
        assert check_code_edit(regime, s.file, text, new_text) == []
