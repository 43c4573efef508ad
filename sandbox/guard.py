"""The edit guard (docs/contracts.md §4, docs/architecture.md): what a code edit must pass before it is committed.

`check_path` checks where an edit goes; `check_code_edit` checks what it
changes. Every failure is one short line naming the file, the function or
region, and the line. Checks of `check_code_edit`:

- the file is listed in `regime.editable`;
- the new text compiles;
- only the allowed functions (bodies) or marker regions (interiors) differ:
  the ASTs of old and new with those bodies blanked must be equal, and the
  text outside the editable lines must be equal too (comments, blank lines);
- signatures of the allowed functions and the region markers are unchanged;
- code added in the editable parts imports only from `regime.import_allowlist`
  (the package's own modules are allowed, except its evaluation module and
  anything naming ground truth), makes no dynamic import and calls none of
  open / eval / exec / os.system / subprocess and similar escape hatches;
- code added in the editable parts mentions none of `regime.truth_identifiers`
  (identifiers, attributes, string constants, so no path built from them) and
  no name bound to the evaluation module.

Pre-existing code in an editable part is not re-judged: a finding is an error
only when the edit adds it (counted per source line), so an edit next to an
existing `import yaml` is not blamed for it.
"""

from __future__ import annotations

import ast
import copy
import io
import re
import tokenize
from collections import Counter
from pathlib import Path, PurePosixPath

from regimes.base import EditableFile, Regime

MARKER_START = re.compile(r"^\s*#\s*>>>\s*editable:\s*([A-Za-z0-9_.\-]+)\b.*$")
MARKER_END = re.compile(r"^\s*#\s*<<<\s*editable\b.*$")

#: names edited code may not use: file access, dynamic code, dynamic imports, processes
FORBIDDEN_NAMES = {
    "open": "opens a file", "eval": "evaluates code", "exec": "executes code", "compile": "compiles code",
    "__import__": "dynamic import", "importlib": "dynamic import", "subprocess": "starts processes",
    "__builtins__": "reaches the builtins", "builtins": "reaches the builtins", "globals": "reaches globals",
    "locals": "reaches locals", "vars": "reaches namespaces", "breakpoint": "starts a debugger",
    "input": "reads stdin",
}
#: attributes edited code may not use, on any object
FORBIDDEN_ATTRS = {
    "open": "opens a file", "read_text": "reads a file", "read_bytes": "reads a file", "fdopen": "opens a file",
    "system": "runs a shell command", "popen": "runs a shell command", "__import__": "dynamic import",
    "import_module": "dynamic import", "__builtins__": "reaches the builtins", "__globals__": "reaches globals",
    "__subclasses__": "reaches arbitrary classes", "__code__": "rewrites code", "__loader__": "reaches the loader",
    "forkpty": "starts processes",
}
#: attributes forbidden on the modules os and sys only (`model.modules()` is fine, `sys.modules` is not)
FORBIDDEN_MODULE_ATTRS = {("sys", "modules"): "reaches sys.modules", ("os", "fork"): "starts processes",
                          ("os", "kill"): "signals processes", ("os", "killpg"): "signals processes"}
#: attribute prefixes forbidden on os: os.execv, os.spawnl, os.posix_spawn ...
FORBIDDEN_OS_PREFIXES = {"exec": "executes a program", "spawn": "starts processes", "posix_spawn": "starts processes"}
#: functions of the science packages' data modules that reach the dataset cache (where the truth
#: file and the held-out run live): training code gets its data as arguments, never by path
DATA_ACCESS_NAMES = {"load_or_generate", "dataset_dir", "cache_dir", "cache_root", "cache_key", "load_inputs",
                     "load_test_run", "dataset_info", "load_truth", "training_data_from_inputs",
                     # the two-process layout (contracts §2b): cache handles, staging, data generation
                     # and the data secret (regenerating the truth from the seed is the route it closes)
                     "open_cache", "CacheEntry", "heldout", "generate", "stage", "make_connectivity",
                     "data_secret", "system_seed", "DATA_SECRET_ENV", "DATA_SECRET_FILE"}
#: file readers: `torch.load(p)` reads any file, incl. the truth file by a path not spelled out
FILE_READER_OWNERS = {"torch", "np", "numpy", "pickle", "json", "yaml", "joblib", "scipy", "io", "shutil"}
FILE_READER_ATTRS = {"load", "loads", "loadtxt", "fromfile", "memmap", "genfromtxt", "load_npz", "loadmat",
                     "safe_load", "full_load", "unsafe_load", "copy", "copyfile", "FileIO"}
#: builtins that reach attributes by a name computed at run time
DYNAMIC_ATTR_CALLS = {"getattr", "setattr", "hasattr", "delattr"}
#: the science package's module that reads the truth file (contracts §2)
EVALUATION_MODULE = "evaluate"


# ----- paths -----

def _editable_entry(regime: Regime, path: str) -> EditableFile | None:
    norm = PurePosixPath(path).as_posix().removeprefix("./")
    for ef in regime.editable:
        if PurePosixPath(ef.path).as_posix().removeprefix("./") == norm:
            return ef
    return None


def check_path(regime: Regime, workspace_root: Path, path: str) -> str | None:
    """None when `path` may be edited, else one line saying why not.

    The path must be relative, without '..', inside the workspace, reached
    through no symlink, and listed in `regime.editable`.
    """
    if not path or not str(path).strip():
        return "edit path is empty"
    p = Path(path)
    if p.is_absolute():
        return f"{path}: absolute paths are not allowed; give the path relative to the workspace"
    if ".." in p.parts:
        return f"{path}: '..' is not allowed in an edit path"
    root = Path(workspace_root).resolve()
    cur = root
    for part in p.parts:
        cur = cur / part
        if cur.is_symlink():
            return f"{path}: {cur.relative_to(root).as_posix()} is a symlink; edits may not go through symlinks"
    try:
        (root / p).resolve().relative_to(root)
    except ValueError:
        return f"{path}: resolves outside the workspace"
    if _editable_entry(regime, str(p)) is None:
        listed = ", ".join(ef.path for ef in regime.editable) or "none"
        return f"{path}: not an editable file of regime {regime.name} (editable: {listed})"
    return None


# ----- spans of editable lines -----

def _find_function(tree: ast.Module, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
    funcs = (ast.FunctionDef, ast.AsyncFunctionDef)
    if "." in name:
        cls_name, meth = name.split(".", 1)
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == cls_name:
                for sub in node.body:
                    if isinstance(sub, funcs) and sub.name == meth:
                        return sub
        return None
    for node in tree.body:
        if isinstance(node, funcs) and node.name == name:
            return node
    return None


def _header_end_line(lines: list[str], fn: ast.AST) -> int:
    """Line of the colon that ends a def header (signatures may span lines)."""
    src = "".join(lines[fn.lineno - 1:])
    depth = 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(src).readline):
            if tok.type == tokenize.OP:
                if tok.string in "([{":
                    depth += 1
                elif tok.string in ")]}":
                    depth -= 1
                elif tok.string == ":" and depth == 0:
                    return fn.lineno + tok.start[0] - 1
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return fn.body[0].lineno - 1 if fn.body[0].lineno > fn.lineno else fn.lineno


def _function_span(lines: list[str], fn: ast.AST) -> tuple[int, int]:
    """1-based inclusive lines of a function body, with trailing comments indented into it."""
    start = _header_end_line(lines, fn) + 1
    if fn.body[0].lineno < start:  # body on the header line: `def f(): return 1`
        start = fn.body[0].lineno
    end = fn.end_lineno
    j = end
    while j < len(lines):
        s = lines[j]
        if not s.strip():
            j += 1
            continue
        indent = len(s) - len(s.lstrip())
        if s.lstrip().startswith("#") and indent > fn.col_offset:
            j += 1
            end = j
            continue
        break
    return start, end


def _signature(fn: ast.AST) -> str:
    parts = [type(fn).__name__, ast.dump(fn.args), ast.dump(fn.returns) if fn.returns else "",
             *[ast.dump(d) for d in fn.decorator_list]]
    parts += [ast.dump(t) for t in getattr(fn, "type_params", [])]
    return "|".join(parts)


def _regions(lines: list[str]) -> tuple[list[tuple[str, int, int]], str | None]:
    """Marker regions as (name, start marker line, end marker line), or an error."""
    out: list[tuple[str, int, int]] = []
    open_name, open_line = None, 0
    for i, line in enumerate(lines, 1):
        m = MARKER_START.match(line)
        if m:
            if open_name is not None:
                return out, f"line {i}: region marker '{m.group(1)}' opens inside region '{open_name}'"
            open_name, open_line = m.group(1), i
        elif MARKER_END.match(line):
            if open_name is None:
                return out, f"line {i}: '# <<< editable' without an opening marker"
            out.append((open_name, open_line, i))
            open_name = None
    if open_name is not None:
        return out, f"line {open_line}: region '{open_name}' is never closed ('# <<< editable')"
    return out, None


class _Spans:
    """Editable lines of one text: label per line (None = not editable)."""

    def __init__(self, n_lines: int):
        self.label: list[str | None] = [None] * (n_lines + 2)

    def add(self, start: int, end: int, label: str) -> None:
        for i in range(max(1, start), min(end, len(self.label) - 2) + 1):
            if self.label[i] is None:
                self.label[i] = label

    def lines(self) -> set[int]:
        return {i for i, lab in enumerate(self.label) if lab is not None}

    def where(self, line: int) -> str:
        lab = self.label[line] if 0 <= line < len(self.label) else None
        return lab or "outside the editable parts"

    def masked(self, lines: list[str]) -> list[tuple[int, str]]:
        """(line number, text) of non-editable lines; each editable run collapses to one placeholder."""
        out: list[tuple[int, str]] = []
        prev = None
        for i, text in enumerate(lines, 1):
            lab = self.label[i]
            if lab is None:
                out.append((i, text.rstrip("\n")))
            elif lab != prev:
                out.append((i, f"\0<{lab}>"))
            prev = lab
        return out


def _where_stmt(stmt: ast.stmt) -> str:
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return f"in function {stmt.name}"
    if isinstance(stmt, ast.ClassDef):
        return f"in class {stmt.name}"
    return "at module level"


def _first_stmt_difference(ob: list[ast.stmt], nb: list[ast.stmt]) -> tuple[int, ast.stmt] | None:
    """(line in new, top statement) of the first differing statement, descending into blocks."""
    for i in range(max(len(ob), len(nb))):
        o = ob[i] if i < len(ob) else None
        n = nb[i] if i < len(nb) else None
        if o is not None and n is not None and ast.dump(o) == ast.dump(n):
            continue
        if o is None or n is None:
            stmt = n if n is not None else o
            return (n.lineno if n is not None else (nb[-1].end_lineno if nb else 1)), stmt
        if type(o) is type(n):
            for field in ("body", "orelse", "finalbody"):
                ol, nl = getattr(o, field, None), getattr(n, field, None)
                if isinstance(ol, list) and isinstance(nl, list) and ast.dump(ast.Module(ol, [])) != ast.dump(
                        ast.Module(nl, [])):
                    inner = _first_stmt_difference(ol, nl)
                    if inner is not None:
                        return inner[0], n
        return n.lineno, n
    return None


def _first_ast_difference(old: ast.Module, new: ast.Module) -> tuple[int, str]:
    """(line in new, where) of the first statement that differs."""
    found = _first_stmt_difference(old.body, new.body)
    if found is None:
        return 1, "at module level"
    return found[0], _where_stmt(found[1])


def _blanked(text: str, tree: ast.Module, ef: EditableFile, regions: list[tuple[str, int, int]]) -> ast.Module | None:
    """The module with the allowed function bodies and region interiors blanked.

    A region becomes one `pass` on its marker line (line numbers are kept);
    None when that masked text does not parse (the text comparison still applies).
    """
    if any(name in ef.regions for name, _, _ in regions):
        lines = text.splitlines()
        for name, start, end in regions:
            if name not in ef.regions:
                continue
            marker = lines[start - 1]
            lines[start - 1] = marker[: len(marker) - len(marker.lstrip())] + "pass"
            for i in range(start, end - 1):
                lines[i] = ""
        try:
            tree = ast.parse("\n".join(lines))
        except SyntaxError:
            return None
    else:
        tree = copy.deepcopy(tree)
    for name in ef.functions:
        f = _find_function(tree, name)
        if f is not None:
            f.body = [ast.Pass()]
    return tree


def editable_spans(regime: Regime, path: str, text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of what an edit may change in `text`, 1-based, by line: the
    bodies of the editable functions (not their def lines) and the interiors of the editable marker
    regions (not the markers), or the whole file. The one definition `check_code_edit` enforces and
    `show_code` marks. [] for a file that is not editable or does not parse."""
    ef = _editable_entry(regime, path)
    if ef is None:
        return []
    lines = text.splitlines(keepends=True)
    if not ef.functions and not ef.regions:
        return [(1, len(lines), "whole file")]
    spans: list[tuple[int, int, str]] = []
    if ef.functions:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            tree = None
        for name in ef.functions if tree is not None else ():
            fn = _find_function(tree, name)
            if fn is not None:
                spans.append((*_function_span(lines, fn), name))
    if ef.regions:
        regions, _err = _regions(lines)
        spans += [(start + 1, end - 1, name) for name, start, end in regions if name in ef.regions]
    return sorted(spans)


def _structure(ef: EditableFile, path: str, old_text: str, new_text: str, old_tree: ast.Module,
               new_tree: ast.Module) -> tuple[_Spans, _Spans, list[str]]:
    """Spans of editable lines in old and new, and the structural errors."""
    old_lines = old_text.splitlines(keepends=True)
    new_lines = new_text.splitlines(keepends=True)
    so, sn = _Spans(len(old_lines)), _Spans(len(new_lines))
    errors: list[str] = []
    if not ef.functions and not ef.regions:
        so.add(1, len(old_lines), "whole file")
        sn.add(1, len(new_lines), "whole file")
        return so, sn, errors

    ro: list[tuple[str, int, int]] = []
    rn: list[tuple[str, int, int]] = []
    for name in ef.functions:
        fo, fn = _find_function(old_tree, name), _find_function(new_tree, name)
        if fo is None:
            errors.append(f"{path}: editable function {name} does not exist in the current file")
            continue
        if fn is None:
            errors.append(f"{path}: function {name} was removed or renamed; only its body may change")
            continue
        if _signature(fo) != _signature(fn):
            errors.append(f"{path}: function {name} (line {fn.lineno}): signature changed; "
                          f"keep `{'async ' if isinstance(fo, ast.AsyncFunctionDef) else ''}def {name.split('.')[-1]}"
                          f"({ast.unparse(fo.args)})`")
        so.add(*_function_span(old_lines, fo), f"function {name}")
        sn.add(*_function_span(new_lines, fn), f"function {name}")

    if ef.regions:
        ro, err_o = _regions(old_lines)
        rn, err_n = _regions(new_lines)
        if err_o:
            errors.append(f"{path}: current file has broken markers: {err_o}")
        if err_n:
            errors.append(f"{path}: {err_n}; region markers must not change")
        elif [r[0] for r in ro] != [r[0] for r in rn]:
            errors.append(f"{path}: region markers changed (were {[r[0] for r in ro]}, now {[r[0] for r in rn]}); "
                          f"markers must not change")
        for name in ef.regions:
            if name not in [r[0] for r in ro]:
                errors.append(f"{path}: editable region {name} has no markers in the current file")
        for spans, regs in ((so, ro), (sn, rn)):
            for name, start, end in regs:
                if name in ef.regions:
                    spans.add(start + 1, end - 1, f"region {name}")

    if errors:
        return so, sn, errors

    # the code outside the editable bodies must be the same program ...
    old_blank = _blanked(old_text, old_tree, ef, ro)
    new_blank = _blanked(new_text, new_tree, ef, rn)
    if old_blank is not None and new_blank is not None and ast.dump(old_blank) != ast.dump(new_blank):
        line, where = _first_ast_difference(old_blank, new_blank)
        allowed = ", ".join(ef.functions + [f"region {r}" for r in ef.regions])
        errors.append(f"{path}: line {line} ({where}): code outside the editable parts changed "
                      f"(only {allowed} may change)")
        return so, sn, errors
    # ... and the same text (comments, blank lines, formatting)
    mo, mn = so.masked(old_lines), sn.masked(new_lines)
    for i in range(max(len(mo), len(mn))):
        o = mo[i] if i < len(mo) else None
        n = mn[i] if i < len(mn) else None
        if o is None or n is None or o[1] != n[1]:
            line = n[0] if n is not None else len(new_lines)
            shown = (n[1] if n is not None and not n[1].startswith("\0") else "").strip()[:60]
            allowed = ", ".join([f"function {f}" for f in ef.functions] + [f"region {r}" for r in ef.regions])
            errors.append(f"{path}: line {line}: text outside the editable parts changed"
                          f"{f' ({shown!r})' if shown else ''}; only {allowed} may change")
            break
    return so, sn, errors


# ----- content of the edited parts -----

def _module_name(path: str) -> str:
    p = PurePosixPath(path)
    parts = list(p.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve_from(path: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    pkg = _module_name(path).split(".")
    if not path.endswith("__init__.py"):
        pkg = pkg[:-1]
    base = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
    return ".".join(base + ([node.module] if node.module else []))


def _module_verdict(regime: Regime, mod: str) -> str | None:
    """None when edited code may import `mod`, else why not."""
    low = mod.lower()
    for t in regime.truth_identifiers:
        if t.lower() in low:
            return f"module {mod} names ground truth ('{t}')"
    own = regime.package
    if mod == own or mod.startswith(own + "."):
        if EVALUATION_MODULE in mod[len(own):].split("."):
            return f"module {mod} is the evaluation module (it reads the ground truth)"
        return None
    if own.startswith(mod + "."):
        return f"bare package {mod}: import the module you need from {own}"
    top = mod.split(".")[0]
    if top == own.split(".")[0] and "." in own:
        return f"module {mod} is outside the regime's package {own}"
    if top in regime.import_allowlist:
        return None
    return f"import of {mod} is not allowed (allowed: {', '.join(regime.import_allowlist)})"


def _imported_modules(path: str, node: ast.AST, own: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    base = _resolve_from(path, node)
    # `from regimes.metabolism import evaluate` imports a module by name
    if base == own or own.startswith(base + ".") or base.startswith(own + "."):
        return [f"{base}.{a.name}" if a.name != "*" else base for a in node.names]
    return [base]


def _forbidden_bindings(regime: Regime, path: str, tree: ast.Module) -> dict[str, str]:
    """Names bound at module level to the evaluation module or a truth-named module
    (e.g. `from regimes.metabolism import evaluate`): edited code may not use them."""
    out: dict[str, str] = {}
    for node in tree.body:
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        for alias in node.names:
            if isinstance(node, ast.Import):
                candidates = [alias.name]
                bound = alias.asname or alias.name.split(".")[0]
            else:
                base = _resolve_from(path, node)
                candidates = [base, f"{base}.{alias.name}"]
                bound = alias.asname or alias.name
            for mod in candidates:
                verdict = _module_verdict(regime, mod)
                if verdict and ("evaluation module" in verdict or "ground truth" in verdict):
                    out[bound] = verdict
                    break
    return out


def _strings(node: ast.AST) -> list[tuple[str, str]]:
    """(kind, text) of the identifiers and string constants a node itself carries."""
    if isinstance(node, ast.Name):
        return [("identifier", node.id)]
    if isinstance(node, ast.Attribute):
        return [("attribute", node.attr)]
    if isinstance(node, ast.arg):
        return [("argument", node.arg)]
    if isinstance(node, ast.keyword) and node.arg:
        return [("keyword", node.arg)]
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [("name", node.name)]
    if isinstance(node, ast.alias):
        return [("import name", node.name)] + ([("import name", node.asname)] if node.asname else [])
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
        v = node.value if isinstance(node.value, str) else node.value.decode("latin-1")
        return [("string", v)]
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return [("identifier", n) for n in node.names]
    return []


Finding = tuple[tuple, int, str, str]  # (key for counting, line, category, message)


def _findings(regime: Regime, path: str, tree: ast.Module, text: str, spans: _Spans) -> list[Finding]:
    """Everything judged in the editable lines of one text, in walk order."""
    lines = text.splitlines()
    editable = spans.lines()
    bound = _forbidden_bindings(regime, path, tree)
    out: list[Finding] = []

    def add(node: ast.AST, what: str, category: str, msg: str) -> None:
        line = node.lineno
        src = lines[line - 1].strip() if 0 < line <= len(lines) else ""
        out.append(((what, src), line, category, f"{path}: line {line} ({spans.where(line)}): {msg}"))

    for node in ast.walk(tree):
        line = getattr(node, "lineno", None)  # every node that carries a name or string has one (3.10+)
        if line is None or line not in editable:
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for mod in _imported_modules(path, node, regime.package):
                verdict = _module_verdict(regime, mod)
                if verdict:
                    add(node, f"import {mod}", f"import {mod}", verdict)
            if isinstance(node, ast.ImportFrom):
                base = _resolve_from(path, node)
                for a in node.names:
                    if base.split(".")[0] in FILE_READER_OWNERS and a.name in FILE_READER_ATTRS:
                        add(node, f"reader {base}.{a.name}", f"reader {a.name}",
                            f"`from {base} import {a.name}` is not allowed in edited code (reads a file)")
        if isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            add(node, f"name {node.id}", f"name {node.id}",
                f"`{node.id}` is not allowed in edited code ({FORBIDDEN_NAMES[node.id]})")
        if isinstance(node, (ast.Name, ast.Attribute)):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in DATA_ACCESS_NAMES:
                add(node, f"data {name}", f"data {name}",
                    f"`{name}` reaches the dataset cache (truth file, held-out run); "
                    f"training code gets its data as arguments")
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DYNAMIC_ATTR_CALLS
                and len(node.args) >= 2 and not (isinstance(node.args[1], ast.Constant)
                                                 and isinstance(node.args[1].value, str))):
            add(node, f"dyn {node.func.id}", f"dyn {node.func.id}",
                f"`{node.func.id}` with a computed attribute name is not allowed in edited code")
        if isinstance(node, ast.Name) and node.id in bound:
            add(node, f"bound {node.id}", f"bound {node.id}", f"uses `{node.id}`: {bound[node.id]}")
        if isinstance(node, ast.Attribute):
            why = FORBIDDEN_ATTRS.get(node.attr)
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            root_name = root.id if isinstance(root, ast.Name) else None
            if root_name in FILE_READER_OWNERS and node.attr in FILE_READER_ATTRS:  # torch.jit.load too
                why = why or "reads a file"
            if owner in ("os", "sys"):
                why = why or FORBIDDEN_MODULE_ATTRS.get((owner, node.attr))
                if owner == "os":
                    why = why or next((w for p, w in FORBIDDEN_OS_PREFIXES.items() if node.attr.startswith(p)), None)
            if why:
                shown = ast.unparse(node) if root_name else f".{node.attr}"
                shown = shown if len(shown) <= 40 else f"...{node.attr}"
                add(node, f"attr {node.attr}", f"attr {node.attr}", f"`{shown}` is not allowed in edited code ({why})")
        for kind, s in _strings(node):
            low = s.lower()
            for t in regime.truth_identifiers:
                if t.lower() in low:
                    shown = s if len(s) <= 40 else s[:37] + "..."
                    add(node, f"truth {t} {kind}", "truth", f"{kind} {shown!r} mentions ground truth ('{t}'); "
                                                            f"ground-truth annotations are not training inputs")
                    break
    return out


def check_code_edit(regime: Regime, path: str, old_text: str, new_text: str) -> list[str]:
    """Judge replacing `old_text` by `new_text` in the workspace file `path`.

    Returns [] when the edit is accepted, else one line per problem naming the
    file, the function or region, and the line.
    """
    ef = _editable_entry(regime, path)
    if ef is None:
        listed = ", ".join(e.path for e in regime.editable) or "none"
        return [f"{path}: not an editable file of regime {regime.name} (editable: {listed})"]
    if new_text == old_text:
        return [f"{path}: the new text is identical to the current file (no change)"]
    try:
        new_tree = ast.parse(new_text, filename=path)
        compile(new_tree, path, "exec")
    except SyntaxError as e:
        return [f"{path}: line {e.lineno}: syntax error: {e.msg}"]
    except ValueError as e:  # e.g. null bytes
        return [f"{path}: does not compile: {e}"]
    try:
        old_tree = ast.parse(old_text, filename=path)
    except SyntaxError as e:
        return [f"{path}: the current file does not parse (line {e.lineno}: {e.msg}); cannot judge the edit"]

    so, sn, errors = _structure(ef, path, old_text, new_text, old_tree, new_tree)
    old_counts = Counter(f[0] for f in _findings(regime, path, old_tree, old_text, so))
    reported: set[tuple[int, str]] = set()
    for key, line, category, msg in sorted(_findings(regime, path, new_tree, new_text, sn), key=lambda f: f[1]):
        if old_counts[key] > 0:
            old_counts[key] -= 1  # present before the edit: not added by it
            continue
        if (line, category) not in reported:  # one message per problem per line
            reported.add((line, category))
            errors.append(msg)
    return errors
