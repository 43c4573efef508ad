"""Find regime plugins: the built-ins, entry points, and `--regime-path` directories.

Sources, in order:
1. built-ins (the modules in BUILTIN_MODULES, each defining ``REGIME``);
2. entry points of group ``gnn_agent.regimes`` (an entry point loads a
   `Regime` instance or a zero-arg callable returning one);
3. each ``--regime-path DIR``: every ``DIR/*/regime.py`` and every
   ``DIR/*.py`` that defines ``REGIME``.

A duplicate name or a malformed plugin raises `RegimeError` with one line
naming the plugin, its source and the offending field.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from regimes.base import Regime

ENTRY_POINT_GROUP = "gnn_agent.regimes"
BUILTIN_MODULES = (
    "regimes.stoichiometry",
    "regimes.rate_constants",
    "regimes.homeostasis",
    "regimes.sparse_connectivity",
    "regimes.low_rank_connectivity",
)


class RegimeError(Exception):
    """A regime cannot be found or a plugin is malformed (one-line message)."""


def _validation_line(err: ValidationError) -> str:
    """A pydantic ValidationError as `field X: message; field Y: message`."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(model)"
        msg = e.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"field {loc}: {msg}")
    return "; ".join(parts)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _coerce(obj: Any, source: str) -> Regime:
    """Turn what a plugin exports (instance or zero-arg callable) into a checked Regime."""
    try:
        if isinstance(obj, type) and issubclass(obj, Regime):
            obj = obj()
        elif not isinstance(obj, Regime) and callable(obj):
            obj = obj()
    except ValidationError as e:
        raise RegimeError(f"regime plugin {source}: {_validation_line(e)}") from None
    except RegimeError:
        raise
    except Exception as e:  # a plugin's own bug: name it, do not crash the listing with a traceback
        raise RegimeError(f"regime plugin {source}: building the regime failed: {_first_line(e)}") from None
    if not isinstance(obj, Regime):
        raise RegimeError(f"regime plugin {source}: REGIME must be a regimes.base.Regime instance "
                          f"(or a zero-arg callable returning one), got {type(obj).__name__}")
    _check_plugin(obj, source)
    return obj


def _check_plugin(r: Regime, source: str, builtin: bool = False) -> None:
    """Checks the pydantic model cannot make alone (files exist, names consistent)."""
    def bad(field: str, msg: str) -> RegimeError:
        return RegimeError(f"regime plugin {r.name!r} ({source}): field {field}: {msg}")

    if not r.name or not r.name.replace("_", "").replace("-", "").isalnum():
        raise bad("name", f"{r.name!r} must be letters, digits, '_' or '-'")
    if not Path(r.instructions).is_file():
        raise bad("instructions", f"file {r.instructions} does not exist")
    if not builtin and not Path(r.package_dir).is_dir():
        raise bad("package_dir", f"directory {r.package_dir} does not exist")
    metric_names = {m.name for m in r.metrics}
    for m in r.log_metrics:
        if m not in metric_names:
            raise bad("log_metrics", f"{m!r} is not among the declared metrics")
    for m in r.metric_labels:
        if m not in metric_names:
            raise bad("metric_labels", f"{m!r} is not among the declared metrics")
    for short, key in r.log_config.items():
        if "." not in key:
            raise bad("log_config", f"{short}: {key!r} must be a dotted key, e.g. 'training.{key}'")
    if r.train_entry != r.package and not r.train_entry.startswith(r.package + "."):
        raise bad("train_entry", f"{r.train_entry!r} must be package {r.package!r} or one of its modules")
    for s in r.code_strategies:
        if s.file not in {e.path for e in r.editable}:
            raise bad("code_strategies", f"strategy {s.name!r} edits {s.file}, which is not editable")


def _import_file(path: Path) -> Any:
    """Import a plugin file under a private module name unique to its path and version
    (an edited plugin file is imported afresh, an unchanged one only once)."""
    st = path.stat()
    digest = hashlib.sha1(f"{path.resolve()}:{st.st_mtime_ns}:{st.st_size}".encode()).hexdigest()[:10]
    mod_name = f"_gnn_agent_plugin_{digest}_{path.stem}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(mod_name, None)
        raise
    return module


def _load_file_plugin(path: Path, require: bool) -> Regime | None:
    source = f"file {path}"
    # A plugin directory's parent goes on sys.path, so `import <pkg>` in regime.py
    # and in the science package resolves the way the sandbox's PYTHONPATH will.
    root = str(path.parent.parent if path.name == "regime.py" else path.parent)
    if root not in sys.path:
        sys.path.append(root)
    try:
        module = _import_file(path)
    except ValidationError as e:
        raise RegimeError(f"regime plugin {source}: {_validation_line(e)}") from None
    except Exception as e:
        raise RegimeError(f"regime plugin {source}: import failed: {_first_line(e)}") from None
    if not hasattr(module, "REGIME"):
        if require:
            raise RegimeError(f"regime plugin {source}: defines no REGIME")
        return None
    return _coerce(module.REGIME, source)


def _builtin() -> Iterable[tuple[Regime, str]]:
    for mod in BUILTIN_MODULES:
        source = f"built-in module {mod}"
        try:
            module = importlib.import_module(mod)
        except ValidationError as e:
            raise RegimeError(f"regime plugin {source}: {_validation_line(e)}") from None
        r = module.REGIME
        _check_plugin(r, source, builtin=True)
        yield r, source


def _entry_points() -> Iterable[tuple[Regime, str]]:
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.module in BUILTIN_MODULES:  # an installed copy of a built-in: already listed
            continue
        source = f"entry point {ep.name} = {ep.value}"
        try:
            obj = ep.load()
        except ValidationError as e:
            raise RegimeError(f"regime plugin {source}: {_validation_line(e)}") from None
        except Exception as e:
            raise RegimeError(f"regime plugin {source}: import failed: {_first_line(e)}") from None
        yield _coerce(obj, source), source


def _path_plugins(dirs: Iterable[Path]) -> Iterable[tuple[Regime, str]]:
    for d in dirs:
        d = Path(d)
        if not d.is_dir():
            raise RegimeError(f"--regime-path {d}: not a directory")
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            f = sub / "regime.py"
            if f.is_file():
                r = _load_file_plugin(f, require=True)
                yield r, f"file {f}"
        for f in sorted(d.glob("*.py")):
            if f.name.startswith("_"):
                continue
            r = _load_file_plugin(f, require=False)
            if r is not None:
                yield r, f"file {f}"


def _collect(regime_path: list[Path] | Path | str | None) -> dict[str, tuple[Regime, str]]:
    if isinstance(regime_path, (str, Path)):
        regime_path = [Path(regime_path)]
    found: dict[str, tuple[Regime, str]] = {}
    for source_iter in (_builtin(), _entry_points(), _path_plugins(regime_path or [])):
        for r, source in source_iter:
            if r.name in found:
                prev = found[r.name][1]
                if found[r.name][0] is r:
                    continue
                raise RegimeError(f"duplicate regime name {r.name!r}: {source} and {prev} both define it")
            found[r.name] = (r, source)
    return found


def list_regimes(regime_path: list[Path] | Path | str | None = None) -> list[Regime]:
    """Every available regime (built-ins first, then entry points, then --regime-path)."""
    return [r for r, _ in _collect(regime_path).values()]


def regime_source(name: str, regime_path: list[Path] | Path | str | None = None) -> str:
    """Where a regime comes from (e.g. ``built-in module regimes.homeostasis``)."""
    found = _collect(regime_path)
    if name not in found:
        raise RegimeError(_unknown(name, found))
    return found[name][1]


def _unknown(name: str, found: dict) -> str:
    return f"unknown regime {name!r}; valid choices: {', '.join(sorted(found))}"


def get_regime(name: str, regime_path: list[Path] | Path | str | None = None) -> Regime:
    """The regime called `name`; RegimeError listing the valid choices when there is none."""
    found = _collect(regime_path)
    if name not in found:
        raise RegimeError(_unknown(name, found))
    return found[name][0]
