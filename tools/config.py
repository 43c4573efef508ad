"""Config tools: set_config."""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from regimes.base import get_dotted, set_dotted
from rundir.records import ConfigChange, Mutation
from tools.base import ToolRejected, register


class SetConfigInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slot: int = Field(description="The slot whose next config changes (0-based).")
    changes: dict[str, Any] = Field(
        description="Dotted config keys and their new values, e.g. $change_json. "
                    "Change ONE training parameter per iteration unless recombining. Keys must be mutable "
                    "(not frozen, not slot-fixed) and values inside the regime's declared range; "
                    "in the claude: section only claude.ucb_c may change (the other claude: keys are the "
                    "run's block length and budget caps).",
        min_length=1)


@register("set_config",
          "Change keys of one slot's next training config (configs/slot_SS.yaml). The change is validated "
          "against the regime contract (known key, type, range, frozen, slot-fixed, claude: budget caps); "
          "a rejected change writes nothing.",
          SetConfigInput, slot_scoped=True)
def set_config(env, step, args: SetConfigInput) -> str:
    from regimes.validation import validate_config_change

    if (err := env.check_slot(args.slot)):
        raise ToolRejected(f"set_config: {err}")
    old = env.slot_config(args.slot)
    new = copy.deepcopy(old)
    for key, value in args.changes.items():
        if "." not in key:
            raise ToolRejected(f"set_config: key {key!r} must be dotted, e.g. 'training.{key}'")
        set_dotted(new, key, value)
    violations = validate_config_change(env.regime, old, new, slot=args.slot)
    if violations:
        v = violations[0]
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ToolRejected(f"set_config: {v.key}: {v.reason}{more}")
    env.save_slot_config(args.slot, new)
    desc = ", ".join(f"{k}: {get_dotted(old, k)!r} -> {v!r}" for k, v in args.changes.items())
    # the mutation line as the records write it, ready for finish_mutation
    line = Mutation(changes=[ConfigChange.of(k, get_dotted(old, k), v) for k, v in args.changes.items()]).line()
    return f"slot {args.slot}: {desc} (finish_mutation mutation: '{line}')"
