"""`agent new-regime NAME --dir DIR`: write a working regime plugin to start from.

The template (regimes/scaffold_template/toyregime/) is a complete plugin and
science package: a linear network ODE as toy simulator, a small model, and
the two-process contract of docs/contracts.md §2b: a stage function (run 0 and
the queries into a private inputs directory), a training entry that reads
only those (progress.jsonl, model.pt, predictions.pt) and a trusted
evaluation entry (metrics.json, analysis.log, plots from the predictions, the
truth and the held-out run), all on `regimes.runtime`; default configs,
instructions and a README. The scaffolded plugin lives outside this
repository: its stage and evaluation import the installed `regimes.runtime`,
its confined training the copy every workspace holds.
Scaffolding copies it to DIR/NAME/ and renames the package to NAME, so the
package is importable with DIR on PYTHONPATH (as the sandbox runs it) and the
registry finds it with `--regime-path DIR`.
"""

from __future__ import annotations

import importlib.util
import keyword
import re
import shutil
from pathlib import Path

TEMPLATE_DIR = Path(__file__).resolve().parent / "scaffold_template" / "toyregime"
TEMPLATE_NAME = "toyregime"
TEMPLATE_CLASS = "ToyRegime"
#: top-level names of this project: a plugin package must not shadow them
RESERVED = {"regimes", "agent", "tools", "sandbox", "prompts", "tests", "benchmarks", TEMPLATE_NAME}
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class ScaffoldError(ValueError):
    """The name or the target directory cannot be used (one-line message)."""


def _check_name(name: str) -> None:
    from regimes.registry import BUILTIN_MODULES

    if not _NAME.match(name) or keyword.iskeyword(name):
        raise ScaffoldError(f"regime name {name!r}: use lower-case letters, digits and '_', starting with a letter "
                            "(it is also the Python package name)")
    builtin_names = {m.rsplit(".", 1)[1] for m in BUILTIN_MODULES}
    if name in builtin_names or name in RESERVED:
        raise ScaffoldError(f"regime name {name!r} collides with a built-in regime or package of gnn-agent")
    if importlib.util.find_spec(name) is not None:
        raise ScaffoldError(f"regime name {name!r}: an importable module of that name already exists "
                            "(the plugin package would shadow it or be shadowed)")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_") if part)


def scaffold_regime(name: str, dir: Path | str) -> Path:
    """Write a working plugin to `dir/name/` and return that directory.

    The package is renamed from the template's `toyregime` to `name`
    everywhere (imports, train entry, editable paths, cache key).
    """
    _check_name(name)
    root = Path(dir).expanduser()
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"--dir {root}: not a directory")
    dest = root / name
    if dest.exists():
        raise ScaffoldError(f"{dest} already exists; choose another name or directory")
    if not TEMPLATE_DIR.is_dir():
        raise ScaffoldError(f"the scaffold template is missing ({TEMPLATE_DIR}); reinstall gnn-agent")
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(TEMPLATE_DIR, tmp, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    camel = _camel(name)
    for path in sorted(tmp.rglob("*")):
        if path.is_file() and path.suffix in (".py", ".md", ".yaml", ".toml"):
            text = path.read_text()
            path.write_text(text.replace(TEMPLATE_CLASS, camel).replace(TEMPLATE_NAME, name))
    tmp.rename(dest)  # appear complete or not at all
    return dest
