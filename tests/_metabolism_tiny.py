"""Tiny metabolism configs shared by the tests (fast: a dozen metabolites, ~100 frames)."""

from __future__ import annotations

import copy

TINY_CYCLES = {"network": "cycles", "generator": "mass_action", "n_metabolites": 12, "n_reactions": 13,
               "n_frames": 120, "delta_t": 0.1, "log_k_min": -2.0, "log_k_max": -1.0,
               "c_init_min": 1.0, "c_init_max": 9.0, "homeostasis": True, "seed": 3}
TINY_RANDOM = {"network": "random", "generator": "mlp_rates", "n_metabolites": 15, "n_reactions": 20,
               "n_frames": 120, "delta_t": 1.0, "log_k_min": -3.0, "log_k_max": -1.0,
               "c_init_min": 2.5, "c_init_max": 7.5, "flux_limiter": True, "generator_hidden": 16,
               "seed": 5}


def kinetics_cfg(**training) -> dict:
    t = {"learning_rate_start": 1e-3, "learning_rate_k": 5e-3, "learning_rate_sub": 5e-4,
         "learning_rate_node": 1e-3, "coeff_k_center": 1.0, "freeze_stoichiometry": True,
         "batch_size": 4, "n_epochs": 1, "data_augmentation_loop": 2, "seed": 0}
    t.update(training)
    return {"simulation": copy.deepcopy(TINY_CYCLES),
            "graph_model": {"model": "kinetics", "hidden_dim": 16, "test_rollout_frames": 50, "eval_grid": 20},
            "training": {k: v for k, v in t.items() if v is not None},
            "claude": {"n_epochs": 1, "data_augmentation_loop": 10, "n_iter_block": 4, "ucb_c": 1.414}}


def stoich_cfg(variant: str = "tied", **training) -> dict:
    t = {"learning_rate_start": 1e-3, "learning_rate_S_start": 1e-3, "batch_size": 4, "n_epochs": 1,
         "data_augmentation_loop": 2, "seed": 0}
    t.update(training)
    return {"simulation": copy.deepcopy(TINY_RANDOM),
            "graph_model": {"model": "stoichiometry", "variant": variant, "hidden_dim": 16, "msg_dim": 8,
                            "test_rollout_frames": 50, "eval_grid": 20},
            "training": {k: v for k, v in t.items() if v is not None}}


def write_config(path, cfg: dict):
    """Write `cfg` as YAML to `path` and return the path."""
    import yaml
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg))
    return path


def stage_train_evaluate(tmp_path, cfg: dict, name: str = "run", plots: bool = False) -> tuple[int, int, "Path"]:
    """A whole training as the runner drives it, in this process: stage into tmp, the training entry
    (reads only the staged directory), the evaluation entry. Returns (train exit, eval exit, out dir)."""
    from regimes.metabolism import data, evaluate, train

    cfg_path = write_config(tmp_path / f"{name}.yaml", cfg)
    inputs, out = tmp_path / f"{name}_inputs", tmp_path / name
    data.stage(cfg_path, inputs, log=lambda *a: None)
    common = ["--config", str(cfg_path), "--inputs", str(inputs), "--out", str(out)]
    rc_train = train.main(common)
    rc_eval = evaluate.main(common + ([] if plots else ["--no-plots"])) if rc_train == 0 else -1
    return rc_train, rc_eval, out


def read_metrics(out) -> dict:
    import json
    from pathlib import Path

    return json.loads((Path(out) / "metrics.json").read_text())
