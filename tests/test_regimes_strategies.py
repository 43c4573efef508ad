"""Every built-in code strategy applies to the pristine science files, compiles and passes the guard."""

import ast
import builtins
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
    assert unbound_names(new_text) <= unbound_names(text), f"{strategy} uses a name it never defines"
    if check_code_edit is not None:
        assert check_code_edit(regime, s.file, text, new_text) == []


def unbound_names(source: str) -> set[tuple[str, str]]:
    """(function, name) for each name a function reads but nothing binds: not its arguments or assignments
    (any scope of the function), not a module-level name, not a builtin. Coarse (no flow analysis), enough to
    catch a strategy whose replaced text reads a variable its insertion never defines (4-rollout-curriculum's
    Tc, when its anchor moved)."""
    tree = ast.parse(source)
    module = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    for n in ast.walk(tree):
        if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            module.add(n.name)
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            module.update((a.asname or a.name).split(".")[0] for a in n.names)
    known = module | set(dir(builtins))
    out = set()
    for fn in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
        bound = {a.arg for a in ast.walk(fn) if isinstance(a, ast.arg)}
        bound |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, (ast.Store, ast.Del))}
        out |= {(fn.name, n.id) for n in ast.walk(fn)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound | known}
    return out


def test_unbound_names_sees_a_read_without_a_binding():
    assert unbound_names("def f(a):\n    return a + b\n") == {("f", "b")}
    assert unbound_names("import math\nK = 1\ndef f(a):\n    c = a\n    return math.pi + K + c + len([])\n") == set()
