"""Throughput benchmarks of the signal package for benchmarks/throughput.py.

`benchmarks()` -> [(name, setup_fn)], `setup_fn(device)` -> (step_fn, unit).
A "step" is one full gradient step of the real training code (`batch_loss`
+ zero_grad/backward/optimizer.step, as in `train_model`) at batch size 8 on
the default dataset (seed-004 training values). `benchmarks_naive()` gives the
unoptimised reference: lin_edge evaluated once per *edge* (n(n-1) messages,
gathered and scattered as a message-passing GNN does) and a non-fused Adam.
"""

from __future__ import annotations

import torch
from torch import nn

from regimes.signal.config import GraphModelConfig, SimulationConfig, TrainingConfig
from regimes.signal.data import TrainingData, open_cache
from regimes.signal.model import MLP, SignalGNN
from regimes.signal.simulator import make_connectivity, simulate
from regimes.signal.train import batch_loss, make_optimizer

BATCH = 8


class NaiveSignalGNN(SignalGNN):
    """Same parameters and maths as SignalGNN, computed per edge (reference only)."""

    def __init__(self, n_neurons: int, cfg: GraphModelConfig | None = None):
        super().__init__(n_neurons, cfg)
        idx = torch.arange(n_neurons)
        src, dst = torch.meshgrid(idx, idx, indexing="xy")
        keep = src != dst
        self.register_buffer("src", src[keep])
        self.register_buffer("dst", dst[keep])

    def forward_and_edge(self, u):
        return self.forward(u), self.edge(u)

    def forward(self, u):
        b = u.shape[0]
        u_src = u[:, self.src]  # (B, E): one lin_edge input per edge
        a_src = self.a[self.src].expand(b, -1, -1)
        msg = self.lin_edge(torch.cat([u_src.unsqueeze(-1), a_src], -1)).squeeze(-1) * self.W[self.dst, self.src]
        agg = torch.zeros_like(u).index_add_(1, self.dst, msg)
        return self.phi(u) + agg


def _data(n: int, kind: str) -> TrainingData:
    return open_cache(SimulationConfig(connectivity_type=kind, n_neurons=n), log=lambda s: None).training_data()


def _setup(n: int, kind: str = "sparse", naive: bool = False):
    def setup(device: str):
        data = _data(n, kind)
        cfg = TrainingConfig(batch_size=BATCH, n_epochs_init=0)  # L1 on: the full loss of a phase-2 step
        torch.manual_seed(0)
        model = (NaiveSignalGNN if naive else SignalGNN)(n).to(device)
        model.a.requires_grad_(False)
        opt = torch.optim.Adam(make_optimizer(model, cfg).param_groups) if naive else make_optimizer(model, cfg)
        u, du = data.u.to(device), data.du.to(device)
        gen = torch.Generator().manual_seed(0)
        ynorm2, delta = data.ynorm**2, data.xnorm / 150

        def step():
            k = torch.randint(0, data.n_frames, (BATCH,), generator=gen).to(device)
            loss, _ = batch_loss(model, u, du, k, cfg, cfg.coeff_W_L1, False, delta, ynorm2, data.delta_t)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step.model = model  # lets a test check that a step trains
        return step, "step"
    return setup


def _setup_generate(n: int, kind: str):
    def setup(device: str):
        sim = SimulationConfig(connectivity_type=kind, n_neurons=n)

        def step():
            gen = torch.Generator().manual_seed(sim.seed)
            simulate(sim, make_connectivity(sim, gen), gen)

        return step, "dataset"
    return setup


def benchmarks():
    """[(name, setup_fn)]: training steps at n = 100 and 200, and dataset generation."""
    return [("signal/train_step sparse n100 b8", _setup(100)),
            ("signal/train_step sparse n200 b8", _setup(200)),
            ("signal/train_step low_rank n100 b8", _setup(100, "low_rank")),
            ("signal/generate sparse n100", _setup_generate(100, "sparse"))]


def benchmarks_naive():
    """The per-edge reference implementation (before optimisation)."""
    return [("signal/NAIVE per-edge train_step sparse n100 b8", _setup(100, naive=True)),
            ("signal/NAIVE per-edge train_step sparse n200 b8", _setup(200, naive=True))]
