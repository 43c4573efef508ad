"""Code tools: show_code, edit_code, revert_code.

Edits go through `sandbox.guard` and the regime's `code_edits_allowed`, and
are committed on the slot's pending commit (`plans/slot_SS.json`) with
`Workspace.commit_edit`; nothing checked out changes.
"""

from __future__ import annotations

import ast
import difflib
import re

from pydantic import BaseModel, ConfigDict, Field

from tools.toolbox import ToolRejected, register

_REGION_START = re.compile(r"#\s*>>>\s*editable:\s*(\S+)")
_REGION_END = re.compile(r"#\s*<<<\s*editable")


def _editable_file(regime, path: str):
    for ef in regime.editable:
        if ef.path == path:
            return ef
    return None


def _check_rel_path(path: str, tool: str) -> None:
    if path.startswith("/") or ".." in path.split("/") or "\\" in path:
        raise ToolRejected(f"{tool}: path {path!r} must be relative to the workspace, without '..'")


def editable_spans(regime, path: str, text: str) -> list[tuple[int, int, str]]:
    """(first line, last line, name) of the editable functions/regions of a file (1-based)."""
    ef = _editable_file(regime, path)
    if ef is None:
        return []
    n = len(text.splitlines())
    if not ef.functions and not ef.regions:
        return [(1, n, "whole file")]
    spans = []
    if ef.functions:
        try:
            tree = ast.parse(text)
        except SyntaxError:
            tree = None
        if tree is not None:
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in ef.functions:
                    spans.append((node.lineno, node.end_lineno, node.name))
                if isinstance(node, ast.ClassDef):
                    for sub in node.body:
                        name = f"{node.name}.{getattr(sub, 'name', '')}"
                        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and name in ef.functions:
                            spans.append((sub.lineno, sub.end_lineno, name))
    if ef.regions:
        start, name = None, None
        for i, line in enumerate(text.splitlines(), 1):
            m = _REGION_START.search(line)
            if m and m.group(1) in ef.regions:
                start, name = i, m.group(1)
            elif start is not None and _REGION_END.search(line):
                spans.append((start, i, name))
                start = None
    return sorted(spans)


def _changed_where(regime, path: str, old: str, new: str) -> str:
    """Name of the editable function/region holding the first changed line."""
    sm = difflib.SequenceMatcher(a=old.splitlines(), b=new.splitlines(), autojunk=False)
    first = next((op for op in sm.get_opcodes() if op[0] != "equal"), None)
    if first is None:
        return ""
    line = first[3] + 1
    for a, b, name in editable_spans(regime, path, new):
        if a <= line <= b:
            return name
    return ""


# ----- show_code -----

class ShowCodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int = Field(description="Slot whose pending code (its parent's commit plus this step's edits) to show.")
    path: str = Field(description="File path relative to the workspace, e.g. $code_path.")


@register("show_code",
          "Show a workspace file as the slot's next training will run it, with line numbers. Lines you may "
          "edit are marked with '>' (editable functions or '# >>> editable' regions); others with ' '.",
          ShowCodeInput)
def show_code(env, args: ShowCodeInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"show_code: {err}")
    _check_rel_path(args.path, "show_code")
    plan = env.load_plan(args.slot)
    commit = plan.commit or env.node_commit(plan.parent)
    try:
        text = env.workspace.read(commit, args.path)
    except Exception:
        raise ToolRejected(f"show_code: no file {args.path!r} in the workspace") from None
    spans = editable_spans(env.regime, args.path, text)
    marked = set()
    for a, b, _ in spans:
        marked.update(range(a, b + 1))
    head = [f"# {args.path} @ {commit[:10]} (editable: {', '.join(s[2] for s in spans) or 'nothing'})"]
    body = [f"{'>' if i in marked else ' '}{i:5d}  {line}" for i, line in enumerate(text.splitlines(), 1)]
    return "\n".join(head + body)


# ----- edit_code -----

class EditCodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int = Field(description="Slot whose next training gets the edit.")
    path: str = Field(description="Editable file, relative to the workspace (see show_code).")
    old: str = Field(min_length=1, description="Exact text to replace; must occur exactly once in the file.")
    new: str = Field(description="Replacement text. Only editable functions/regions may change; "
                                 "signatures stay; imports only from the allow-list; no ground truth.")
    change: str = Field(min_length=3, description="One line: what the edit changes.")
    hypothesis: str = Field(min_length=3, description="One line: why it should help (the hypothesis tested).")
    strategy: str = Field(default="", description="Name of the code strategy applied, if any.")


@register("edit_code",
          "Replace exact text in an editable file of the slot's pending code and commit it "
          "('[iter N slot S] <change> — hypothesis: <why>'). Checked by the guard; allowed only when the "
          "regime allows code edits now. One change at a time; compare with the parent.",
          EditCodeInput)
def edit_code(env, args: EditCodeInput) -> str:
    from sandbox.guard import check_code_edit, check_path

    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"edit_code: {err}")
    reason = env.regime.code_edits_allowed(env.iter_in_block, env.at_block_end, env.code_enabled)
    if reason:
        raise ToolRejected(f"edit_code: {reason}")
    _check_rel_path(args.path, "edit_code")
    bad = check_path(env.regime, env.workspace.root, args.path)
    if bad:
        raise ToolRejected(f"edit_code: {bad}")
    plan = env.load_plan(args.slot)
    base = plan.commit or env.node_commit(plan.parent)
    try:
        old_text = env.workspace.read(base, args.path)
    except Exception:
        raise ToolRejected(f"edit_code: no file {args.path!r} in the workspace") from None
    count = old_text.count(args.old)
    if count != 1:
        raise ToolRejected(f"edit_code: the old text occurs {count} times in {args.path}; it must occur exactly once")
    new_text = old_text.replace(args.old, args.new, 1)
    if new_text == old_text:
        raise ToolRejected("edit_code: old and new text are identical")
    problems = check_code_edit(env.regime, args.path, old_text, new_text)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ToolRejected(f"edit_code: {problems[0].splitlines()[0]}{more}")
    change, hyp = " ".join(args.change.split()), " ".join(args.hypothesis.split())
    msg = f"[iter {env.iteration} slot {args.slot}] {change} — hypothesis: {hyp}"
    commit = env.workspace.commit_edit(base, args.path, new_text, msg)
    plan.commit = commit
    plan.code_changes.append({"file": args.path, "function": _changed_where(env.regime, args.path, old_text, new_text),
                              "change": change, "hypothesis": hyp, "strategy": args.strategy, "commit": commit})
    env.save_plan(plan)
    return f"committed {commit[:10]} on slot {args.slot}: {msg}"


# ----- revert_code -----

class RevertCodeInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int = Field(description="Slot whose pending code to revert.")
    path: str = Field(description="File to return to the parent node's version.")
    reason: str = Field(default="", description="Why the change is reverted (one line).")


@register("revert_code",
          "Return one file of the slot's pending code to the version of the slot's parent node "
          "(or the original code when the parent is root), as a new commit.",
          RevertCodeInput)
def revert_code(env, args: RevertCodeInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"revert_code: {err}")
    _check_rel_path(args.path, "revert_code")
    plan = env.load_plan(args.slot)
    base = plan.commit or env.node_commit(plan.parent)
    target = env.node_commit(plan.parent)  # the parent's code (root commit for root)
    try:
        cur = env.workspace.read(base, args.path)
    except Exception:
        raise ToolRejected(f"revert_code: no file {args.path!r} in the workspace") from None
    try:
        ref = env.workspace.read(target, args.path)
    except Exception:
        ref = None
    if ref is None:
        raise ToolRejected(f"revert_code: {args.path!r} does not exist in the parent's code")
    if ref == cur:
        raise ToolRejected(f"revert_code: {args.path} is already as in the parent's code")
    why = " ".join(args.reason.split()) or "back to the parent's version"
    msg = f"[iter {env.iteration} slot {args.slot}] revert {args.path} — hypothesis: {why}"
    commit = env.workspace.revert_file(base, target, args.path, msg)
    plan.commit = commit
    plan.code_changes = [c for c in plan.code_changes if c.get("file") != args.path]
    env.save_plan(plan)
    return f"reverted {args.path} on slot {args.slot} to the parent's version ({commit[:10]})"
