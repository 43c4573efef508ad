"""The learned model: dx_i/dt = phi(x_i) + sum_j W_ij x_j, W with a masked diagonal."""

from __future__ import annotations

import torch
from torch import nn


class ToyGNN(nn.Module):
    def __init__(self, n_nodes: int, hidden_dim: int = 16):
        super().__init__()
        self.W = nn.Parameter(torch.randn(n_nodes, n_nodes) * 0.1)
        self.register_buffer("mask", 1.0 - torch.eye(n_nodes))
        self.phi = nn.Sequential(nn.Linear(1, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, 1))

    def connectivity(self) -> torch.Tensor:
        return self.W * self.mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, n) -> dx/dt (B, n)."""
        return self.phi(x.unsqueeze(-1)).squeeze(-1) + x @ self.connectivity().T
