"""The heuristic policy: the seeds' strategy tables and slot roles as code.

Deterministic given the run seed (numpy Generator seeded from run seed +
iterations done + slot). It cannot see plots: its Visual lines are derived
from metrics and say so. Slot roles repeat every 4 slots: 0, 1 exploit;
2 explore; 3 principle-test. Conditions from the strategy table override
the role of slot 1: failure-probe (3+ scores >= 0.9), forced-branch (score
plateau +-0.05 for 3+), switch-dimension (4+ same-param mutations),
degeneracy-break (gap > 0.3 for 3+), recombine (2+ distant nodes > 0.9),
code-modification (plateau after config sweeps, when code edits are allowed).
One parameter changes per iteration, inside its declared range.
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

from agent import systems as sys_mod
from agent.fmt import fmt_metric, fmt_value
from agent.policies.base import Policy, StepContext
from agent.ucb import ucb_scores
from regimes.base import ParamSpec, Regime, get_dotted, set_dotted
from rundir.records import CodeChange, ConfigChange, Mutation, NodeRecord, SlotOutcome

ROLES = ("exploit", "exploit", "explore", "principle-test")
#: the seed documents' strategies that vary the system (simulation seed): they run on one slot
#: (slot 3, or the last slot of a smaller batch) where the regime lets the seed change
SEED_STRATEGIES = ("universal-recipe-validate", "seed-robustness", "identifiability-test", "variance-reduction",
                   "cross-seed-optimize")
#: what cross-seed-optimize tunes at the weaker seed (seed 004: n_epochs_init, batch_size, lr_W)
CROSS_SEED_KEYS = ("n_epochs_init", "batch_size", "learning_rate_W_start")
#: what variance-reduction varies (seed 004: "different aug/epochs")
VARIANCE_KEYS = ("data_augmentation_loop", "n_epochs")
_TARGET = re.compile(r"\[system ([\w.]+)=(-?\d+)\]")


def _line(spec: ParamSpec, old: Any, new: Any, note: str = "") -> str:
    """The finish_mutation line of a one-key change (`name: old -> new`, then the note)."""
    return Mutation(changes=[ConfigChange.of(spec.key, old, new)], note=note).line()


class HeuristicPolicy(Policy):
    name = "heuristic"

    def __init__(self, seed: int = 0):
        self.seed = int(seed)

    def act(self, ctx: StepContext, tools) -> None:
        if ctx.regime is None:
            raise ValueError("the heuristic policy needs the regime in its StepContext")
        getattr(self, f"_{ctx.step}")(ctx, tools)
        summary = self._summary(ctx, tools)
        if summary:  # the live view's "policy" line: what this step decided, in one line
            tools.message(summary)

    @staticmethod
    def _summary(ctx: StepContext, tools) -> str:
        if ctx.step == "analyse":
            return "analysed " + "; ".join(
                f"node {r.node} {fmt_metric(r.score)} {r.classification or r.status}" for r in ctx.results)
        if ctx.step in ("select_parent", "mutate"):
            parts = []
            for s in ctx.slots:
                plan = tools.plan(s)
                on = "root" if plan.parent is None else f"node {plan.parent}"
                if ctx.step == "select_parent":
                    parts.append(f"slot {s} {plan.strategy or 'exploit'} on {on}")
                else:
                    parts.append(f"slot {s}: {plan.mutation.line() or 'unchanged'}")
            return "; ".join(parts)
        if ctx.step == "block_end":
            return f"block {ctx.block} closed: principles, summary and next focus written to memory.md"
        return ""

    # ----- helpers -----

    def _rng(self, ctx: StepContext, slot: int, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([self.seed, ctx.iterations_done, slot, salt, ctx.block])

    @staticmethod
    def _candidates(r: Regime) -> list[ParamSpec]:
        return [p for p in r.mutable if p.key not in r.slot_fixed and p.section != "claude"
                and p.name != "seed" and not r.is_frozen(p.key)]

    @staticmethod
    def _history(ctx: StepContext) -> list[NodeRecord]:
        """The block's finished nodes (logged, and the batch under analysis), by id."""
        return [n for n in ctx.nodes if n.block == ctx.block]

    @staticmethod
    def _all_nodes(ctx: StepContext) -> dict[int, NodeRecord]:
        return {n.id: n for n in ctx.nodes}

    def _step_value(self, spec: ParamSpec, old: Any, rng, size: str, direction: int = 0, cap: float | None = None):
        """A new value for `spec` one step from `old` (size: small|large|extreme), inside the range."""
        if spec.type == "bool":
            return not bool(old)
        if spec.type == "choice":
            ch = list(spec.choices)
            i = ch.index(old) if old in ch else 0
            d = direction or (1 if rng.random() < 0.5 else -1)
            if size == "extreme":
                return ch[-1] if d > 0 else ch[0]
            j = min(len(ch) - 1, max(0, i + d))
            if j == i:
                j = min(len(ch) - 1, max(0, i - d))
            return ch[j]
        lo, hi = float(spec.low), float(spec.high)
        if cap is not None:
            hi = min(hi, float(cap))
        cur = float(old) if isinstance(old, (int, float)) and not isinstance(old, bool) else lo
        d = direction or (1 if rng.random() < 0.5 else -1)

        # multiplicative steps for log keys, for coefficients in [0, high] (seeds: "0 to 500", typical 3-5)
        # and for wide int ranges (data_augmentation_loop 10-2000); additive steps otherwise
        mult = spec.log or (spec.type == "float" and lo == 0 and hi > 0) or (spec.type == "int" and lo > 0 and hi / lo >= 10)

        def move(dd: int) -> float:
            if size == "extreme":
                return hi if dd > 0 else lo
            if mult:
                f = 3.0 if size == "large" else 2.0
                if cur <= 0:
                    return hi / 100 if dd > 0 else lo  # switch a coefficient on, gently
                if not spec.log and lo == 0 and dd < 0 and cur / f < hi / 1000:
                    return 0.0  # switch it off
                return cur * f if dd > 0 else cur / f
            step = (hi - lo) * (0.25 if size == "large" else 0.1)
            return cur + dd * step

        new = min(hi, max(lo, move(d)))
        if math.isclose(new, cur, rel_tol=1e-9, abs_tol=1e-12):
            new = min(hi, max(lo, move(-d)))
        if spec.type == "int":
            new = int(round(new))
            if new == int(cur):
                new = int(min(hi, max(lo, cur + (d or 1))))
            return new
        return float(f"{new:.3g}")

    # ----- prepare: the suggested initial spread -----

    def _prepare(self, ctx: StepContext, tools) -> None:
        cands = [p for p in self._candidates(ctx.regime) if p.type in ("float", "int")] or self._candidates(ctx.regime)
        tools.message("initial spread: slot 0 baseline, each other slot varies one leading parameter")
        for slot in ctx.slots:
            if slot == 0 or not cands:
                tools.call("finish_mutation", {"slot": slot, "mutation": "baseline (default config)",
                                               "strategy": "baseline", "parent_rule": "first batch: root",
                                               "hypothesis": "reference point for the block"})
                continue
            rng = self._rng(ctx, slot)
            ok = False
            for k in range(len(cands)):
                spec = cands[(slot - 1 + k) % len(cands)]
                cfg = tools.slot_config(slot)
                old = get_dotted(cfg, spec.key)
                new = self._step_value(spec, old, rng, "small", cap=self._cap(cfg, spec))
                if new == old:
                    continue
                res = tools.call("set_config", {"slot": slot, "changes": {spec.key: new}})
                if res.ok:
                    tools.call("finish_mutation", {
                        "slot": slot, "mutation": _line(spec, old, new),
                        "strategy": "explore", "parent_rule": "first batch: root",
                        "hypothesis": f"sensitivity of the primary metric to {spec.name}"})
                    ok = True
                    break
            if not ok:
                tools.call("finish_mutation", {"slot": slot, "mutation": "baseline (default config)",
                                               "strategy": "baseline", "parent_rule": "first batch: root"})

    @staticmethod
    def _cap(cfg: dict, spec: ParamSpec):
        if spec.section == "training" and spec.name in ("n_epochs", "data_augmentation_loop"):
            return get_dotted(cfg, f"claude.{spec.name}")
        return None

    # ----- analyse -----

    def _analyse(self, ctx: StepContext, tools) -> None:
        regime = ctx.regime
        nodes = self._all_nodes(ctx)
        primary = regime.primary_metric
        for r in ctx.results:
            mutation = r.mutation.line()
            if r.status != "ok":
                visual = f"no plots: training {r.status} ({r.reason.splitlines()[0][:120] if r.reason else 'no reason'})"
                obs = f"training {r.status}; {mutation or 'no mutation'} is likely outside the stable region"
            else:
                m = r.metrics
                gap = r.degeneracy.gap
                parts = [f"{primary}={fmt_metric(m.get(primary))} ({r.classification})",
                         f"degeneracy {r.degeneracy.diagnosis}" + (f" (gap {gap:.2f})" if gap is not None else "")]
                if "final_loss" in m:
                    parts.append(f"final_loss={fmt_metric(m['final_loss'])}")
                visual = "metrics-derived (the heuristic policy cannot see plots): " + ", ".join(parts)
                parent = nodes.get(r.parent) if r.parent is not None else None
                key = regime.system_key
                sys_r = regime.system_of(r.config)
                if parent is None:
                    obs = f"score {r.score:.4f} from root ({mutation or 'baseline'})"
                elif regime.system_of(parent.config) != sys_r:
                    # another system: the delta is the seed's difficulty, not a config effect
                    rob = sys_mod.robustness_of(list(nodes.values()), r, key)
                    obs = (f"score {r.score:.4f} on system {sys_mod.fmt_system(sys_r)} vs parent {parent.id} "
                           f"{parent.score:.4f} on system {sys_mod.fmt_system(regime.system_of(parent.config))}: "
                           "a seed change, not a config effect"
                           + (f"; {sys_mod.robustness_line(rob)}" if rob and rob.n_systems >= 2 else ""))
                    ident = {k: float(v) for k, v in r.metrics.items()
                             if k in regime.identifiability_metrics and isinstance(v, (int, float))}
                    if ident:
                        obs += f"; data of system {sys_mod.fmt_system(sys_r)}: {sys_mod.identifiability_text(ident)}"
                else:
                    delta = r.score - parent.score
                    verdict = "helped" if delta > 0.02 else "hurt" if delta < -0.02 else "no clear effect"
                    obs = (f"score {r.score:.4f} vs parent {parent.id} {parent.score:.4f} "
                           f"(delta {delta:+.4f}): {mutation or 'change'} {verdict}")
                obs += self._hard_system_note(regime, r)
            tools.call("submit_analysis", {"slot": r.slot, "visual": visual, "observation": obs})

    @staticmethod
    def _hard_system_note(regime: Regime, r: SlotOutcome) -> str:
        """"; system S is degenerate (data: ...)" when the generator flagged the system: the seed is hard,
        not the config bad."""
        m = r.metrics
        flag = regime.degenerate_metric
        if not flag or not isinstance(m.get(flag), (int, float)) or m[flag] <= 0:
            return ""
        ident = {k: float(v) for k, v in m.items() if k in regime.identifiability_metrics and isinstance(v, (int, float))}
        return (f"; system {sys_mod.fmt_system(regime.system_of(r.config))} is flagged degenerate "
                f"({flag}): a hard seed, not a bad config"
                + (f" (data: {sys_mod.identifiability_text(ident)})" if ident else ""))

    # ----- log -----

    def _log(self, ctx: StepContext, tools) -> None:
        if not ctx.results:
            return
        nodes = self._all_nodes(ctx)
        best = max(ctx.results, key=lambda r: (r.score, -r.node))
        helped = sum(1 for r in ctx.results if r.parent is not None and r.parent in nodes
                     and r.score > nodes[r.parent].score + 0.02)
        with_parent = sum(1 for r in ctx.results if r.parent is not None)
        line = (f"- batch of nodes {ctx.results[0].node}-{ctx.results[-1].node}: best node {best.node} "
                f"score {best.score:.4f} ({best.mutation.line() or 'baseline'}); "
                f"{helped}/{with_parent} mutations improved on their parent")
        tools.call("update_memory", {"section": "Emerging Observations", "text": line, "mode": "append"})

    # ----- select_parent -----

    def _conditions(self, ctx: StepContext, hist: list[NodeRecord]) -> str | None:
        ok = [n for n in hist if n.status == "ok"]
        last = hist[-3:]
        if len(last) == 3 and all(n.score >= 0.9 for n in last):
            return "failure-probe"
        if len(last) == 3 and all(n.degeneracy.gap is not None and n.degeneracy.gap > 0.3 for n in last):
            return "degeneracy-break"
        params = [n.mutation.param for n in hist[-4:]]
        if len(params) == 4 and params[0] is not None and len(set(params)) == 1:
            return "switch-dimension"
        good = [n for n in ok if n.score > 0.9]
        if len(good) >= 2:
            by_id = {n.id: n for n in hist}

            def ancestors(n):
                out, cur = set(), n.parent
                while cur is not None and cur in by_id and cur not in out:
                    out.add(cur)
                    cur = by_id[cur].parent
                return out
            for a in good:
                for b in good:
                    if a.id < b.id and a.id not in ancestors(b):
                        return "recombine"
        if len(last) == 3 and max(n.score for n in last) - min(n.score for n in last) <= 0.05:
            if len(hist) >= 4 and ctx.regime.code_strategies and ctx.code_enabled and ctx.regime.editable:
                return "code-modification"
            return "forced-branch"
        return None

    # ----- the seed-based strategies (seed 004's table; the system key must be mutable) -----

    @staticmethod
    def _seed_slot(n_slots: int) -> int:
        return 3 if n_slots >= 4 else n_slots - 1

    @staticmethod
    def _new_system(regime: Regime, nodes: dict[int, NodeRecord], exclude: set | None = None) -> int | None:
        """The smallest integer seed above the run's first system that no node ran on (inside the key's range)."""
        key = regime.system_key
        spec = regime.param(key)
        seen = {sys_mod.system_of(n, key) for n in nodes.values()} | set(exclude or ())
        first = sys_mod.system_of(nodes[min(nodes)], key) if nodes else None
        cand = (first if isinstance(first, int) and not isinstance(first, bool) else 0) + 1
        hi = int(spec.high) if spec is not None and spec.high is not None else 2**31 - 1
        while cand in seen and cand <= hi:
            cand += 1
        return cand if cand <= hi else None

    def _seed_condition(self, ctx: StepContext, nodes: dict[int, NodeRecord]) -> tuple[str, int, str] | None:
        """(strategy, parent id, reason with the target system) when a seed strategy's trigger holds."""
        regime = ctx.regime
        if not regime.system_mutable():
            return None
        allowed = set(regime.strategies)
        key = regime.system_key
        ok = [nodes[k] for k in sorted(nodes) if nodes[k].status == "ok"]
        if not ok:
            return None
        children: dict[int, list[NodeRecord]] = defaultdict(list)
        for n in nodes.values():
            if n.parent is not None:
                children[n.parent].append(n)
        best = max(ok, key=lambda n: (n.score, -n.id))
        sys_of = {n.id: sys_mod.system_of(n, key) for n in ok}
        run_systems = sys_mod.systems(ok, key)
        tag = lambda v: f"[system {key}={v}]"  # noqa: E731 - the mutate step reads the target back

        def tried(node: NodeRecord, strategy: str) -> bool:
            return any(c.strategy == strategy for c in children.get(node.id, []))

        rob = sys_mod.robustness(ok, key)
        if "universal-recipe-validate" in allowed:
            # "new recipe beats old at 2+ seeds": test it at the remaining seeds
            for r in rob:
                if r.n_systems < 2:
                    continue
                beats = [s for s, v in r.per_system.items()
                         if any(o.recipe != r.recipe and s in o.per_system for o in rob)
                         and all(v > o.per_system[s] for o in rob if o.recipe != r.recipe and s in o.per_system)]
                remaining = [s for s in run_systems if s not in r.per_system and isinstance(s, int)]
                if len(beats) >= 2 and remaining:
                    node = max((n for n in ok if n.id in r.node_ids), key=lambda n: (n.score, -n.id))
                    return ("universal-recipe-validate", node.id,
                            f"the recipe of node {r.first_id} beats the others at systems "
                            f"{', '.join(map(sys_mod.fmt_system, beats))}: test it at system {remaining[0]} "
                            f"{tag(remaining[0])}")
        if "seed-robustness" in allowed:
            same = [c for c in children.get(best.id, []) if c.status == "ok" and sys_of.get(c.id) == sys_of[best.id]]
            if len(same) >= 2 and all(c.score < best.score for c in same) and not tried(best, "seed-robustness"):
                new = self._new_system(regime, nodes)
                if new is not None:
                    return ("seed-robustness", best.id,
                            f"all {len(same)} perturbations of best node {best.id} degrade: replay its config at a "
                            f"new seed {tag(new)}")
        if "identifiability-test" in allowed:
            last = [n.score for n in ok[-3:]]
            used = {c.strategy for n in nodes.values() for c in n.code_changes}
            exhausted = (not regime.code_strategies or not ctx.code_enabled
                         or {c.name for c in regime.code_strategies} <= used)
            if (len(last) == 3 and max(last) - min(last) <= 0.05 and exhausted
                    and not tried(best, "identifiability-test")):
                new = self._new_system(regime, nodes)
                if new is not None:
                    return ("identifiability-test", best.id,
                            f"plateau at {last[-1]:.3f} after config and code changes: is the ceiling specific to "
                            f"system {sys_mod.fmt_system(sys_of[best.id])}? {tag(new)}")
        if "variance-reduction" in allowed:
            spread = []
            for r in rob:
                runs = [n for n in ok if n.id in r.node_ids]
                if len(runs) >= 2 and max(n.score for n in runs) - min(n.score for n in runs) > 0.05 \
                        and not any(tried(n, "variance-reduction") for n in runs):
                    spread.append((max(n.score for n in runs) - min(n.score for n in runs), r, runs))
            if spread:
                width, r, runs = max(spread, key=lambda t: (t[0], -t[1].first_id))
                worst = min(runs, key=lambda n: (n.score, n.id))
                return ("variance-reduction", worst.id,
                        f"the recipe of node {r.first_id} spans {width:.3f} over {len(runs)} runs: vary aug/epochs "
                        f"at its worst run (node {worst.id}, system {sys_mod.fmt_system(sys_of[worst.id])})")
        if "cross-seed-optimize" in allowed and len(run_systems) >= 2 and best.block <= ctx.block - 2:
            # best unchanged for 2+ blocks: close the gap at the weaker seed
            weakest = min(sys_mod.by_system(ok, key), key=lambda r: (r.best_score, str(r.system)))
            if weakest.best_id is not None:
                return ("cross-seed-optimize", weakest.best_id,
                        f"best unchanged since block {best.block}: tune at the weakest system "
                        f"{sys_mod.fmt_system(weakest.system)} (best {weakest.best_score:.4f})")
        return None

    def _select_parent(self, ctx: StepContext, tools) -> None:
        hist = self._history(ctx)
        ok = [n for n in hist if n.status == "ok"]
        condition = self._conditions(ctx, hist)
        seed_slot = self._seed_slot(len(ctx.slots)) if ctx.slots else None
        seed = self._seed_condition(ctx, self._all_nodes(ctx)) if seed_slot is not None else None
        pending: list[int | None] = []
        for slot in ctx.slots:
            if seed is not None and slot == ctx.slots[seed_slot]:
                strategy, parent, reason = seed
                tools.call("choose_parent", {"slot": slot, "parent": parent, "strategy": strategy, "reason": reason})
                pending.append(parent)
                continue
            role = ROLES[slot % len(ROLES)]
            strategy = condition if (slot % len(ROLES) == 1 and condition) else role
            entries = [e for e in ucb_scores(ok, ctx.ucb_c, pending) if e.id in {n.id for n in ok}]
            if not entries:
                tools.call("choose_parent", {"slot": slot, "parent": "root", "strategy": strategy,
                                             "reason": "no successful node in the block: root"})
                pending.append(None)
                continue
            if strategy == "forced-branch" and len(entries) > 1:
                pick, rule = entries[1], "2nd-highest UCB (forced branch)"
            elif strategy == "explore":
                best = max(ok, key=lambda n: (n.score, -n.id))
                chain = self._chain(best, hist)
                outside = [e for e in entries if e.id not in chain]
                pick, rule = (outside[0], "highest UCB outside the best chain") if outside else (entries[0], "highest UCB")
            elif strategy in ("principle-test", "recombine"):
                best = max(ok, key=lambda n: (n.score, -n.id))
                pick = next(e for e in entries if e.id == best.id)
                rule = "best score (test a principle on it)" if strategy == "principle-test" else "best score (merge)"
            else:
                pick, rule = entries[0], "highest UCB"
            tools.call("choose_parent", {"slot": slot, "parent": pick.id, "strategy": strategy, "reason": rule})
            pending.append(pick.id)

    @staticmethod
    def _chain(node: NodeRecord, hist: list[NodeRecord]) -> set[int]:
        by_id = {n.id: n for n in hist}
        chain, cur = {node.id}, node.parent
        while cur is not None and cur in by_id and cur not in chain:
            chain.add(cur)
            cur = by_id[cur].parent
        changed = True
        while changed:  # descendants
            changed = False
            for n in hist:
                if n.parent in chain and n.id not in chain:
                    chain.add(n.id)
                    changed = True
        return chain

    # ----- mutate -----

    def _mutate(self, ctx: StepContext, tools) -> None:
        nodes = self._all_nodes(ctx)
        hist = self._history(ctx)
        cands = self._candidates(ctx.regime)
        for slot in ctx.slots:
            plan = tools.plan(slot)
            strategy = plan.strategy or "exploit"
            rng = self._rng(ctx, slot, 1)
            note = ""
            if plan.parent is None and nodes:
                # block start (parent root): begin from the best configuration found so far
                best = max(nodes.values(), key=lambda n: (n.score, -n.id))
                changes = self._diff_keys(tools.slot_config(slot), best.config, cands)
                if changes and tools.call("set_config", {"slot": slot, "changes": changes}).ok:
                    note = f"(on the config of best node {best.id})"
                # between blocks, after a plateau, the code-modification slot tries a code strategy
                if slot % len(ROLES) == 1 and self._plateaued(nodes) and ctx.code_allowed:
                    strategy = "code-modification"
            if strategy in ("universal-recipe-validate", "seed-robustness", "identifiability-test"):
                if self._seed_mutation(ctx, tools, slot, plan):
                    continue
                strategy = "exploit"
            if strategy == "code-modification":
                if self._code_mutation(ctx, tools, slot, plan, nodes):
                    continue
                strategy = "switch-dimension"
            if strategy == "recombine" and self._recombine(ctx, tools, slot, plan, hist, cands):
                continue
            if strategy == "recombine":
                strategy = "exploit"
            self._param_mutation(ctx, tools, slot, plan, strategy, hist, nodes, cands, rng, note)

    @staticmethod
    def _plateaued(nodes: dict[int, NodeRecord]) -> bool:
        """The last 3 results within +-0.05, or the newest block did not beat the earlier ones."""
        ok = [nodes[k] for k in sorted(nodes) if nodes[k].status == "ok"]
        last = [n.score for n in ok[-3:]]
        if len(last) == 3 and max(last) - min(last) <= 0.05:
            return True
        blocks = sorted({n.block for n in ok})
        if len(blocks) >= 2:
            newest = max(n.score for n in ok if n.block == blocks[-1])
            earlier = max(n.score for n in ok if n.block != blocks[-1])
            return newest <= earlier + 0.01
        return False

    @staticmethod
    def _diff_keys(cfg: dict, other: dict, cands: list[ParamSpec]) -> dict:
        out = {}
        for p in cands:
            a, b = get_dotted(cfg, p.key), get_dotted(other, p.key)
            if b is not None and a != b:
                out[p.key] = b
        return out

    def _param_mutation(self, ctx, tools, slot, plan, strategy, hist, nodes, cands, rng, note="") -> None:
        recent = [n.mutation.param for n in hist[-4:]]
        by_name = {p.name: p for p in cands}
        parent = nodes.get(plan.parent) if plan.parent is not None else None
        order: list[ParamSpec] = list(rng.permutation(len(cands))) if cands else []
        order = [cands[i] for i in order]
        direction = 0
        size = "small"
        if strategy == "exploit" and parent is not None:
            pp = parent.mutation.param
            gp = nodes.get(parent.parent) if parent.parent is not None else None
            if pp in by_name and gp is not None and parent.score > gp.score:
                order = [by_name[pp]] + [p for p in order if p.name != pp]  # keep pushing what helped
                direction = parent.mutation.direction
        elif strategy in ("explore", "switch-dimension", "forced-branch"):
            size = "large" if strategy == "explore" else "small"
            order = [p for p in order if p.name not in recent] + [p for p in order if p.name in recent]
        elif strategy in ("failure-probe", "boundary-probe"):
            size = "extreme"
        elif strategy == "degeneracy-break":
            order = cands[:1] + [p for p in order if p is not cands[0]] if cands else []
            direction = 1
        elif strategy in ("cross-seed-optimize", "variance-reduction"):
            # the table's keys first: n_epochs_init, batch_size, lr_W at the weaker seed; aug/epochs for variance
            keys = CROSS_SEED_KEYS if strategy == "cross-seed-optimize" else VARIANCE_KEYS
            first = [by_name[k] for k in keys if k in by_name]
            order = first + [p for p in order if p not in first]
            direction = 1 if strategy == "variance-reduction" else 0  # longer training: less run-to-run spread
        elif strategy == "principle-test":
            ev = self._evidence(nodes, ctx.regime.system_key)
            if ev:
                (pname, d), _ = max(ev.items(), key=lambda kv: (kv[1][0] / kv[1][1], kv[1][1]))
                if pname in by_name:
                    order = [by_name[pname]] + [p for p in order if p.name != pname]
                    direction = d
        seen = self._seen_configs(ctx, tools, slot)
        for spec in order:
            cfg = tools.slot_config(slot)
            old = get_dotted(cfg, spec.key)
            d0 = direction if spec is order[0] else 0
            d0 = d0 or (1 if rng.random() < 0.5 else -1)
            new = None
            for d in (d0, -d0):  # the other direction when the first repeats an experiment
                cand = self._step_value(spec, old, rng, size, d, cap=self._cap(cfg, spec))
                if cand != old and self._fingerprint(ctx.regime, cfg, spec.key, cand) not in seen:
                    new = cand
                    break
            if new is None:
                continue
            if tools.call("set_config", {"slot": slot, "changes": {spec.key: new}}).ok:
                tools.call("finish_mutation", {
                    "slot": slot, "mutation": _line(spec, old, new, note),
                    "strategy": strategy, "parent_rule": plan.parent_rule,
                    "hypothesis": f"{strategy}: {'raise' if self._num(new) > self._num(old) else 'lower'} "
                                  f"{spec.name} from the parent's value"})
                return
        tools.call("finish_mutation", {"slot": slot, "mutation": "none: no admissible one-parameter step"
                                                                + (f" {note}" if note else ""),
                                       "strategy": strategy, "parent_rule": plan.parent_rule})

    @staticmethod
    def _fingerprint(regime: Regime, cfg: dict, key: str | None = None, value: Any = None) -> str:
        """The effective config (Regime.effective_config) as text: two spellings of one experiment match."""
        if key is not None:
            cfg = copy.deepcopy(cfg)
            set_dotted(cfg, key, value)
        return json.dumps(regime.effective_config(cfg), sort_keys=True, default=str)

    def _seen_configs(self, ctx: StepContext, tools, slot: int) -> set[str]:
        """Configs already trained or already planned by the other slots of this step:
        the heuristic never repeats an experiment with the same code."""
        plan = tools.plan(slot)
        seen = {self._fingerprint(ctx.regime, n.config) for n in ctx.nodes if n.commit == plan.commit}
        for s in ctx.slots:
            if s != slot and tools.plan(s).finished:
                seen.add(self._fingerprint(ctx.regime, tools.slot_config(s)))
        return seen

    @staticmethod
    def _num(v) -> float:
        try:
            return float(v)
        except (TypeError, ValueError):
            return 0.0

    @staticmethod
    def _evidence(nodes: dict[int, NodeRecord], key: str = sys_mod.DEFAULT_SYSTEM_KEY) -> dict[tuple[str, int], tuple[int, int]]:
        """(param, direction) -> (times it helped, times tried), from parent/child score pairs of one
        system (a child on another system measures the seed, not the parameter)."""
        acc: dict[tuple[str, int], list[int]] = defaultdict(lambda: [0, 0])
        for n in nodes.values():
            p, d = n.mutation.param, n.mutation.direction
            if p is None or d == 0 or n.parent not in nodes or n.status != "ok":
                continue
            if sys_mod.system_of(n, key) != sys_mod.system_of(nodes[n.parent], key):
                continue
            acc[(p, d)][1] += 1
            if n.score > nodes[n.parent].score + 0.02:
                acc[(p, d)][0] += 1
        return {k: (v[0], v[1]) for k, v in acc.items()}

    @staticmethod
    def _seed_mutation(ctx, tools, slot, plan) -> bool:
        """Move the slot to the system select_parent named (`[system KEY=V]` in its reason): the parent's
        recipe replayed on another system. The mutation says it is a seed change."""
        m = _TARGET.search(plan.reason or plan.parent_rule or "")
        key = ctx.regime.system_key
        if m is None or m.group(1) != key:
            return False
        new = int(m.group(2))
        old = ctx.regime.system_of(tools.slot_config(slot))
        if new == old or not tools.call("set_config", {"slot": slot, "changes": {key: new}}).ok:
            return False
        why = {"seed-robustness": "does the best config generalise to another W/S sample?",
               "universal-recipe-validate": "is the new recipe universal across systems?",
               "identifiability-test": "is the ceiling specific to this system?"}.get(plan.strategy, "")
        tools.call("finish_mutation", {
            "slot": slot, "mutation": Mutation(changes=[ConfigChange.of(key, old, new)],
                                               note=f"(seed change: {key}, a new system)").line(),
            "strategy": plan.strategy, "parent_rule": plan.parent_rule,
            "hypothesis": f"{plan.strategy}: node {plan.parent}'s recipe on system {new}: {why}"})
        return True

    def _recombine(self, ctx, tools, slot, plan, hist, cands) -> bool:
        good = sorted((n for n in hist if n.status == "ok" and n.score > 0.9), key=lambda n: (-n.score, n.id))
        base = next((n for n in good if n.id == plan.parent), None)
        if base is None:
            return False
        seen = self._seen_configs(ctx, tools, slot)
        cfg = tools.slot_config(slot)
        for other in (n for n in good if n.id != base.id and n.id not in self._chain(base, hist)):
            changes = self._diff_keys(cfg, other.config, cands)
            merged = json.loads(json.dumps(cfg, sort_keys=True, default=str))
            for k, v in changes.items():
                set_dotted(merged, k, v)
            if changes and self._fingerprint(ctx.regime, merged) not in seen:
                break  # a merge not tried yet
        else:
            return False
        if not tools.call("set_config", {"slot": slot, "changes": changes}).ok:
            return False
        desc = ", ".join(f"{k.split('.', 1)[1]}={fmt_value(v)}" for k, v in changes.items())
        tools.call("finish_mutation", {"slot": slot, "mutation": f"recombine: node {base.id} + node {other.id} ({desc})",
                                       "strategy": "recombine", "parent_rule": plan.parent_rule,
                                       "hypothesis": "the good settings of two distant branches combine"})
        return True

    def _code_mutation(self, ctx, tools, slot, plan, nodes) -> bool:
        if not ctx.code_allowed or not ctx.regime.code_strategies:
            return False
        used = set()
        cur = plan.parent
        while cur is not None and cur in nodes:  # strategies already in this lineage
            used |= {c.strategy for c in nodes[cur].code_changes}
            cur = nodes[cur].parent
        for cs in ctx.regime.code_strategies:
            if cs.name in used:
                continue
            res = tools.call("edit_code", {"slot": slot, "path": cs.file, "old": cs.old, "new": cs.new,
                                           "change": cs.description or cs.name, "hypothesis": cs.hypothesis,
                                           "strategy": cs.name})
            if not res.ok:
                continue
            if cs.config_overrides:
                tools.call("set_config", {"slot": slot, "changes": dict(cs.config_overrides)})
            fn = tools.plan(slot).code_changes[-1].function or cs.file
            line = Mutation(code=CodeChange(file=cs.file, function=fn, change=cs.name)).line()
            tools.call("finish_mutation", {"slot": slot, "mutation": line,
                                           "strategy": "code-modification", "parent_rule": plan.parent_rule,
                                           "hypothesis": cs.hypothesis})
            return True
        return False

    # ----- block_end -----

    def _block_end(self, ctx: StepContext, tools) -> None:
        regime = ctx.regime
        hist = ctx.block_nodes
        nodes = self._all_nodes(ctx)
        ev = self._evidence(nodes, regime.system_key)
        principles, questions = [], []
        for (p, d), (h, n) in sorted(ev.items()):
            word = "Increasing" if d > 0 else "Decreasing"
            if n >= 3 and h / n >= 2 / 3:
                principles.append(f"- {word} {p} improved the score in {h}/{n} trials (evidence: {n} iterations)")
            elif n >= 3 and h == 0:
                principles.append(f"- {word} {p} never improved the score (0/{n} trials; evidence: {n} iterations)")
            elif n >= 1:
                questions.append(f"- {word} {p}: {h}/{n} trials improved; needs more testing")
        if principles:
            tools.call("update_memory", {"section": "Established Principles", "text": "\n".join(principles),
                                         "mode": "replace"})
        tools.call("update_memory", {"section": "Open Questions",
                                     "text": "\n".join(questions) or "- none pending", "mode": "replace"})
        ok = [n for n in hist if n.status == "ok"]
        cls = defaultdict(int)
        for r in ctx.block_nodes:
            cls[r.classification] += 1
        best = max(ok, key=lambda n: (n.score, -n.id), default=None)
        summary = (f"Block {ctx.block}: {len(hist)} iterations; converged {cls['converged']}, partial {cls['partial']}, "
                   f"failed {cls['failed']}. "
                   + (f"Best node {best.id} score {best.score:.4f} ({best.mutation.line() or 'baseline'})." if best else "No success."))
        key = regime.system_key
        run_ok = [n for n in nodes.values() if n.status == "ok"]
        if sys_mod.mixes(run_ok, key):  # results per system seed, and the recipes' robustness
            per = "; ".join(f"system {sys_mod.fmt_system(r.system)} best {r.best_score:.4f} (node {r.best_id})"
                            for r in sys_mod.by_system(run_ok, key) if r.best_id is not None)
            multi = [r for r in sys_mod.robustness(run_ok, key) if r.n_systems >= 2]
            summary += f" Per system: {per}." + (f" Most robust: {sys_mod.robustness_line(multi[0])}." if multi else "")
        tools.call("update_memory", {"section": "Previous Block Summary", "text": summary, "mode": "replace"})
        # keep working memory bounded: the block's running notes shrink to the latest few
        from rundir.memory import Memory
        notes = Memory.parse(ctx.memory).bodies["Emerging Observations"].splitlines()
        if len(notes) > 5:
            tools.call("update_memory", {"section": "Emerging Observations", "text": "\n".join(notes[-5:]),
                                         "mode": "replace"})
        helped = sorted(((h / n, n, p, d) for (p, d), (h, n) in ev.items() if h > 0), reverse=True)
        focus = helped[0][2] if helped else (self._candidates(regime)[0].name if self._candidates(regime) else "training")
        tools.call("update_memory", {"section": "Block Info", "text": f"Focus: {focus}", "mode": "replace"})
        tools.call("update_memory", {"section": "Hypothesis", "mode": "replace",
                                     "text": f"Refining {focus} around the best configuration should raise the score further."})
        scores = [n.score for n in ok[-3:]]
        if len(scores) == 3 and max(scores) - min(scores) <= 0.05:
            text = ctx.instructions.rstrip("\n")
            last = text.splitlines()[-1] if text else ""
            if last and text.count(last) == 1:
                tools.call("edit_instructions", {"old": last, "new": last + (
                    f"\n\n- Learned in block {ctx.block}: the score plateaued at {scores[-1]:.3f} (+-0.05) for 3 "
                    "iterations; switch parameter dimension or branch earlier.")})
