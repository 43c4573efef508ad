"""Throughput benchmarks of the metabolism package (see benchmarks/throughput.py).

`benchmarks()` returns (name, setup_fn) pairs; `setup_fn(device)` builds
everything once and returns `(step_fn, unit)`: each `step_fn()` call does one
unit of work ("step" = one gradient step at batch 8, "dataset" = one full
two-run dataset generation).
"""

from __future__ import annotations

from typing import Callable

import torch

from regimes.metabolism.config import Config, parse_config

SIM_CYCLES = {"network": "cycles", "generator": "mass_action", "n_metabolites": 100, "n_reactions": 256,
              "n_frames": 2880, "delta_t": 0.1, "log_k_min": -2.0, "log_k_max": -1.0,
              "c_init_min": 1.0, "c_init_max": 9.0, "homeostasis": True, "seed": 42}
#: the stoichiometry (tied) dataset of configs/stoichiometry_tied_*.yaml
SIM_RANDOM = {"network": "random", "generator": "mlp_rates", "n_metabolites": 100, "n_reactions": 256,
              "n_frames": 2880, "delta_t": 0.1, "log_k_min": -3.0, "log_k_max": -1.0,
              "c_init_min": 2.5, "c_init_max": 7.5, "flux_limiter": False, "segment_frames": 48,
              "generator_weight_gain": 3.0, "seed": 42}


#: fixed generator seeds: a benchmark needs some dataset of the right sizes, not the cache's secret one
_SEEDS = {"network": 1, "rates": 2, "types": 3, "initial": 4}


def _data(sim: dict, freeze: bool, device: str):
    """A dataset in memory (no cache files touched)."""
    from regimes.metabolism.config import SimulationConfig
    from regimes.metabolism.data import TrainingData
    from regimes.metabolism.simulator import simulate

    s = SimulationConfig.model_validate(sim)
    net, gen, conc, deriv = simulate(s, seeds=_SEEDS)
    return TrainingData(conc=conc[0], deriv=deriv[0], met_sub=net.met_sub, rxn_sub=net.rxn_sub, met_all=net.met_all,
                        rxn_all=net.rxn_all, sub_to_all=net.sub_to_all, delta_t=s.delta_t, n_met=net.n_met,
                        n_rxn=net.n_rxn, log_k_center=s.log_k_center, segment_frames=s.frames_per_segment,
                        s_sub=net.s_sub if freeze else None, s_all=net.s_all if freeze else None).to(device)


def make_step(cfg: Config, device: str = "cpu", data=None, reference: bool = False) -> Callable[[], float]:
    """One phase-1 gradient step (loss + the configured regularisers), as train_phase1 does it.
    `reference`: the model's reference code path and torch's Adam (model.fast = False), for A/B runs."""
    from regimes.metabolism.fast import ExplicitStep, compile_model, explicit_step_unavailable, step_begin, tune_malloc
    from regimes.metabolism.model import KineticsModel, build_model, data_free_S
    from regimes.metabolism.train import (LOSS_CODE, BatchIndices, SubPenaltyInputs, make_optimizer, param_groups,
                                          phase1_regularisers)

    tune_malloc()  # as train.run does
    t = cfg.training
    data = data if data is not None else _data(cfg.simulation.model_dump(), t.freeze_stoichiometry, device)
    torch.manual_seed(t.seed)
    model = build_model(cfg.graph_model, data, t.freeze_stoichiometry).to(device)
    model.fast = not reference
    opt = make_optimizer(model, param_groups(model, cfg))
    gen = torch.Generator().manual_seed(1)
    conc0, deriv0, ynorm2, B = data.conc, data.deriv, data.ynorm ** 2, t.batch_size
    kin = isinstance(model, KineticsModel)
    sub_terms = kin and bool(t.coeff_MLP_sub_diff or t.coeff_MLP_sub_norm or t.coeff_MLP_sub_zero or t.coeff_k_prior)
    sub_inputs = SubPenaltyInputs(model, data) if sub_terms else None
    s_prior = data_free_S("balanced", data.to("cpu")).to(device) if not model.freeze_S and t.coeff_S_prior else None
    coeff_L1 = t.first_coeff_L1 if t.n_epochs_init > 0 else t.coeff_S_L1  # train_phase1's first epoch

    compiled, _restore = compile_model(model, t.compile)
    batches = BatchIndices(torch.arange(data.n_frames, device=device), B, gen, device)  # as train_phase1
    explicit = None if explicit_step_unavailable(model, opt, t, compiled, LOSS_CODE) else ExplicitStep(
        model, opt, t, ynorm2, data.log_k_center, sub_inputs, s_prior)  # as train_phase1

    def step() -> torch.Tensor:
        step_begin(compiled, t.compile)
        idx = batches.next()
        c = conc0[idx]
        if explicit is not None:
            pred_loss, regul = explicit.step(c, deriv0[idx], coeff_L1)
            return pred_loss + regul
        d, f = model.forward_and_sub(c, sub_inputs.c, sub_inputs.s) if sub_terms else (model(c), None)
        loss = ((d - deriv0[idx]) ** 2).mean() / ynorm2 + phase1_regularisers(
            model, t, c, coeff_L1, data.log_k_center, s_prior, sub_inputs, f)  # train_phase1's own terms
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach()  # no .item(): a host sync per step on CUDA (train.py fetches every 64 steps)

    return step


#: training keys every benchmark config gets (throughput.py --compile sets "compile")
TRAINING_OVERRIDES: dict = {}


def _cfg(sim: dict, model: str, variant: str = "tied", **training) -> Config:
    return parse_config({"simulation": sim, "graph_model": {"model": model, "variant": variant},
                         "training": {"batch_size": 8, **training, **TRAINING_OVERRIDES}})


def _kinetics(device: str, reference: bool = False):
    """The rate_constants default recipe's step (configs/rate_constants_quick.yaml's training section,
    minus the schedule, which only sets the lr once per step)."""
    import yaml

    from regimes.metabolism.phase1 import CONFIG_DIR

    t = yaml.safe_load((CONFIG_DIR / "rate_constants_quick.yaml").read_text())["training"]
    keep = ("learning_rate_start", "learning_rate_k", "learning_rate_sub", "learning_rate_node", "coeff_k_center",
            "coeff_MLP_sub_diff", "coeff_MLP_sub_norm", "coeff_MLP_node_L1", "coeff_k_prior", "coeff_MLP_sub_zero")
    cfg = _cfg(SIM_CYCLES, "kinetics", freeze_stoichiometry=True, **{k: t[k] for k in keep if k in t})
    return make_step(cfg, device, reference=reference), "step"


def _phase2(T: int):
    """One phase-2 gradient step: a T-step rollout at batch 8 through the frozen reactions."""
    def setup(device: str, reference: bool = False):
        from regimes.metabolism.fast import tune_malloc
        from regimes.metabolism.model import build_model
        from regimes.metabolism.train import make_optimizer
        tune_malloc()  # as train.run does
        cfg = _cfg(SIM_CYCLES, "kinetics", freeze_stoichiometry=True, homeostasis_training=True)
        data = _data(SIM_CYCLES, True, device)
        torch.manual_seed(0)
        model = build_model(cfg.graph_model, data, True).to(device)
        model.fast = not reference
        for p in model.parameters():
            p.requires_grad_(False)
        params = list(model.mlp_node.parameters()) + [model.a]
        for p in params:
            p.requires_grad_(True)
        opt = make_optimizer(model, [{"params": params, "lr": 1e-2}])  # FlatAdam on the fast path, as train_phase2
        gen = torch.Generator().manual_seed(1)
        conc0, dt = data.conc, data.delta_t

        def step() -> float:
            idx = torch.randint(0, data.n_frames - T, (8,), generator=gen).to(device)
            x = conc0[idx]
            for _ in range(T):
                x = (x + dt * model(x)).clamp_min(0.0)
            loss = ((x - conc0[idx + T]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()
        return step, "step"
    return setup


def _stoich(variant: str):
    def setup(device: str, reference: bool = False):
        return make_step(_cfg(SIM_RANDOM, "stoichiometry", variant), device, reference=reference), "step"
    return setup


def _simulate(sim: dict):
    def setup(device: str):
        from regimes.metabolism.config import SimulationConfig
        from regimes.metabolism.simulator import simulate
        s = SimulationConfig.model_validate(sim)
        return (lambda: simulate(s, seeds=_SEEDS)), "dataset"
    return setup


def benchmarks() -> list[tuple[str, Callable]]:
    return [("metabolism.kinetics_step_b8", _kinetics),
            ("metabolism.stoichiometry_tied_step_b8", _stoich("tied")),
            ("metabolism.stoichiometry_untied_step_b8", _stoich("untied")),
            ("metabolism.homeostasis_phase2_step_b8_T4", _phase2(4)),
            ("metabolism.simulate_cycles_mass_action", _simulate(SIM_CYCLES)),
            ("metabolism.simulate_random_mlp_rates", _simulate(SIM_RANDOM))]


def _kinetics_naive(device: str):
    """Reference 'before' implementation: MLP_sub once per substrate EDGE, the product
    by scatter_reduce, dc/dt by index_add over all edges, regularisers always built
    (even with a zero coefficient). Same parameters and loss as the real step."""
    import torch.nn.functional as F

    from regimes.metabolism.model import KineticsModel
    from regimes.metabolism.train import param_groups

    cfg = _cfg(SIM_CYCLES, "kinetics", freeze_stoichiometry=True, learning_rate_k=5e-3, learning_rate_sub=5e-4,
               learning_rate_node=1e-3, coeff_k_center=5.0, coeff_MLP_sub_diff=3.0)
    data = _data(SIM_CYCLES, True, device)
    torch.manual_seed(0)
    m = KineticsModel(cfg.graph_model, data, True).to(device)
    opt = torch.optim.Adam(param_groups(m, cfg))
    gen = torch.Generator().manual_seed(1)
    conc0, deriv0, ynorm2 = data.conc, data.deriv, data.ynorm ** 2

    def step() -> float:
        idx = torch.randint(0, data.n_frames, (8,), generator=gen).to(device)
        c = conc0[idx]
        B = c.shape[0]
        x = torch.stack((c[:, m.met_sub], m.sto_sub.expand(B, -1)), -1)
        f = F.softplus(m.mlp_sub(x).squeeze(-1))
        prod = torch.ones(B, m.n_rxn).scatter_reduce(1, m.rxn_sub.expand(B, -1), f, reduce="prod")
        v = 10 ** m.log_k * prod
        d = torch.zeros(B, m.n_met).index_add(1, m.met_all, m.sto_all * v[:, m.rxn_all])
        node = m.mlp_node(torch.cat((c.unsqueeze(-1), m.a.expand(B, -1, -1)), -1)).squeeze(-1)
        d = d + node
        loss = ((d - deriv0[idx]) ** 2).mean() / ynorm2
        grid = torch.linspace(0, 10, 32)
        fg = F.softplus(m.mlp_sub(torch.stack((grid, torch.ones_like(grid)), -1)).squeeze(-1))
        loss = loss + 3.0 * torch.relu(fg[:-1] - fg[1:]).mean() + 0.0 * node.abs().mean()
        loss = loss + 5.0 * (m.log_k.mean() + 1.5) ** 2 + 0.0 * (m.sto_all ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step, "step"


def _stoich_naive(device: str):
    """Reference 'before' stoichiometry step: dc/dt by index_add over the edges."""
    from regimes.metabolism.model import StoichiometryModel
    from regimes.metabolism.train import param_groups
    import torch.nn.functional as F

    cfg = _cfg(SIM_RANDOM, "stoichiometry", "tied")
    data = _data(SIM_RANDOM, False, device)
    torch.manual_seed(0)
    m = StoichiometryModel(cfg.graph_model, data, False).to(device)
    opt = torch.optim.Adam(param_groups(m, cfg))
    gen = torch.Generator().manual_seed(1)
    conc0, deriv0, ynorm2 = data.conc, data.deriv, data.ynorm ** 2

    def step() -> float:
        idx = torch.randint(0, data.n_frames, (8,), generator=gen).to(device)
        c = conc0[idx]
        B = c.shape[0]
        mag = m.sto_all[m.sub_to_all].abs()
        msg = m.msg_mlp(torch.stack((c[:, m.met_sub], mag.expand(B, -1)), -1))
        h = torch.zeros(B, m.n_rxn, msg.shape[-1]).index_add(1, m.rxn_sub, msg)
        v = 10 ** m.log_k * F.softplus(m.rate_mlp(h).squeeze(-1))
        d = torch.zeros(B, m.n_met).index_add(1, m.met_all, m.sto_all * v[:, m.rxn_all])
        loss = ((d - deriv0[idx]) ** 2).mean() / ynorm2 + 0.0 * m.sto_all.abs().mean() + 0.0 * torch.sin(m.sto_all).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss.item()

    return step, "step"


def benchmarks_ab() -> list[tuple[str, Callable, Callable]]:
    """(name, setup, reference setup): the current step against the model's reference code path (model.py
    `fast = False`, torch's Adam), alternated in one process by `throughput.py --ab`."""
    pairs = [("metabolism.kinetics_step_b8", _kinetics),
             ("metabolism.stoichiometry_tied_step_b8", _stoich("tied")),
             ("metabolism.stoichiometry_untied_step_b8", _stoich("untied")),
             ("metabolism.homeostasis_phase2_step_b8_T4", _phase2(4))]
    out = [(n + " vs reference", f, lambda device, f=f: f(device, reference=True)) for n, f in pairs]
    # and against the original implementation (the 10x target)
    return out + [("metabolism.kinetics_step_b8 vs naive", _kinetics, _kinetics_naive),
                  ("metabolism.stoichiometry_tied_step_b8 vs naive", _stoich("tied"), _stoich_naive)]


def benchmarks_naive() -> list[tuple[str, Callable]]:
    """The 'before' references (run with `throughput.py --naive`)."""
    return [("metabolism.kinetics_step_b8_naive", _kinetics_naive),
            ("metabolism.stoichiometry_tied_step_b8_naive", _stoich_naive)]
