"""Training of the metabolism models and the training entry point (docs/contracts.md §2b).

    python -m regimes.metabolism.train --config C --inputs IN --out OUT [--device auto|cpu|cuda]

Reads ONLY the staged inputs directory IN (run 0, the graph support, the
queries, and for homeostasis the phase-1 checkpoint; see data.py) and the
config's graph_model / training sections; writes OUT/progress.jsonl,
OUT/model.pt and OUT/predictions.pt (a flat data-only dict answering the
queries: learned S, log k, MLP_sub and MLP_node on the query grid,
embeddings, the rollout from the held-out start, loss history, timing). It
computes no metric: the evaluation entry (regimes.metabolism.evaluate, a
separate process) does, from the predictions, the truth and run 1.

Phase 1 (`train_phase1`): derivative regression (or recurrent rollout) of the
stoichiometry or kinetics model; S learnable or frozen. Phase 2
(`train_phase2`, homeostasis, SCIENCE.md A5): from a phase-1 model, freeze
log_k, MLP_sub and S; train a fresh MLP_node and embeddings by recurrent
rollout. The agent may edit `train_phase1` (stoichiometry / rate-constant
regimes) and the marker region ``phase2_loop`` inside `train_phase2`
(homeostasis regime); keep their names and the markers stable.

Exit codes and failure.json: regimes.runtime (0 ok, 1 crash, 2 config,
3 diverged, 5 bad inputs).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch

from regimes import runtime
from regimes.metabolism.config import Config, ConfigError, load_config
from regimes.metabolism.data import STAGED_PHASE1, TrainingData, check_phase1_checkpoint, load_staged, query_grid
from regimes.metabolism.fast import (ExplicitStep, FlatAdam, SubPenaltyFn, compile_model, explicit_step_unavailable, step_begin,
                                    tune_malloc)
from regimes.metabolism.model import KineticsModel, build_model, data_free_S, fast_path_line, padded_layout, rollout
from regimes.runtime import ProgressWriter, check_finite

#: parameters phase 2 must leave bit-identical to the phase-1 checkpoint (the evaluation checks them)
FROZEN_PREFIXES = ("log_k", "sto_all", "sto_sub", "mlp_sub.")


class History:
    """Per-step scalars in a preallocated tensor (memory stays flat; grows by doubling only when a loop
    runs longer than planned)."""

    def __init__(self, capacity: int):
        self._buf = torch.empty(max(1, int(capacity)), dtype=torch.float64)
        self.n = 0

    def append(self, v: float) -> None:
        if self.n == len(self._buf):
            self._buf = torch.cat([self._buf, torch.empty_like(self._buf)])
        self._buf[self.n] = v
        self.n += 1

    def __len__(self) -> int:
        return self.n

    def values(self) -> torch.Tensor:
        return self._buf[: self.n].clone()


class StepLog:
    """Per-step (loss, regul) kept as device tensors and fetched every `every` steps or `every_s` seconds:
    `.item()` each step is a host sync on CUDA (the CPU waits for the GPU, which then idles while Python
    queues the next step). Divergence is caught at the next fetch (at most `every` steps late) and reported
    with its own step; progress lines lag by at most `every_s` (slow steps: long rollouts)."""

    def __init__(self, losses: History, reguls: History, progress: ProgressWriter, every: int = 64,
                 every_s: float = 1.0):
        self.losses, self.reguls, self.progress, self.every, self.every_s = losses, reguls, progress, every, every_s
        self._pending: list[torch.Tensor] = []
        self._step = 0
        self._last = time.perf_counter()

    def add(self, pred_loss: torch.Tensor, regul: torch.Tensor, step: int) -> None:
        self._pending += [pred_loss.detach(), regul.detach()]
        self._step = step
        if len(self._pending) >= 2 * self.every or time.perf_counter() - self._last >= self.every_s:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        vals = torch.stack(self._pending).double().cpu().tolist()  # the one sync per chunk
        self._pending = []
        self._last = time.perf_counter()
        first = self._step - len(vals) // 2 + 1
        for i in range(0, len(vals), 2):
            lv, rv = vals[i], vals[i + 1]
            check_finite(lv + rv, first + i // 2)
            self.losses.append(lv)
            self.reguls.append(rv)
        self.progress(self.progress.base + self._step, vals[-2])


def to_device(t: torch.Tensor, dev) -> torch.Tensor:
    """A CPU tensor on `dev` without a host sync: a blocking host-to-GPU copy waits for the stream, so
    copy from pinned memory, asynchronously (the caching host allocator keeps the source alive)."""
    if torch.device(dev).type == "cpu":
        return t
    return t.pin_memory().to(dev, non_blocking=True)


class BatchIndices:
    """Each step's training frames, drawn a block of steps at a time: ONE randint call (and one host-to-device
    copy) per block instead of per step, and the same numbers as one draw per step (torch's CPU randint fills a
    (k, B) tensor in the order that k draws of (B,) take; tests/test_metabolism_train.py checks it). `per_step`
    (a loop that draws other numbers from `gen` between the steps: recurrent noise) keeps one draw per step."""

    def __init__(self, starts: torch.Tensor, batch_size: int, gen: torch.Generator, dev, per_step: bool = False,
                 block: int = 256):
        self.starts, self.B, self.gen, self.dev = starts, batch_size, gen, dev
        self.block = 1 if per_step else block
        self._rows: torch.Tensor | None = None
        self._j = 0

    def next(self) -> torch.Tensor:
        if self._rows is None or self._j == len(self._rows):
            draw = torch.randint(0, len(self.starts), (self.block, self.B), generator=self.gen)
            self._rows = self.starts[to_device(draw, self.dev)]
            self._j = 0
        self._j += 1
        return self._rows[self._j - 1]


def make_optimizer(model: torch.nn.Module, groups: list[dict]) -> torch.optim.Optimizer:
    """FlatAdam (one flat update, fast.py) with the model's fast path, torch's Adam with the reference path."""
    if getattr(model, "fast", False):
        return FlatAdam(groups)
    return torch.optim.Adam(groups)


def iterations_per_epoch(n_frames: int, data_augmentation_loop: int, batch_size: int) -> int:
    """int(n_frames * data_augmentation_loop / batch_size * 0.2), at least 1."""
    return max(1, int(n_frames * data_augmentation_loop / batch_size * 0.2))


def param_groups(model: torch.nn.Module, cfg: Config) -> list[dict]:
    """Adam parameter groups with their own learning rates (lr_S 0 -> lr)."""
    t = cfg.training
    groups = [{"name": "S", "params": model.s_param_groups(), "lr": t.lr("S")},
              {"name": "log_k", "params": [model.log_k], "lr": t.lr("k")}]
    if isinstance(model, KineticsModel):
        groups.append({"name": "MLP_sub", "params": list(model.mlp_sub.parameters()), "lr": t.lr("sub")})
        if model.use_node:
            groups.append({"name": "MLP_node", "params": list(model.mlp_node.parameters()), "lr": t.lr("node")})
            groups.append({"name": "embedding", "params": [model.a], "lr": t.lr("embedding")})
    else:
        groups.append({"name": "MLP", "params": model.mlp_parameters(), "lr": t.learning_rate_start})
    return [g for g in groups if g["params"]]


def sub_grid(model: KineticsModel, data: TrainingData, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Concentration grid over the 1-99 % quantiles of run 0 and the |s| values of the support ({1, 2} if learned)."""
    c = query_grid(data.conc, n).to(data.conc.device)
    s = torch.unique(model.pair_s) if model.freeze_S else torch.tensor([1.0, 2.0], device=data.conc.device)
    return c, s


class SubPenaltyInputs:
    """The MLP_sub inputs of the phase-1 penalties, stacked so that ONE forward pass serves them all
    (a tiny MLP is overhead-bound: three calls cost about three times one): the grid for each |s|
    (monotonicity), f(0, s) and f(1, s) for each |s| (coeff_MLP_sub_zero), and f(1, 1) (the gauge)."""

    def __init__(self, model: KineticsModel, data: TrainingData):
        c_grid, s_grid = sub_grid(model, data)
        self.n_s, self.n_c = len(s_grid), len(c_grid)
        dev = c_grid.device
        c = torch.cat([c_grid.repeat(self.n_s), torch.zeros(self.n_s, device=dev), torch.ones(self.n_s + 1, device=dev)])
        s = torch.cat([s_grid.repeat_interleave(self.n_c), s_grid, s_grid, torch.ones(1, device=dev)])
        self.c, self.s = c, s


def sub_penalties(model: KineticsModel, t, inp: SubPenaltyInputs, k_center: float,
                  f: torch.Tensor | None = None) -> torch.Tensor:
    """coeff_MLP_sub_diff (f must not decrease in c on the grid), coeff_MLP_sub_norm ((f(1,1) - 1)^2),
    coeff_MLP_sub_zero ((f(0,s) / f(1,s))^2: no substrate, no rate) and coeff_k_prior (mean of
    (log k + n_sub log10 f(1,1) - centre)^2, the gauge-corrected log k that rate_constants_R2 scores).
    `f`: MLP_sub at inp's rows when already computed (model.forward_and_sub)."""
    if f is None:
        f = model.f_sub(inp.c, inp.s)
    if getattr(model, "fast", False) and model.fast_ok():  # the same terms as one node (fast.SubPenaltyFn)
        return SubPenaltyFn.apply(f, model.log_k, model.n_sub_f.to(f.dtype), inp.n_s, inp.n_c, float(t.coeff_MLP_sub_diff),
                                  float(t.coeff_MLP_sub_norm), float(t.coeff_MLP_sub_zero), float(t.coeff_k_prior),
                                  float(k_center))
    n = inp.n_s * inp.n_c
    grid, f0, f1, f11 = f[:n].view(inp.n_s, inp.n_c), f[n:n + inp.n_s], f[n + inp.n_s:n + 2 * inp.n_s], f[-1]
    regul = f.new_zeros(())
    if t.coeff_MLP_sub_diff:
        regul = regul + t.coeff_MLP_sub_diff * torch.relu(grid[:, :-1] - grid[:, 1:]).mean()
    if t.coeff_MLP_sub_norm:
        regul = regul + t.coeff_MLP_sub_norm * (f11 - 1.0).pow(2)
    if t.coeff_MLP_sub_zero:
        regul = regul + t.coeff_MLP_sub_zero * (f0 / f1).pow(2).sum()
    if t.coeff_k_prior:
        corrected = model.log_k + model.n_sub * torch.log10(f11)
        regul = regul + t.coeff_k_prior * (corrected - k_center).pow(2).mean()
    return regul


def S_shape_prior(s: torch.Tensor, target: torch.Tensor, rxn_all: torch.Tensor, n_rxn: int) -> torch.Tensor:
    """Mean over reactions of 1 - cos(angle between column j of s and of target), both (E_all,) on the
    support. Scale-free in s (its gradient has no component along a column: the scale gauge is left alone)."""
    def col(x):
        return x.new_zeros(n_rxn).index_add_(0, rxn_all, x)
    cos = col(s * target) / (col(s * s) * col(target * target)).clamp_min(1e-24).sqrt()
    return (1.0 - cos).mean()


def least_squares_k(model: KineticsModel, data: TrainingData, ridge: float = 1e-8, chunk: int = 512) -> int:
    """Set log k to the least-squares fit of the training derivatives with MLP_sub and MLP_node fixed.

    With S given the model is linear in k: dc/dt = (V(c) * k) S^T + node(c), V the rates at k = 1. The
    normal equations are G k = b with G = (V^T V) * (S^T S) (elementwise) and b_j = sum_t V_tj ((y S)_tj),
    y = dc/dt - node, summed over all frames in float64; a ridge `ridge` mean(diag G) towards the current k
    settles the directions the data leave open (reactions sharing a substrate set, inactive ones). Returns
    the number of reactions whose solution was not positive (those keep their trained k)."""
    with torch.no_grad():
        dev = data.conc.device
        S = model.S_T().T.double()  # (n_met, n_rxn)
        k0 = torch.pow(10.0, model.log_k.detach().double())
        G = torch.zeros(model.n_rxn, model.n_rxn, dtype=torch.float64, device=dev)
        b = torch.zeros(model.n_rxn, dtype=torch.float64, device=dev)
        for i in range(0, data.n_frames, chunk):
            c = data.conc[i:i + chunk]
            V = (model.rates(c) / torch.pow(10.0, model.log_k)).double()  # rates at k = 1
            y = (data.deriv[i:i + chunk] - model.node(c)).double()
            G += V.T @ V
            b += (V * (y @ S)).sum(0)
        G = G * (S.T @ S)
        reg = ridge * float(torch.diagonal(G).mean())
        k = torch.linalg.solve(G + reg * torch.eye(model.n_rxn, dtype=G.dtype, device=dev), b + reg * k0)
        bad = ~(k > 0) | ~torch.isfinite(k)
        k = torch.where(bad, k0, k)
        model.log_k.copy_(torch.log10(k).to(model.log_k.dtype))
    return int(bad.sum())


def least_squares_S(model: torch.nn.Module, data: TrainingData, ridge: float, chunk: int = 512) -> None:
    """training.S_least_squares: set the learned S to the least-squares solution of the derivative fit with
    the rates fixed (dc/dt = S v is linear in S: per metabolite i, the row S[i, :] on its support solves
    (V_i^T V_i + r I) s = V_i^T D[:, i] + r s_trained, V_i the rates over run 0 of the reactions that touch
    i, r = ridge * mean(diag(V_i^T V_i))). The ridge towards the trained S decides what the data leave open
    (slow reactions, near-collinear rates): without it the slow third's rows take the residual's noise
    (prompts/regimes/stoichiometry.md). Untied only: there the rates do not depend on sto_all."""
    n_rxn, n_met, e_all = model.n_rxn, model.n_met, len(model.met_all)
    dev = model.sto_all.device
    G = torch.zeros(n_rxn, n_rxn, dtype=torch.float64, device=dev)
    B = torch.zeros(n_rxn, n_met, dtype=torch.float64, device=dev)
    with torch.no_grad():
        for i0 in range(0, data.n_frames, chunk):
            v = model.rates(data.conc[i0:i0 + chunk]).double()
            G += v.T @ v
            B += v.T @ data.deriv[i0:i0 + chunk].double()
        lay = padded_layout(model.met_all.cpu(), n_met, e_all).to(dev)  # (n_met, W): each metabolite's edges
        real = lay < e_all
        edge = lay.clamp_max(e_all - 1)
        r = model.rxn_all[edge]  # (n_met, W)
        g = G[r.unsqueeze(2), r.unsqueeze(1)]  # (n_met, W, W)
        mask = real.unsqueeze(2) & real.unsqueeze(1)
        g = torch.where(mask, g, 0.0)
        diag = torch.diagonal(g, dim1=1, dim2=2)
        scale = ridge * diag.sum(1) / real.sum(1).clamp_min(1)  # per metabolite
        s0 = torch.where(real, model.sto_all.double()[edge], 0.0)
        b = torch.where(real, B[r, torch.arange(n_met, device=dev).unsqueeze(1)], 0.0) + scale.unsqueeze(1) * s0
        eye = torch.eye(g.shape[1], dtype=g.dtype, device=dev)
        pad_eye = torch.where(real, 0.0, 1.0).unsqueeze(2) * eye  # padding rows: s = 0
        sol = torch.linalg.solve(g + scale.view(-1, 1, 1) * eye * real.unsqueeze(2) + pad_eye
                                 + 1e-12 * diag.amax(1).clamp_min(1e-30).view(-1, 1, 1) * eye, b)
        model.sto_all[lay[real]] = sol[real].to(model.sto_all.dtype)


def phase1_regularisers(model: torch.nn.Module, t, c: torch.Tensor, coeff_L1: float, k_center: float,
                        s_prior: torch.Tensor | None = None, sub_inputs: "SubPenaltyInputs | None" = None,
                        f_sub_rows: torch.Tensor | None = None) -> torch.Tensor:
    """The regularisers of train_phase1's loss for the batch c: each term whose coefficient is non-zero
    (SCIENCE.md, the phase-1 loss). sub_inputs: MLP_sub's penalty grid (None: no MLP_sub term);
    f_sub_rows: MLP_sub on that grid when the forward pass already computed it."""
    regul = c.new_zeros(())
    if not model.freeze_S:
        s = model.sto_all
        if coeff_L1:
            regul = regul + coeff_L1 * s.abs().mean()
        if t.coeff_S_L2:
            regul = regul + t.coeff_S_L2 * (s ** 2).mean()
        if t.coeff_S_integer:
            regul = regul + t.coeff_S_integer * torch.sin(math.pi * s).pow(2).mean()
        if t.coeff_mass_conservation:
            col = s.new_zeros(model.n_rxn).index_add_(0, model.rxn_all, s)
            regul = regul + t.coeff_mass_conservation * (col ** 2).mean()
        if t.coeff_S_prior:
            regul = regul + t.coeff_S_prior * S_shape_prior(s, s_prior, model.rxn_all, model.n_rxn)
    if isinstance(model, KineticsModel):
        if sub_inputs is not None:
            regul = regul + sub_penalties(model, t, sub_inputs, k_center, f=f_sub_rows)
        if t.coeff_MLP_node_L1 and model.use_node:
            regul = regul + t.coeff_MLP_node_L1 * model.node(c).abs().mean()
    if t.coeff_k_center:
        regul = regul + t.coeff_k_center * (model.log_k.mean() - k_center) ** 2
    return regul


def train_phase1(model: torch.nn.Module, data: TrainingData, cfg: Config, progress: ProgressWriter) -> dict:
    """Phase 1: fit dc/dt (or a `time_step` recurrent rollout) of run 0.

    Loss = MSE / ynorm^2 (+ the regularisers whose coefficient is non-zero).
    Returns {"loss": (steps,) tensor, "regul": (steps,) tensor, "steps": n}."""
    t = cfg.training
    dev = data.conc.device
    gen = torch.Generator().manual_seed(t.seed + 1)
    opt = make_optimizer(model, param_groups(model, cfg))
    conc0, deriv0 = data.conc, data.deriv  # run 0, (n_frames, n_met)
    ynorm2 = data.ynorm ** 2
    dt, T, B = data.delta_t, t.time_step, t.batch_size
    ipe = iterations_per_epoch(data.n_frames, t.data_augmentation_loop, B)
    kinetic = isinstance(model, KineticsModel)
    learned_S = not model.freeze_S
    sub_terms = kinetic and bool(t.coeff_MLP_sub_diff or t.coeff_MLP_sub_norm or t.coeff_MLP_sub_zero or t.coeff_k_prior)
    sub_inputs = SubPenaltyInputs(model, data) if sub_terms else None
    total_steps = max(1, t.n_epochs * ipe)
    for g in opt.param_groups:
        g["lr_base"] = g["lr"]
    k_center = data.log_k_center
    # frames whose rollout window stays inside one trajectory segment (all frames for derivative regression)
    starts = data.window_starts(T if t.recurrent_training else 0).to(dev)
    # the shape prior's target: the balanced data-free answer
    s_prior = data_free_S("balanced", data.to("cpu")).to(dev) if learned_S and t.coeff_S_prior else None
    losses, reguls = History(t.n_epochs * ipe), History(t.n_epochs * ipe)
    log = StepLog(losses, reguls, progress)
    compiled, restore = compile_model(model, t.compile)
    batches = BatchIndices(starts, B, gen, dev, per_step=t.recurrent_training and t.noise_recurrent_level > 0)
    # the step below without the autograd engine (fast.ExplicitStep, same numbers), where it covers this config
    explicit = None if explicit_step_unavailable(model, opt, t, compiled, LOSS_CODE) else ExplicitStep(
        model, opt, t, ynorm2, k_center, sub_inputs, s_prior)
    step = 0
    for epoch in range(t.n_epochs):
        coeff_L1 = t.first_coeff_L1 if epoch < t.n_epochs_init else t.coeff_S_L1
        for _ in range(ipe):
            step_begin(compiled, t.compile)
            if t.lr_schedule == "cosine":
                for g in opt.param_groups:
                    g["lr"] = g["lr_base"] * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            idx = batches.next()  # starts[randint(0, len(starts), (B,), generator=gen)], drawn in blocks
            c = conc0[idx]
            if explicit is not None:
                pred_loss, regul = explicit.step(c, deriv0[idx], coeff_L1)
                step += 1
                log.add(pred_loss, regul, step)
                continue
            f_sub_rows = None
            if t.recurrent_training:
                x = c
                for _s in range(T):
                    x = (x + dt * model(x)).clamp_min(0.0)
                    if t.noise_recurrent_level > 0:
                        x = x + t.noise_recurrent_level * to_device(torch.randn(x.shape, generator=gen), dev)
                pred_loss = ((x - conc0[idx + T]) ** 2).mean() / ((dt * T) ** 2 * ynorm2)
            elif sub_terms:  # ONE MLP_sub pass for the batch and the penalties' rows
                d, f_sub_rows = model.forward_and_sub(c, sub_inputs.c, sub_inputs.s)
                pred_loss = ((d - deriv0[idx]) ** 2).mean() / ynorm2
            else:
                pred_loss = ((model(c) - deriv0[idx]) ** 2).mean() / ynorm2
            regul = phase1_regularisers(model, t, c, coeff_L1, k_center, s_prior, sub_inputs, f_sub_rows)
            loss = pred_loss + regul
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            log.add(pred_loss, regul, step)
    log.flush()
    restore()
    if t.k_least_squares:  # the exact k for the learned MLP_sub / MLP_node (see least_squares_k)
        least_squares_k(model, data)
    if t.S_least_squares:  # the exact S for the learned rates, ridge towards the trained S (see least_squares_S)
        least_squares_S(model, data, t.S_least_squares)
    return {"loss": losses.values(), "regul": reguls.values(), "steps": step}


#: the functions whose loss fast.ExplicitStep reproduces: an edit to any of them (its source hash differs from
#: fast.REFERENCE_SOURCE["train"]) keeps train_phase1 on the autograd step
LOSS_CODE = (train_phase1, phase1_regularisers, sub_penalties, S_shape_prior)


#: the rollout length at which learning_rate_embedding_homeostasis is set (slot 0 of the regime)
EMBEDDING_LR_REFERENCE_T = 4


def embedding_lr_homeostasis(t) -> float:
    """The embeddings' phase-2 lr: learning_rate_embedding_homeostasis, times T / EMBEDDING_LR_REFERENCE_T with
    homeostasis_embedding_lr_scaling: rollout_length. Phase 2 runs iterations_per_epoch // T updates, and Adam
    moves a parameter about lr per update, so at a fixed lr the embeddings travel T/4 times less in a T-step
    slot than in the 4-step one; the scaling keeps lr x updates, the distance they can travel, the same."""
    lr = t.learning_rate_embedding_homeostasis
    if t.homeostasis_embedding_lr_scaling == "rollout_length":
        lr = lr * t.homeostasis_time_step / EMBEDDING_LR_REFERENCE_T
    return lr


#: rollouts of at most this many steps keep the seed's phase-2 loss under homeostasis_loss / _window_weights
#: "auto": a perturbation grows 2.9x over 4 steps (75x over 32) and the top 5 % of the windows carry 10 % of the
#: end-state loss (uniform); there the long-rollout recipe only reshuffles the embeddings (quick seeds 42 / 1:
#: 0.99 / 0.98 -> 0.86 / 0.82), beyond it it is what makes the slot learn (prompts/regimes/homeostasis.md)
SHORT_ROLLOUT = 4


def phase2_recipe(t) -> tuple[str, str]:
    """(homeostasis_loss, homeostasis_window_weights) as they act at homeostasis_time_step: "auto" resolved
    to the seed's end_state / uniform up to SHORT_ROLLOUT steps and to every_step / median_cap beyond."""
    short = t.homeostasis_time_step <= SHORT_ROLLOUT
    loss = t.homeostasis_loss if t.homeostasis_loss != "auto" else ("end_state" if short else "every_step")
    weights = t.homeostasis_window_weights
    if weights == "auto":
        weights = "uniform" if short else "median_cap"
    return loss, weights


class RolloutWeights:
    """training.homeostasis_window_weights: the weight of each rollout window (start frame i) at each rollout
    step s, `weights(idx, T)` -> (B, T). uniform: 1 (the seed's loss). median_cap: s^2 d_1 / max(d[i, s], d_s),
    d[i, s] the mean squared error, against run 0, of the frozen reactions' own rollout (MLP_node = 0) from
    frame i after s steps (what the homeostasis term must explain there), d_s its median over the windows.
    So each (window, step) term, err / ((dt s)^2 ynorm^2) in the loop, becomes err / max(d[i, s], d_s) up to one
    constant: no window counts more than the median one, and no step more than step 1 (at T = 1 it is
    min(1, d_1 / d[i, 1])). Why: the dynamics are chaotic (a perturbation grows ~75x over 32 steps, the median
    error ~4x faster than s^2); at T = 32 the top 5 % of windows carry ~80 % of the end-state loss, so a batch
    of 8 is dominated by whichever rare window it draws, and the late steps outweigh the early ones. Each
    window's and step's error is still minimal at the true homeostasis term. Computed once per rollout length,
    from run 0 and the frozen model only (prompts/regimes/homeostasis.md "Long rollouts"). The median is over
    the windows that stay in one trajectory segment (the only ones phase 2 draws)."""

    def __init__(self, model: KineticsModel, conc: torch.Tensor, dt: float, mode: str, segment_frames: int | None = None):
        self.model, self.conc, self.dt, self.mode = model, conc, dt, mode
        self.segment_frames = segment_frames or conc.shape[0]
        self._cache: dict[int, torch.Tensor] = {}

    def table(self, T: int) -> torch.Tensor:
        """(n_frames - T, T) weights of every window of length T."""
        if T not in self._cache:
            n = self.conc.shape[0] - T
            if self.mode == "uniform":
                self._cache[T] = self.conc.new_ones(n, T)
            else:
                with torch.no_grad():
                    x, d = self.conc[:n], []
                    for s in range(1, T + 1):
                        x = (x + self.dt * self.model.reaction(x)).clamp_min(0.0)
                        d.append(((x - self.conc[s:n + s]) ** 2).mean(1))
                    d = torch.stack(d, 1).clamp_min(1e-30)
                    frame = torch.arange(n, device=d.device)
                    inside = (frame % self.segment_frames) + T < self.segment_frames
                    med = d[inside].median(0).values
                    s2 = torch.arange(1, T + 1, dtype=d.dtype, device=d.device) ** 2
                    self._cache[T] = s2 * med[0] / torch.maximum(d, med)
        return self._cache[T]

    def __call__(self, idx: torch.Tensor, T: int) -> torch.Tensor:
        return self.table(T)[idx]


def phase2_start(model: KineticsModel, t) -> tuple[list[torch.nn.Parameter], torch.Generator]:
    """Phase 2's starting point: a fresh MLP_node (zero output), every parameter frozen but MLP_node's and the
    embeddings'; returns MLP_node's parameters and the generator of the window draws (seeded from t.seed)."""
    torch.manual_seed(t.seed + 2)
    model.reset_node()
    for p in model.parameters():
        p.requires_grad_(False)
    node_params = list(model.mlp_node.parameters())
    for p in node_params + [model.a]:
        p.requires_grad_(True)
    return node_params, torch.Generator().manual_seed(t.seed + 3)


def train_phase2(model: KineticsModel, data: TrainingData, cfg: Config, progress: ProgressWriter) -> dict:
    """Phase 2 (homeostasis): freeze log_k, MLP_sub and S; train a fresh MLP_node
    (zero output) and embeddings with their own learning rates, by recurrent
    rollout of `homeostasis_time_step` Euler steps, for
    `iterations_per_epoch // homeostasis_time_step` steps per epoch. Loss: the mean squared error of the end
    state (homeostasis_loss: end_state) or the mean over the T steps of each step's error (every_step; auto: see
    phase2_recipe), each
    normalised by (dt s)^2 ynorm^2 and weighted per window (homeostasis_window_weights, RolloutWeights).
    Returns {"loss": (steps,) tensor, "steps": n}."""
    t = cfg.training
    dev = data.conc.device
    node_params, gen = phase2_start(model, t)
    conc0 = data.conc  # run 0, (n_frames, n_met)
    ynorm2 = data.ynorm ** 2
    dt, B = data.delta_t, t.batch_size
    T = t.homeostasis_time_step
    steps_per_epoch = max(1, iterations_per_epoch(data.n_frames, t.data_augmentation_loop, B) // T)
    losses = History(t.n_epochs * steps_per_epoch)
    step = 0
    # >>> editable: phase2_loop
    opt = make_optimizer(model, [{"params": node_params, "lr": t.learning_rate_node_homeostasis},
                                 {"params": [model.a], "lr": embedding_lr_homeostasis(t)}])
    for g in opt.param_groups:
        g["lr_base"] = g["lr"]
    total_steps = t.n_epochs * steps_per_epoch
    loss_mode, weight_mode = phase2_recipe(t)  # "auto" resolved at this T
    weights = RolloutWeights(model, conc0, dt, weight_mode, data.segment_frames)  # (B, steps) per window and step
    every_step = loss_mode == "every_step"
    starts = data.window_starts(T)  # windows inside one trajectory segment (every frame < n_frames - T if one)
    for epoch in range(t.n_epochs):
        for _ in range(steps_per_epoch):
            if t.lr_schedule_homeostasis == "cosine":
                for g in opt.param_groups:
                    g["lr"] = g["lr_base"] * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))
            idx = starts[torch.randint(0, len(starts), (B,), generator=gen)].to(dev)
            x = conc0[idx]
            w = weights(idx, T)
            terms = []  # per supervised step s: weighted mean squared error / ((dt s)^2 ynorm^2)
            for _s in range(T):
                x = (x + dt * model(x)).clamp_min(0.0)
                if t.noise_recurrent_level > 0:
                    x = x + t.noise_recurrent_level * torch.randn(x.shape, generator=gen).to(dev)
                if every_step or _s == T - 1:
                    err = ((x - conc0[idx + _s + 1]) ** 2).mean(1)
                    terms.append((err * w[:, _s]).mean() / ((dt * (_s + 1)) ** 2 * ynorm2))
            loss = torch.stack(terms).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            lv = loss.item()
            check_finite(lv, step)
            losses.append(lv)
            progress(progress.base + step, lv)
    # <<< editable
    for p in model.parameters():
        p.requires_grad_(False)
    return {"loss": losses.values(), "steps": step}


def phase_steps(cfg: Config, n_frames: int) -> tuple[int, int]:
    """Planned gradient steps of phase 1 and phase 2."""
    t = cfg.training
    ipe = iterations_per_epoch(n_frames, t.data_augmentation_loop, t.batch_size)
    p1 = 0 if t.skip_phase1 else ipe * t.n_epochs
    p2 = max(1, ipe // t.homeostasis_time_step) * t.n_epochs if t.homeostasis_training else 0
    return p1, p2


def load_phase1_checkpoint(model: KineticsModel, cfg: Config, path: Path, dataset_key: str) -> dict:
    """Load the staged phase-1 model.pt into `model`; ConfigError (one line) when it does not fit."""
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable or not a torch file
        raise ConfigError(f"config error: training.phase1_checkpoint: cannot read the staged copy ({type(e).__name__})") from None
    check_phase1_checkpoint(ck, cfg, dataset_key, "the staged checkpoint")
    model.load_state_dict(ck["state_dict"])
    return ck


def predictions(model: torch.nn.Module, data: TrainingData, queries: dict, hist: dict, timing: dict,
                tick=None) -> dict:
    """The flat, data-only answers to the queries (docs/contracts.md §2b), computed on CPU."""
    model = model.to("cpu").eval()
    data = data.to("cpu")
    p: dict = {"kind": model.kind, "log_k": model.log_k.detach().clone()}
    if not model.freeze_S:
        p["s_all"] = model.sto_all.detach().clone()
        if model.sto_sub is not None:
            p["s_sub"] = model.sto_sub.detach().clone()
    c_grid = queries["c_grid"].float()
    with torch.no_grad():
        if isinstance(model, KineticsModel):
            p["f_sub_grid"] = torch.stack([model.f_sub(c_grid, torch.full_like(c_grid, float(s)))
                                           for s in queries["s_values"]])
            one = torch.ones(1)
            p["f_sub_11"] = model.f_sub(one, one)[0].clone()
            if model.use_node:
                n, G = model.n_met, len(c_grid)
                p["node_grid"] = model.node_fn(c_grid.expand(n, -1), model.a.unsqueeze(1).expand(-1, G, -1))
                own = queries["node_c_grid"].float()
                p["node_own_grid"] = model.node_fn(own, model.a.unsqueeze(1).expand(-1, own.shape[1], -1))
                p["embeddings"] = model.a.detach().clone()
                frames = data.conc[queries["node_frame_idx"]]
                p["node_on_frames"] = model.node(frames)
        if isinstance(model, KineticsModel) and model.freeze_S:  # for the evaluation's frozen-parameter check
            for k, v in model.state_dict().items():
                if k.startswith(FROZEN_PREFIXES):
                    p[f"param.{k}"] = v.detach().clone()
    c0, n_roll = queries["rollout_c0"].float(), int(queries["rollout_frames"])
    if c0.dim() == 2:  # segmented runs: one rollout from the first frame of each of run 1's first segments
        p["rollout"] = torch.stack([rollout(model, c, n_roll, data.delta_t, tick=tick) for c in c0])
    else:
        p["rollout"] = rollout(model, c0, n_roll, data.delta_t, tick=tick)
    for name, h in hist.items():
        p[f"loss.{name}"] = torch.as_tensor(h["loss"], dtype=torch.float64)
        if h.get("regul") is not None:
            p[f"regul.{name}"] = torch.as_tensor(h["regul"], dtype=torch.float64)
    p.update({k: float(v) for k, v in timing.items()})
    return p


def run(cfg: Config, inputs_dir: Path, out: Path, device: str = "cpu", log=print) -> dict:
    """Train from the staged inputs and write model.pt and predictions.pt into `out`; returns the predictions."""
    tune_malloc()  # no page faults per step from glibc returning the step's tensors to the kernel (fast.py)
    out.mkdir(parents=True, exist_ok=True)
    t = cfg.training
    data, queries, manifest = load_staged(inputs_dir)
    if bool(manifest.get("given_stoichiometry")) != t.freeze_stoichiometry:
        raise runtime.EntryError("inputs", "inputs: staged with given_stoichiometry="
                                 f"{manifest.get('given_stoichiometry')} but training.freeze_stoichiometry={t.freeze_stoichiometry}")
    ck_path = None
    if t.skip_phase1:
        ck_path = Path(inputs_dir) / STAGED_PHASE1
        if not ck_path.is_file():
            raise runtime.EntryError("inputs", f"inputs: skip_phase1 is true but no {STAGED_PHASE1} was staged")
    p1, p2 = phase_steps(cfg, data.n_frames)
    progress = ProgressWriter(out / runtime.PROGRESS_FILE, p1 + p2)
    progress(0, float("nan"), force=True)
    data = data.to(device)
    torch.manual_seed(t.seed)
    model = build_model(cfg.graph_model, data, t.freeze_stoichiometry).to(device)
    if (line := fast_path_line(model)) is not None:
        print(line, flush=True)
    hist: dict = {}
    t0 = time.perf_counter()
    if ck_path is not None:
        load_phase1_checkpoint(model, cfg, ck_path, manifest["dataset"])
        model.to(device)
    else:
        hist["phase1"] = train_phase1(model, data, cfg, progress)
    t1 = time.perf_counter()
    if t.homeostasis_training:
        progress.base = hist.get("phase1", {}).get("steps", 0)
        hist["phase2"] = train_phase2(model, data, cfg, progress)
    t2 = time.perf_counter()
    steps = sum(h["steps"] for h in hist.values())
    last = (hist.get("phase2") or hist.get("phase1"))["loss"]
    last_loss = float(last[-1]) if len(last) else float("nan")
    progress(steps, last_loss, force=True)
    torch.save({"state_dict": model.state_dict(), "config": cfg.dump(), "simulation_hash": manifest["dataset"],
                "kind": model.kind}, out / runtime.MODEL_FILE)
    timing = {"training_time_min": (t2 - t0) / 60.0, "steps_per_second": steps / max(t2 - t0, 1e-9),
              "phase1_time_s": t1 - t0, "phase2_time_s": t2 - t1}
    preds = predictions(model, data, queries, hist, timing, tick=lambda: progress(steps, last_loss, force=True))
    runtime.save_predictions(out / runtime.PREDICTIONS_FILE, preds)
    progress(steps, last_loss, force=True)
    progress.close()
    return preds


def _main(args) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    device = runtime.resolve_device(args.device)
    try:
        preds = run(cfg, Path(args.inputs), Path(args.out), device=device)
    except ConfigError as e:
        raise runtime.config_error(str(e)) from None
    print(f"trained: {preds.get('training_time_min', float('nan')):.3g} min, "
          f"{preds.get('steps_per_second', float('nan')):.4g} steps/s; predictions in {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = runtime.train_arg_parser("python -m regimes.metabolism.train", __doc__.split("\n\n")[0])
    args = ap.parse_args(argv)
    return runtime.run_entry(_main, args, args.out)


if __name__ == "__main__":
    sys.exit(main())
