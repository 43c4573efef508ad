"""A linear network ODE, dx/dt = -damping * x + gain * W x with W antisymmetric (so activity
oscillates instead of dying out); explicit Euler, exact derivative targets."""

from __future__ import annotations

import torch

from toyregime.config import SimulationConfig


def make_connectivity(sim: SimulationConfig, gen: torch.Generator) -> torch.Tensor:
    """W = B - B^T with B_ij ~ N(0, 1/n) kept with probability filling_factor: zero diagonal,
    purely imaginary eigenvalues, so the damped network keeps oscillating."""
    n = sim.n_nodes
    b = torch.randn(n, n, generator=gen) / n ** 0.5
    b = b * (torch.rand(n, n, generator=gen) < sim.filling_factor)
    return b - b.T


def simulate(sim: SimulationConfig, w: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two runs from different random states: states x and derivatives dx, each (2, T, n)."""
    n, t = sim.n_nodes, sim.n_frames
    x = torch.randn(2, n, generator=gen) * 2.0
    xs, dxs = torch.empty(2, t, n), torch.empty(2, t, n)
    for k in range(t):  # one tiny matrix product per frame, both runs at once
        dx = -sim.damping * x + sim.gain * x @ w.T
        xs[:, k], dxs[:, k] = x, dx
        x = x + sim.delta_t * dx
    return xs, dxs
