"""The run directory: every file the loop, the tools and the views share.

One home for what a run writes (docs/architecture.md, "Where each record lives"):

- `rundir.io`       atomic writers (text, JSON, YAML), lenient readers, `utc_now`
- `rundir.paths`    file names and the per-slot / per-iteration paths
- `rundir.records`  the typed records: run.yaml (`RunInfo`), status.json (`RunStatus`),
                    plans/slot_SS.json (`SlotPlan`), review.json, launch.json, result.json,
                    one slot's finished training as the analysis sees it (`SlotOutcome`),
                    one node of nodes.jsonl (`NodeRecord`)
- `rundir.store`    nodes.jsonl: the append-only node store and its incremental reader
- `rundir.memory`   the memory.md format (sections, section edits, the comparison table)

Layering: `agent` -> `tools` -> `rundir` -> `regimes`. Nothing here knows the
loop, a policy or a tool; every writer and reader of these files goes through it.
"""
