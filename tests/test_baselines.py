"""The optuna, cmaes and random baselines: ranges, frozen and slot-fixed keys, determinism."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.policies.base import StepContext
from agent.policies.baselines import CmaesPolicy, OptunaPolicy, RandomPolicy, search_space
from regimes.base import MetricSpec, ParamSpec, Regime, get_dotted, set_dotted
from rundir.records import NodeRecord
from rundir.store import Store


class _Env:
    def __init__(self, configs):
        self.configs = configs

    def slot_config(self, slot):
        return json.loads(json.dumps(self.configs[slot]))


class _Result:
    def __init__(self, ok=True, error=None):
        self.ok, self.error = ok, error


class RecordingToolBox:
    """Applies set_config to in-memory configs and records every call."""

    def __init__(self, configs):
        self.env = _Env(configs)
        self.calls = []

    def call(self, name, args):
        self.calls.append((name, json.loads(json.dumps(args))))
        if name == "set_config":
            for k, v in args["changes"].items():
                set_dotted(self.env.configs[args["slot"]], k, v)
        return _Result()

    def message(self, text):
        self.calls.append(("message", text))

    def slot_config(self, slot):
        return self.env.slot_config(slot)


def _regime(tmp_path) -> Regime:
    return Regime(
        name="toyb", title="t", description="d", package="regimes.toyb", package_dir=tmp_path,
        train_entry="regimes.toyb.train", instructions=tmp_path / "i.md",
        mutable=[
            ParamSpec(key="training.lr", type="float", low=1e-4, high=1e-1, log=True),
            ParamSpec(key="training.coeff", type="float", low=0.0, high=10.0),
            ParamSpec(key="training.batch_size", type="choice", choices=[4, 8, 16, 32]),
            ParamSpec(key="training.data_augmentation_loop", type="int", low=100, high=5000, log=True),
            ParamSpec(key="training.recurrent", type="bool"),
            ParamSpec(key="training.seed", type="int", low=0, high=10_000),
        ],
        frozen=["simulation.*", "training.freeze"],
        slot_fixed={"training.time_step": [4, 16, 32, 64]},
        metrics=[MetricSpec(name="r2")], primary_metric="r2",
    )


def _config(slot):
    return {"simulation": {"seed": 1, "n": 10},
            "training": {"lr": 1e-3, "coeff": 1.0, "batch_size": 8, "data_augmentation_loop": 200,
                         "recurrent": False, "seed": 42, "freeze": True, "time_step": [4, 16, 32, 64][slot % 4]},
            "claude": {"n_epochs": 1, "data_augmentation_loop": 1000, "n_iter_block": 8, "ucb_c": 1.414}}


def _ctx(tmp_path, step, slots, iterations_done=0):
    # the run's nodes as the loop passes them (RunCtx.search_tree: the store's records, by id)
    nodes = Store(tmp_path / "nodes.jsonl").nodes()
    return StepContext(step=step, run_dir=tmp_path, regime_name="toyb", block=1, iter_in_block=0,
                       n_iter_block=8, slots=slots, iterations_done=iterations_done, nodes=nodes)


def _node(node_id, cfg, score, slots=4) -> NodeRecord:
    """A finished node as the log step records it (batch by batch, slot by slot)."""
    return NodeRecord(id=node_id, parent=None, block=1, iter_in_block=node_id, iteration=(node_id - 1) // slots + 1,
                      slot=(node_id - 1) % slots, config=cfg, score=score, status="ok", classification="converged")


def _append(run_dir, *recs):
    store = Store(run_dir / "nodes.jsonl")
    for rec in recs:
        store.append(rec)


def _write_history(tmp_path, regime, n, rng_scores):
    recs = []
    for i in range(n):
        cfg = _config(i % 4)
        cfg["training"]["lr"] = 10 ** (-4 + 3 * ((i * 37) % 100) / 100)
        cfg["training"]["coeff"] = float(i % 10)
        recs.append(_node(i + 1, cfg, rng_scores[i]))
    _append(tmp_path, *recs)


def test_search_space_excludes_seed_frozen_slot_fixed_and_applies_caps(tmp_path):
    r = _regime(tmp_path)
    space = {p.key: p for p in search_space(r, _config(0))}
    assert "training.seed" not in space and "training.time_step" not in space and "training.freeze" not in space
    assert space["training.data_augmentation_loop"].high == 1000  # claude cap
    assert space["training.lr"].log


@pytest.mark.parametrize("policy_cls", [RandomPolicy, OptunaPolicy, CmaesPolicy])
def test_proposals_stay_in_range_and_never_touch_frozen_or_slot_fixed(tmp_path, policy_cls):
    r = _regime(tmp_path)
    _write_history(tmp_path, r, 12, [0.05 * i for i in range(12)])
    configs = {s: _config(s) for s in range(4)}
    before = {s: json.loads(json.dumps(c)) for s, c in configs.items()}
    tb = RecordingToolBox(configs)
    policy_cls(r, seed=3).act(_ctx(tmp_path, "mutate", [0, 1, 2, 3], iterations_done=12), tb)
    sets = [a for n, a in tb.calls if n == "set_config"]
    assert len([1 for n, _ in tb.calls if n == "finish_mutation"]) == 4
    assert sets, "a baseline must propose changes"
    for args in sets:
        for key, value in args["changes"].items():
            spec = r.param(key)
            assert spec is not None, f"{key} is not mutable"
            assert key not in r.slot_fixed and not r.is_frozen(key) and key != "training.seed"
            assert spec.check(value) is None, (key, value, spec.check(value))
            if key == "training.data_augmentation_loop":
                assert value <= 1000
    for s in range(4):  # frozen, slot-fixed and seed keys are untouched
        for key in ("simulation.seed", "simulation.n", "training.freeze", "training.time_step", "training.seed"):
            assert get_dotted(configs[s], key) == get_dotted(before[s], key)


def _proposals(tmp_path, policy_cls, seed, step="mutate", done=12):
    r = _regime(tmp_path)
    tb = RecordingToolBox({s: _config(s) for s in range(2)})
    policy_cls(r, seed=seed).act(_ctx(tmp_path, step, [0, 1], iterations_done=done), tb)
    return [a for n, a in tb.calls if n == "set_config"]


@pytest.mark.parametrize("policy_cls", [RandomPolicy, OptunaPolicy])
def test_same_seed_same_sequence_different_seed_differs(tmp_path, policy_cls):
    _write_history(tmp_path, _regime(tmp_path), 12, [0.07 * (i % 7) for i in range(12)])
    a = _proposals(tmp_path, policy_cls, seed=5)
    b = _proposals(tmp_path, policy_cls, seed=5)
    c = _proposals(tmp_path, policy_cls, seed=6)
    assert a == b
    assert a != c


def test_first_batch_starts_from_the_default_config(tmp_path):
    for cls in (RandomPolicy, OptunaPolicy, CmaesPolicy):
        r = _regime(tmp_path)
        tb = RecordingToolBox({s: _config(s) for s in range(2)})
        cls(r, seed=0).act(_ctx(tmp_path, "prepare", [0, 1]), tb)
        slot0 = [a for n, a in tb.calls if n == "set_config" and a["slot"] == 0]
        finish0 = [a for n, a in tb.calls if n == "finish_mutation" and a["slot"] == 0][0]
        assert slot0 == [] and "default" in finish0["mutation"], cls.name


def test_optuna_exploits_history(tmp_path):
    """After many trials where high lr scores best, TPE proposes high lr more often than random does."""
    r = _regime(tmp_path)
    recs = []
    for i in range(30):
        cfg = _config(0)
        lr = 10 ** (-4 + 3 * ((i * 37) % 30) / 30)
        cfg["training"]["lr"] = lr
        recs.append(_node(i + 1, cfg, float(lr > 1e-2)))
    _append(tmp_path, *recs)

    def frac_high(cls):
        hits = 0
        for seed in range(6):
            tb = RecordingToolBox({s: _config(s) for s in range(4)})
            cls(r, seed=seed).act(_ctx(tmp_path, "mutate", [0, 1, 2, 3], iterations_done=30), tb)
            lrs = [a["changes"].get("training.lr", 1e-3) for n, a in tb.calls if n == "set_config"]
            hits += sum(lr > 1e-2 for lr in lrs)
        return hits / 24

    assert frac_high(OptunaPolicy) > frac_high(RandomPolicy)


def test_mutation_line_uses_the_seed_number_format():
    from agent.policies.baselines import mutation_line

    assert mutation_line({"training.learning_rate_k": 1e-3}, {"training.learning_rate_k": 5e-3}) == \
        "learning_rate_k: 1E-3 -> 5E-3"
    assert mutation_line({"training.batch_size": 8}, {"training.batch_size": 8}) == "no change (default config)"


def _cma_run(run_dir, seed, batches, score, slots=(0, 1, 2, 3), start_id=1, policy=None):
    """Drive CmaesPolicy like the loop does: mutate, 'train' (score the config), append the node."""
    r = _regime(run_dir)
    policy = policy or CmaesPolicy(r, seed=seed)
    node_id, proposals = start_id, []
    for b in range(batches):
        tb = RecordingToolBox({s: _config(s) for s in slots})
        policy.act(_ctx(run_dir, "prepare" if b == 0 and start_id == 1 else "mutate", list(slots),
                        iterations_done=node_id - 1), tb)
        for s in slots:
            cfg = tb.env.configs[s]
            proposals.append(cfg["training"]["lr"])
            _append(run_dir, _node(node_id, cfg, score(cfg), slots=len(slots)))
            node_id += 1
    return policy, proposals


def _lr_score(cfg):
    # best at lr = 3e-2, on the log scale
    import math
    return max(0.0, 1.0 - abs(math.log10(cfg["training"]["lr"]) - math.log10(3e-2)) / 3)


def test_cmaes_starts_at_default_and_moves_towards_the_better_region(tmp_path):
    _, lrs = _cma_run(tmp_path, seed=1, batches=8, score=_lr_score)
    assert lrs[0] == 1e-3  # the default config is the first trial
    import math
    early = sorted(math.log10(v) for v in lrs[:8])
    late = sorted(math.log10(v) for v in lrs[-8:])
    # the later generations sit closer to the optimum than the first ones
    dist = lambda xs: sorted(abs(x - math.log10(3e-2)) for x in xs)[len(xs) // 2]
    assert dist(late) < dist(early)


def test_cmaes_tells_every_trained_node_once_and_fails_trials_never_trained(tmp_path):
    import optuna
    from optuna.trial import TrialState

    policy, _ = _cma_run(tmp_path, seed=2, batches=3, score=_lr_score)
    # one more mutate whose batch is never trained (the run is killed), then a resumed policy
    tb = RecordingToolBox({s: _config(s) for s in range(4)})
    policy.act(_ctx(tmp_path, "mutate", [0, 1, 2, 3], iterations_done=12), tb)
    resumed = CmaesPolicy(_regime(tmp_path), seed=2)  # a new process: the study comes from the journal
    _cma_run(tmp_path, seed=2, batches=1, score=_lr_score, start_id=13, policy=resumed)
    tb = RecordingToolBox({s: _config(s) for s in range(4)})
    resumed.act(_ctx(tmp_path, "mutate", [0, 1, 2, 3], iterations_done=16), tb)
    study = resumed._study(tmp_path, {})
    trials = study.get_trials(deepcopy=False)
    told = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(told) == 16 and study.user_attrs["last_node"] == 16
    assert sum(t.state == TrialState.FAIL for t in trials) == 4  # the batch that never trained
    assert sum(t.state == TrialState.RUNNING for t in trials) == 4  # the batch just asked
    nodes = Store(tmp_path / "nodes.jsonl").nodes()
    assert sorted(t.value for t in told) == sorted(n.score for n in nodes)
    assert [t.params for t in trials if t.state == TrialState.COMPLETE][0]["training.lr"] == 1e-3


def test_cmaes_same_seed_same_proposals_in_fresh_runs(tmp_path):
    runs = {}
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        (tmp_path / name).mkdir()
        runs[name] = _cma_run(tmp_path / name, seed=seed, batches=3, score=_lr_score)[1]
    assert runs["a"] == runs["b"] and runs["a"] != runs["c"]
