"""Baseline policies: Optuna TPE, Optuna CMA-ES and random search (docs/contracts.md §5).

They answer the same graph steps through the same tools as the heuristic and
Claude policies, on the same executor and budget, so their runs write the
same nodes.jsonl, ucb_scores.txt and analysis.md and `agent status` /
`agent report` work on them. They skip the memory prose.

The search space is the regime's mutable keys with their declared ranges
(log scale where declared), minus seed keys (a baseline searches
hyperparameters; changing the dataset or init seed is not a hyperparameter)
and minus slot-fixed and frozen keys (never mutable by contract). The
`claude:` budget caps of the config bound n_epochs and data_augmentation_loop.

TPE and random are stateless between steps: each mutate step rebuilds what
it needs from the run's nodes (`StepContext.nodes`, read from nodes.jsonl), so a resumed run continues the same search and the
proposals are a deterministic function of (run seed, history). CMA-ES keeps
an evolving mean and covariance that is not a function of the told values
alone, so its study lives in a journal file in the run directory
(`policy/cmaes.journal`) and is reloaded on resume.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from agent.policies.base import Policy, StepContext
from regimes.base import ParamSpec, Regime, get_dotted
from rundir.records import ConfigChange, Mutation, NodeRecord

#: training keys bounded by the claude: budget cap of the same name
_CAPPED = {"training.n_epochs": "claude.n_epochs",
           "training.data_augmentation_loop": "claude.data_augmentation_loop"}


def search_space(regime: Regime, config: dict) -> list[ParamSpec]:
    """The regime's searchable keys, with ranges clipped to the config's budget caps."""
    space: list[ParamSpec] = []
    for p in regime.mutable:
        if p.name == "seed" or p.key in regime.slot_fixed or regime.is_frozen(p.key):
            continue
        cap = get_dotted(config, _CAPPED[p.key]) if p.key in _CAPPED else None
        if cap is not None and p.high is not None and cap < p.high:
            if cap < p.low:
                continue  # the budget leaves no room to vary this key
            p = p.model_copy(update={"high": float(cap)})
        space.append(p)
    return space


def mutation_line(old: dict, new: dict) -> str:
    """'k1: old -> new; k2: old -> new' over the dotted keys that changed (the records' line)."""
    changes = [ConfigChange.of(k, old.get(k), v) for k, v in new.items() if old.get(k) != v]
    return Mutation(changes=changes).line() if changes else "no change (default config)"


class _SearchPolicy(Policy):
    """Shared step answers of the baselines; subclasses implement `propose`."""

    def __init__(self, regime: Regime, seed: int = 0):
        self.regime = regime
        self.seed = int(seed)

    # subclasses: return one config change (dotted key -> value) per slot
    def propose(self, ctx: StepContext, space: list[ParamSpec], history: list[NodeRecord],
                slots: list[int], defaults: dict[str, Any]) -> dict[int, dict[str, Any]]:
        raise NotImplementedError

    def act(self, ctx: StepContext, tools) -> None:
        step = ctx.step
        if step in ("prepare", "mutate"):
            self._mutate(ctx, tools)
        elif step == "analyse":
            for r in ctx.results:
                tools.call("submit_analysis", {
                    "slot": r.slot, "visual": f"not inspected ({self.name} baseline)",
                    "observation": f"score={r.score:.4f} ({r.classification})"})
        elif step == "select_parent":
            # A baseline samples afresh each time: its trials do not build on a parent.
            for s in ctx.slots:
                tools.call("choose_parent", {"slot": s, "parent": "root", "strategy": self.name,
                                             "reason": f"{self.name} baseline samples independently of parents"})
        # log and block_end: the baselines keep no memory prose

    def _mutate(self, ctx: StepContext, tools) -> None:
        base = tools.slot_config(ctx.slots[0])
        space = search_space(self.regime, base)
        history = [n for n in ctx.nodes if n.config]  # the run's finished nodes, by id
        defaults = {p.key: get_dotted(base, p.key) for p in space}
        proposals = self.propose(ctx, space, history, list(ctx.slots), defaults)
        for s in ctx.slots:
            cfg = tools.slot_config(s)
            old = {p.key: get_dotted(cfg, p.key) for p in space}
            change = {k: v for k, v in proposals[s].items() if old.get(k) != v}
            if change:
                res = tools.call("set_config", {"slot": s, "changes": change})
                if not res.ok:  # should not happen: proposals are inside the declared ranges
                    tools.message(f"slot {s}: proposal rejected ({res.error}); training the unchanged config")
                    change = {}
            tools.call("finish_mutation", {
                "slot": s, "mutation": mutation_line(old, change), "strategy": self.name,
                "parent_rule": "root (baseline)", "hypothesis": f"{self.name} proposal"})


def _sample(p: ParamSpec, rng: np.random.Generator) -> Any:
    if p.type == "bool":
        return bool(rng.integers(0, 2))
    if p.type == "choice":
        return p.choices[int(rng.integers(0, len(p.choices)))]
    if p.log:
        v = math.exp(rng.uniform(math.log(p.low), math.log(p.high)))
    else:
        v = rng.uniform(p.low, p.high)
    if p.type == "int":
        return int(min(p.high, max(p.low, round(v))))
    return float(min(p.high, max(p.low, v)))


class RandomPolicy(_SearchPolicy):
    """Uniform random search (log-uniform where the range is log scale).

    The first slot of the first batch trains the default config, as every
    policy's search starts from it."""

    name = "random"

    def propose(self, ctx, space, history, slots, defaults):
        out = {}
        for s in slots:
            if not history and ctx.step == "prepare" and s == slots[0]:
                out[s] = dict(defaults)
                continue
            rng = np.random.default_rng([self.seed, ctx.iterations_done, s])
            out[s] = {p.key: _sample(p, rng) for p in space}
        return out


def _distribution(p: ParamSpec):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "bool":
        return CategoricalDistribution([False, True])
    if p.type == "choice":
        return CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log)
    return FloatDistribution(float(p.low), float(p.high), log=p.log)


class OptunaPolicy(_SearchPolicy):
    """Optuna TPE through ask-and-tell over the regime's mutable keys.

    Each mutate step rebuilds the study from nodes.jsonl (finished nodes are
    told with their score; failed ones with score 0, as the UCB sees them),
    enqueues the default config as the very first trial, and asks one trial
    per slot (constant liar keeps a batch's trials apart). The sampler seed
    is derived from the run seed and the history length, so the same seed
    and history give the same proposals."""

    name = "optuna"

    def propose(self, ctx, space, history, slots, defaults):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        dists = {p.key: _distribution(p) for p in space}
        sampler = optuna.samplers.TPESampler(seed=(self.seed * 1_000_003 + len(history)) % (2**31),
                                             n_startup_trials=max(4, len(slots)), constant_liar=True)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        told = 0
        for n in history:
            params = {}
            for k, d in dists.items():
                v = get_dotted(n.config, k)
                if v is None:
                    break
                try:
                    if not d._contains(d.to_internal_repr(v)):
                        break
                except (ValueError, TypeError):
                    break
                params[k] = v
            else:
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=dists, value=float(n.score)))
                told += 1
        if told == 0 and not history:
            study.enqueue_trial({k: v for k, v in defaults.items() if k in dists}, skip_if_exists=True)
        out = {}
        for s in slots:
            trial = study.ask(dists)
            out[s] = dict(trial.params)
        return out


def _matches(params: dict[str, Any], config: dict, dists: dict) -> bool:
    """Whether a finished node's config holds these trial params (float-tolerant)."""
    for k, v in params.items():
        c = get_dotted(config, k)
        if isinstance(v, float) and isinstance(c, (int, float)) and not isinstance(c, bool):
            if not math.isclose(float(c), v, rel_tol=1e-9, abs_tol=1e-12):
                return False
        elif c != v:
            return False
    return True


class CmaesPolicy(_SearchPolicy):
    """Optuna's CMA-ES sampler, started at the default config.

    - Float and integer keys are searched by CMA-ES in Optuna's [0, 1]
      transformed space (log keys on the log scale); integers are rounded to
      their step when a trial is asked (Optuna's `transform_step`).
    - Boolean and choice keys are outside CMA-ES: Optuna samples them with
      the independent sampler, here a seeded uniform `RandomSampler`.
    - The search starts at the default config (`x0`, and the default itself
      is the first trial) with Optuna's default step size (1/6 of each range)
      and population (4 + 3 ln d).
    - A batch of slots is asked from one generation; the told values are
      the nodes' scores (0 for a failed training, as the UCB sees it). A
      trial asked but never trained (a batch killed before it ran) is marked
      failed at the next mutate step, so it does not hold a generation.
    """

    name = "cmaes"

    def _study(self, run_dir: Path, x0: dict[str, Any]):
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        path = Path(run_dir) / "policy" / "cmaes.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(path)))
        with warnings.catch_warnings():
            # x0 is deprecated from Optuna 4.9 (removal in 6, hence the <6 pin) with no
            # replacement yet; without it the search would start at the middle of each range
            warnings.simplefilter("ignore", FutureWarning)
            sampler = optuna.samplers.CmaEsSampler(
                x0=x0 or None, seed=self.seed % (2**31), n_startup_trials=0,
                independent_sampler=optuna.samplers.RandomSampler(seed=(self.seed + 1) % (2**31)),
                warn_independent_sampling=False)
        return optuna.create_study(study_name="cmaes", storage=storage, sampler=sampler,
                                   direction="maximize", load_if_exists=True)

    def propose(self, ctx, space, history, slots, defaults):
        from optuna.trial import TrialState

        dists = {p.key: _distribution(p) for p in space}
        numeric = {p.key: defaults[p.key] for p in space if p.type in ("int", "float") and defaults.get(p.key) is not None}
        study = self._study(ctx.run_dir, numeric)
        # tell the trainings of the last batch: a running trial is matched to a finished node newer
        # than the last one told; a running trial no such node holds was never trained
        last = int(study.user_attrs.get("last_node", 0))
        pending = [n for n in history if n.id > last]  # history is by id
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            node = next((n for n in pending if _matches(t.params, n.config, dists)), None)
            if node is None:
                study.tell(t.number, state=TrialState.FAIL)
                continue
            pending.remove(node)
            study.tell(t.number, float(node.score))
        if history:
            study.set_user_attr("last_node", max(last, *(n.id for n in history)))
        if not study.trials:
            study.enqueue_trial({k: v for k, v in defaults.items() if k in dists})
        out = {}
        for s in slots:
            trial = study.ask(dists)
            out[s] = dict(trial.params)
        return out


def _register() -> None:
    from agent.policies.registry import register_policy

    register_policy("cmaes", lambda **kw: CmaesPolicy(kw["regime"], seed=kw.get("seed", 0)))
    register_policy("optuna", lambda **kw: OptunaPolicy(kw["regime"], seed=kw.get("seed", 0)))
    register_policy("random", lambda **kw: RandomPolicy(kw["regime"], seed=kw.get("seed", 0)))


_register()
