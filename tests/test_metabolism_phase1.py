"""Phase-1 checkpoint cache and a homeostasis (phase-2) training that uses it."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch
import yaml

from _metabolism_tiny import TINY_CYCLES, kinetics_cfg, read_metrics, stage_train_evaluate
from regimes.metabolism import evaluate, phase1, train
from regimes.metabolism.config import ConfigError, parse_config

ENTRIES = {"regimes.metabolism.train": train.main, "regimes.metabolism.evaluate": evaluate.main}


def _in_process(seen: list, cache=None):
    """subprocess.run of the two entries, run in this process (the real subprocesses: test_metabolism_train)."""
    def run(cmd, env, **kw):
        assert cmd[1] == "-m" and cmd[2] in ENTRIES, cmd
        if cache is not None:
            assert env["GNN_AGENT_CACHE"] == str(cache)
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, ENTRIES[cmd[2]](cmd[3:]), "", "")
    return run


def test_phase1_checkpoint_is_trained_once_then_used_by_phase2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    p1 = kinetics_cfg()
    p1_cfg = {"graph_model": p1["graph_model"], "training": p1["training"]}
    msgs = []
    seen = []
    monkeypatch.setattr(phase1.subprocess, "run", _in_process(seen, tmp_path / "cache"))
    path, metrics = phase1.ensure_phase1_checkpoint(TINY_CYCLES, p1_cfg, cache_root=tmp_path / "cache", log=msgs.append)
    assert [c[2] for c in seen] == ["regimes.metabolism.train", "regimes.metabolism.evaluate"]
    assert all("--inputs" in c for c in seen) and path.is_file() and "rate_constants_R2" in metrics
    assert (path.parent / "analysis.log").is_file() and not list(path.parent.parent.glob(".*"))  # no tmp, no inputs
    mtime = path.stat().st_mtime_ns

    calls = []
    monkeypatch.setattr(phase1.subprocess, "run", lambda *a, **k: calls.append(a))
    path2, metrics2 = phase1.ensure_phase1_checkpoint(TINY_CYCLES, p1_cfg, cache_root=tmp_path / "cache", log=msgs.append)
    assert path2 == path and metrics2 == metrics and not calls and path.stat().st_mtime_ns == mtime
    assert "cached" in msgs[-1]

    # phase 2 from that checkpoint (staged as a copy): reaction parameters stay frozen, phase-2 metrics appear
    h = kinetics_cfg(homeostasis_training=True, skip_phase1=True, phase1_checkpoint=str(path),
                     learning_rate_k=None, learning_rate_sub=None, learning_rate_node=None, coeff_k_center=0.0,
                     homeostasis_time_step=2)
    assert stage_train_evaluate(tmp_path, h, "p2")[:2] == (0, 0)
    staged = tmp_path / "p2_inputs" / "phase1_model.pt"
    assert staged.is_file() and staged.stat().st_ino != path.stat().st_ino  # a copy, not a link into the cache
    m = read_metrics(tmp_path / "p2")
    assert m["rate_constants_R2"] == pytest.approx(metrics["rate_constants_R2"], abs=1e-9)
    for k in ("phase2_loss", "phase2_node_magnitude", "avg_slope_ratio", "embedding_cluster_acc", "MLP_node_slope_ratio_1",
              "MLP_node_function_R2"):
        assert k in m
    assert m["frozen_params_changed"] == 0.0
    ck1 = torch.load(path, weights_only=True)["state_dict"]
    ck2 = torch.load(tmp_path / "p2" / "model.pt", weights_only=True)["state_dict"]
    assert torch.equal(ck1["log_k"], ck2["log_k"])
    assert not torch.equal(ck1["a"], ck2["a"])  # fresh embeddings trained in phase 2


def test_phase1_config_must_freeze_S(tmp_path):
    p1 = kinetics_cfg(freeze_stoichiometry=False)
    with pytest.raises(ConfigError, match="freeze_stoichiometry"):
        phase1.ensure_phase1_checkpoint(TINY_CYCLES, {"graph_model": p1["graph_model"], "training": p1["training"]},
                                        cache_root=tmp_path)


@pytest.mark.parametrize("name", ["stoichiometry_tied", "stoichiometry_untied", "rate_constants", "homeostasis"])
@pytest.mark.parametrize("profile", ["quick", "full"])
def test_default_configs_are_complete_and_valid(name, profile):
    raw = yaml.safe_load((phase1.CONFIG_DIR / f"{name}_{profile}.yaml").read_text())
    assert list(raw) == ["simulation", "graph_model", "training", "claude"]
    assert set(raw["claude"]) == {"n_epochs", "data_augmentation_loop", "n_iter_block", "ucb_c"}
    cfg = parse_config(raw)
    assert cfg.training.n_epochs <= raw["claude"]["n_epochs"]
    assert cfg.training.data_augmentation_loop <= raw["claude"]["data_augmentation_loop"]
    if profile == "quick":  # same simulation as full
        full = yaml.safe_load((phase1.CONFIG_DIR / f"{name}_full.yaml").read_text())
        assert raw["simulation"] == full["simulation"]
    if name == "homeostasis":
        assert cfg.training.skip_phase1 and cfg.training.homeostasis_training and cfg.training.phase1_checkpoint is None
        p1 = phase1.default_phase1_config(profile)
        phase1.phase1_key(raw["simulation"], p1)  # the phase-1 config validates against the same dataset


def test_phase1_trains_in_a_given_work_dir_then_caches(tmp_path, monkeypatch):
    """With work_dir (the run's prepare/phase1/), the training's outputs appear there while it runs
    (the live view follows its progress.jsonl) and the result is cached like any other."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("GNN_AGENT_CACHE", str(tmp_path / "cache"))
    p1 = kinetics_cfg()
    p1_cfg = {"graph_model": p1["graph_model"], "training": p1["training"]}
    outs = []

    seen = []
    run = _in_process(seen)

    def in_process(cmd, env, **kw):
        assert env["OMP_NUM_THREADS"] == "1"  # one thread unless the user set a count
        outs.append(cmd[cmd.index("--out") + 1])
        return run(cmd, env, **kw)

    monkeypatch.setattr(phase1.subprocess, "run", in_process)
    work = tmp_path / "run" / "prepare" / "phase1"
    work.mkdir(parents=True)
    (work / "stale.txt").write_text("from a killed attempt")
    path, metrics = phase1.ensure_phase1_checkpoint(TINY_CYCLES, p1_cfg, cache_root=tmp_path / "cache",
                                                    log=lambda m: None, work_dir=work)
    assert outs == [str(work), str(work)]  # training, then evaluation
    assert (work / "progress.jsonl").is_file() and (work / "metrics.json").is_file()
    assert not (work / "stale.txt").exists()
    assert path.is_file() and tmp_path / "cache" in path.parents and (path.parent / "progress.jsonl").is_file()
    assert json.loads((path.parent / "metrics.json").read_text()) == metrics


def test_phase2_config_must_have_the_checkpoints_mlp_sub_form(tmp_path, monkeypatch):
    """The MLP_sub form is part of the frozen reaction model: a phase 2 with another form would score a
    different f than phase 1 trained. A checkpoint without the key (older) counts as the default softplus."""
    from regimes.metabolism.config import simulation_hash
    from regimes.metabolism.data import check_phase1_checkpoint

    h = kinetics_cfg(homeostasis_training=True, skip_phase1=True, phase1_checkpoint="/x/model.pt",
                     learning_rate_k=None, learning_rate_sub=None, learning_rate_node=None, coeff_k_center=0.0)
    h["graph_model"]["mlp_sub_form"] = "c_softplus"
    cfg = parse_config(h)
    key = simulation_hash(cfg.simulation)
    ck = {"state_dict": {}, "simulation_hash": key, "config": {"graph_model": dict(h["graph_model"]),
                                                                "training": {"freeze_stoichiometry": True}}}
    check_phase1_checkpoint(ck, cfg, key, "ck")  # same form: fine
    del ck["config"]["graph_model"]["mlp_sub_form"]
    with pytest.raises(ConfigError, match="graph_model.mlp_sub_form='softplus', this config has 'c_softplus'"):
        check_phase1_checkpoint(ck, cfg, key, "ck")
