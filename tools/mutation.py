"""Search tools: submit_analysis, choose_parent, finish_mutation."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from rundir.io import write_text_atomic
from rundir.records import Mutation, NodeRecord, SlotPlan, SlotReview, mutable_keys
from tools.base import ToolRejected, register


def _line(s: str) -> str:
    return " ".join(s.split())


class SubmitAnalysisInput(BaseModel):
    model_config = ConfigDict(extra="forbid")  # no classification override: the regime classifies
    slot: int = Field(description="Slot whose finished training you analysed.")
    visual: str = Field(min_length=1, description="What the last plots show, in the form the regime instructions "
                                                  "give for the Visual line (plot name=good/partial/bad: what it shows).")
    observation: str = Field(min_length=1, description="One line: what this result says (compare with the parent).")


@register("submit_analysis",
          "Record your reading of one slot's finished training: the Visual line and a one-line Observation. "
          "Classification, score and degeneracy are computed by the regime and cannot be overridden.",
          SubmitAnalysisInput, slot_scoped=True)
def submit_analysis(env, step, args: SubmitAnalysisInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"submit_analysis: {err}")
    res = step.batch.get(args.slot)
    if res is None:
        raise ToolRejected(f"submit_analysis: slot {args.slot} has no finished training to analyse")
    review = SlotReview(slot=args.slot, node=res.node, visual=_line(args.visual), observation=_line(args.observation))
    write_text_atomic(env.review_path(step.iteration, args.slot), review.model_dump_json(indent=1))
    return f"analysis of node {res.node} (slot {args.slot}) recorded"


class ChooseParentInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int = Field(description="Slot whose next training you are planning.")
    parent: int | Literal["root"] = Field(
        description="Node id to build on (usually the highest UCB in ucb_scores.txt), or 'root' when the UCB file is empty.")
    strategy: str = Field(min_length=1, description="Strategy from the regime's table: exploit, explore, "
                                                    "failure-probe, degeneracy-break, forced-branch, switch-dimension, recombine, code-modification, ...")
    reason: str = Field(default="", description="One line: the parent rule applied, e.g. 'highest UCB'.")


@register("choose_parent",
          "Choose the parent node of a slot's next training (its config and code are the starting point) "
          "and the strategy. The parent must be an existing node id or 'root'.",
          ChooseParentInput, slot_scoped=True)
def choose_parent(env, step, args: ChooseParentInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"choose_parent: {err}")
    parent = None if args.parent == "root" else args.parent
    if parent is not None:
        node = env.node(parent, step.batch)
        if node is None:
            raise ToolRejected(f"choose_parent: node {parent} does not exist")
        block = node.block if isinstance(node, NodeRecord) else step.block  # a batch outcome is of this block
        if block != step.block:
            # the UCB tree is per block: a closed block's nodes are reached through the Knowledge Base
            raise ToolRejected(f"choose_parent: node {parent} belongs to block {block}, which is closed; "
                               f"the parent must be a node of block {step.block} or 'root'")
        if node.status != "ok" and args.strategy not in ("failure-probe", "boundary-probe", "code-modification"):
            # a failed node has no trained result to build on, except to probe or fix it
            raise ToolRejected(f"choose_parent: node {parent} failed ({node.status}); "
                               "build on it only with strategy failure-probe or code-modification")
    plan = SlotPlan(slot=args.slot, iteration=step.iteration + 1, parent=parent, strategy=_line(args.strategy),
                    parent_rule=_line(args.reason) or ("block start: root" if parent is None else "chosen"),
                    reason=_line(args.reason))
    env.save_plan(plan)
    return f"slot {args.slot}: next parent={args.parent}, strategy={plan.strategy}"


class FinishMutationInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    slot: int = Field(description="Slot whose next training is now fully specified.")
    mutation: str = Field(min_length=1, description="The exact change as 'name: old -> new' (name = the config key "
                                                    "without its section, values as set_config reported them), "
                                                    "e.g. '$mutation_example'; for a code edit "
                                                    "'$code_mutation_example'; 'baseline' when nothing changed.")
    strategy: str = Field(default="", description="Strategy used (defaults to the one given to choose_parent).")
    parent_rule: str = Field(default="", description="One line: how the parent was chosen.")
    hypothesis: str = Field(default="", description="One line: what this training tests.")


@register("finish_mutation",
          "Declare a slot's next training ready: the exact mutation line, strategy, parent rule and hypothesis. "
          "Required once per slot at the prepare and mutate steps.",
          FinishMutationInput, slot_scoped=True)
def finish_mutation(env, step, args: FinishMutationInput) -> str:
    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"finish_mutation: {err}")
    if not args.mutation.strip():
        raise ToolRejected("finish_mutation: mutation is empty")
    plan = env.load_plan(args.slot, step.iteration)
    # stored as a record: 'training.lr: a -> b' and 'lr: a -> b' are the same change of training.lr
    plan.mutation = Mutation.parse(args.mutation, mutable_keys(env.regime))
    plan.strategy = _line(args.strategy) or plan.strategy or "exploit"
    plan.parent_rule = _line(args.parent_rule) or plan.parent_rule
    plan.hypothesis = _line(args.hypothesis)
    plan.finished = True
    env.save_plan(plan)
    return f"slot {args.slot} ready: {plan.mutation.line()}"
