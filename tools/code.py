"""Code tools: show_code, edit_code, revert_code.

An edit takes the one edit path of the sandbox: `Workspace.checked_edit` (the
guard's `check_code_edit`, then a commit on the slot's pending commit,
`plans/slot_SS.json`) with the message `edit_message` writes; the regime's
`code_edits_allowed` says when. `show_code` marks the lines the guard lets
change (`sandbox.guard.editable_spans`). Nothing checked out changes.
"""

from __future__ import annotations

import difflib

from pydantic import BaseModel, ConfigDict, Field

from rundir.records import CodeChange
from sandbox.guard import check_path, editable_spans
from sandbox.workspace import WorkspaceError, edit_message
from tools.base import ToolRejected, register


def _check_rel_path(path: str, tool: str) -> None:
    if path.startswith("/") or ".." in path.split("/") or "\\" in path:
        raise ToolRejected(f"{tool}: path {path!r} must be relative to the workspace, without '..'")


def _read(env, commit: str, path: str, tool: str) -> str:
    """The text of `path` at `commit`; a workspace error (no such file, bad commit) is one rejected line."""
    try:
        return env.workspace.read(commit, path)
    except WorkspaceError as e:
        raise ToolRejected(f"{tool}: no file {path!r} in the workspace ({e})") from None


def _pending(env, step, slot: int):
    """(plan, commit) of a slot's next training: its commit so far, else its parent's."""
    plan = env.load_plan(slot, step.iteration)
    return plan, plan.commit or env.node_commit(plan.parent, step.batch)


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
def show_code(env, step, args: ShowCodeInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"show_code: {err}")
    _check_rel_path(args.path, "show_code")
    plan, commit = _pending(env, step, args.slot)
    text = _read(env, commit, args.path, "show_code")
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
          EditCodeInput, slot_scoped=True)
def edit_code(env, step, args: EditCodeInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"edit_code: {err}")
    reason = env.regime.code_edits_allowed(step.iter_in_block, step.at_block_end, env.code_enabled)
    if reason:
        raise ToolRejected(f"edit_code: {reason}")
    _check_rel_path(args.path, "edit_code")
    bad = check_path(env.regime, env.workspace.root, args.path)  # before reading: where the edit goes
    if bad:
        raise ToolRejected(f"edit_code: {bad}")
    plan, base = _pending(env, step, args.slot)
    old_text = _read(env, base, args.path, "edit_code")
    count = old_text.count(args.old)
    if count != 1:
        raise ToolRejected(f"edit_code: the old text occurs {count} times in {args.path}; it must occur exactly once")
    new_text = old_text.replace(args.old, args.new, 1)
    if new_text == old_text:
        raise ToolRejected("edit_code: old and new text are identical")
    try:
        msg = edit_message(step.iteration, args.slot, args.change, args.hypothesis)
    except ValueError as e:
        raise ToolRejected(f"edit_code: {e}") from None
    # the one edit path: the guard judges the edit, the workspace commits it only when accepted
    commit, problems = env.workspace.checked_edit(env.regime, base, args.path, new_text, msg)
    if commit is None:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ToolRejected(f"edit_code: {problems[0].splitlines()[0]}{more}")
    plan.commit = commit
    plan.code_changes.append(CodeChange(file=args.path, function=_changed_where(env.regime, args.path, old_text, new_text),
                                        change=" ".join(args.change.split()),
                                        hypothesis=" ".join(args.hypothesis.split()), strategy=args.strategy,
                                        commit=commit))
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
          RevertCodeInput, slot_scoped=True)
def revert_code(env, step, args: RevertCodeInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"revert_code: {err}")
    _check_rel_path(args.path, "revert_code")
    plan, base = _pending(env, step, args.slot)
    target = env.node_commit(plan.parent, step.batch)  # the parent's code (root commit for root)
    cur = _read(env, base, args.path, "revert_code")
    try:
        ref = env.workspace.read(target, args.path)
    except WorkspaceError:
        raise ToolRejected(f"revert_code: {args.path!r} does not exist in the parent's code") from None
    if ref == cur:
        raise ToolRejected(f"revert_code: {args.path} is already as in the parent's code")
    why = " ".join(args.reason.split()) or "back to the parent's version"
    msg = f"[iter {step.iteration} slot {args.slot}] revert {args.path} — hypothesis: {why}"
    commit = env.workspace.revert_file(base, target, args.path, msg)
    plan.commit = commit
    plan.code_changes = [c for c in plan.code_changes if c.file != args.path]
    env.save_plan(plan)
    return f"reverted {args.path} on slot {args.slot} to the parent's version ({commit[:10]})"
