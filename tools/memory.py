"""Memory tools: update_memory, edit_instructions."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rundir.io import write_text_atomic
from rundir.memory import Memory, MemoryError_
from tools.base import ToolRejected, register


class UpdateMemoryInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    section: str = Field(description="Section of memory.md: Established Principles, Open Questions, "
                                     "Previous Block Summary, Block Info, Hypothesis, Emerging Observations. "
                                     "Best Configurations and Regime Comparison are tables the loop maintains "
                                     "(edits are rejected); Iterations This Block gets one line per node from the loop.")
    text: str = Field(description="Markdown body, without headings.")
    mode: Literal["replace", "append"] = Field(default="append", description="Replace the section body or append to it.")


@register("update_memory",
          "Edit one section of memory.md (replace or append its body). The section order and headings are "
          "fixed; text with headings is rejected.",
          UpdateMemoryInput)
def update_memory(env, step, args: UpdateMemoryInput) -> str:
    mem = Memory.load(env.memory_path)
    try:
        mem.update(args.section, args.text, args.mode)
    except MemoryError_ as e:
        raise ToolRejected(f"update_memory: {e}") from None
    mem.save(env.memory_path, block=step.block)
    return f"memory.md: {'replaced' if args.mode == 'replace' else 'appended to'} section {args.section!r}"


class EditInstructionsInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    old: str = Field(min_length=1, description="Exact text of instructions.md to replace (must occur exactly once).")
    new: str = Field(description="Replacement text (e.g. a new rule learned this block).")


@register("edit_instructions",
          "Replace exact text in this run's instructions.md (block end only): add or sharpen rules learned "
          "during the block.",
          EditInstructionsInput)
def edit_instructions(env, step, args: EditInstructionsInput) -> str:
    if step.name != "block_end":
        raise ToolRejected("edit_instructions: allowed only at a block end")
    from tools.limits import INSTRUCTIONS_GROWTH_CHARS

    text = env.instructions_path.read_text()
    n = text.count(args.old)
    if n != 1:
        raise ToolRejected(f"edit_instructions: the old text occurs {n} times in instructions.md; it must occur exactly once")
    new_text = text.replace(args.old, args.new, 1)
    cap = len(env.regime.instructions_text()) + INSTRUCTIONS_GROWTH_CHARS
    if len(new_text) > cap:  # the instructions go into every prompt
        raise ToolRejected(f"edit_instructions: instructions.md would be {len(new_text)} characters; at most {cap} "
                           f"(the regime's text + {INSTRUCTIONS_GROWTH_CHARS}); shorten a rule instead")
    write_text_atomic(env.instructions_path, new_text)
    return "instructions.md updated"
