"""Metabolic network generators (SCIENCE.md A1-A2), pure torch.

`build_network` draws the bipartite network (stoichiometry S and the substrate
edges), `Generator` draws the rate law (k and, for mlp_rates, the random MLP
weights) and the homeostasis types, `simulate` Euler-integrates both runs of a
dataset at once. Each of the four draws (STREAMS) has its own generator, seeded
by `regimes.runtime.system_seed(simulation.seed, cache root, stream)`: the
seed mixed with the cache root's data secret, so a training, which has the
simulator code and the seed but not the secret, cannot regenerate the truth.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from regimes.metabolism.config import SimulationConfig
from regimes.runtime import cache_root, system_seed

DTYPE = torch.float32


@dataclass
class Network:
    """The bipartite graph. Substrate edges carry |s| (the rate-law exponent /
    msg input); all edges carry the signed net coefficient S_ij."""

    n_met: int
    n_rxn: int
    met_sub: torch.Tensor  # (E_sub,) long
    rxn_sub: torch.Tensor  # (E_sub,) long
    s_sub: torch.Tensor  # (E_sub,) float, |s| of each substrate edge
    met_all: torch.Tensor  # (E_all,) long
    rxn_all: torch.Tensor  # (E_all,) long
    s_all: torch.Tensor  # (E_all,) float, signed S on each edge
    sub_to_all: torch.Tensor  # (E_sub,) long, index of the substrate edge's (met, rxn) pair among all edges

    def dense_S(self) -> torch.Tensor:
        S = torch.zeros(self.n_met, self.n_rxn, dtype=DTYPE)
        S[self.met_all, self.rxn_all] = self.s_all
        return S


def _finish_network(n_met: int, n_rxn: int, sub: list[tuple[int, int, float]], net: dict[tuple[int, int], float]) -> Network:
    sub.sort(key=lambda t: (t[1], t[0]))
    keys = sorted(net, key=lambda t: (t[1], t[0]))
    pos = {k: i for i, k in enumerate(keys)}
    met_sub = torch.tensor([m for m, _, _ in sub], dtype=torch.long)
    rxn_sub = torch.tensor([r for _, r, _ in sub], dtype=torch.long)
    s_sub = torch.tensor([s for _, _, s in sub], dtype=DTYPE)
    met_all = torch.tensor([m for m, _ in keys], dtype=torch.long)
    rxn_all = torch.tensor([r for _, r in keys], dtype=torch.long)
    s_all = torch.tensor([net[k] for k in keys], dtype=DTYPE)
    sub_to_all = torch.tensor([pos[(m, r)] for m, r, _ in sub], dtype=torch.long)
    return Network(n_met, n_rxn, met_sub, rxn_sub, s_sub, met_all, rxn_all, s_all, sub_to_all)


def random_network(n_met: int, n_rxn: int, g: torch.Generator) -> Network:
    """`random` family: 1-3 substrates (coefficient 1 or 2) and products, disjoint,
    uniform; the consumed total is split as evenly as possible over the products.
    The product count is drawn uniformly among those (<= 3, <= the consumed
    total) that keep every product coefficient in {1, 2}, so S stays in
    {-2..2} and every column sums to 0."""
    sub: list[tuple[int, int, float]] = []
    net: dict[tuple[int, int], float] = {}
    for j in range(n_rxn):
        n_sub = int(torch.randint(1, 4, (1,), generator=g))
        coefs = (torch.randint(1, 3, (n_sub,), generator=g)).tolist()
        total = sum(coefs)
        lo, hi = max(1, math.ceil(total / 2)), min(3, total)
        n_prod = int(torch.randint(lo, hi + 1, (1,), generator=g))
        mets = torch.randperm(n_met, generator=g)[: n_sub + n_prod].tolist()
        for m, s in zip(mets[:n_sub], coefs):
            sub.append((m, j, float(s)))
            net[(m, j)] = -float(s)
        base, extra = divmod(total, n_prod)
        for i, m in enumerate(mets[n_sub:]):
            net[(m, j)] = float(base + (1 if i < extra else 0))
    return _finish_network(n_met, n_rxn, sub, net)


def cycles_network(n_met: int, n_rxn: int, g: torch.Generator) -> Network:
    """`cycles` family: autocatalytic 3-cycles m_i + m_{i+1} -> 2 m_{i+1}
    (both substrates with |s| = 1; net S -1 for m_i, +1 for m_{i+1}). Cycles
    use fresh metabolites until fewer than 3 remain, then any; the n_rxn % 3
    leftover reactions have the same form on random pairs."""
    sub: list[tuple[int, int, float]] = []
    net: dict[tuple[int, int], float] = {}
    fresh = torch.randperm(n_met, generator=g).tolist()
    j = 0

    def add(a: int, b: int) -> None:
        nonlocal j
        sub.append((a, j, 1.0))
        sub.append((b, j, 1.0))
        net[(a, j)] = -1.0
        net[(b, j)] = 1.0
        j += 1

    for _ in range(n_rxn // 3):
        if len(fresh) >= 3:
            cyc, fresh = fresh[:3], fresh[3:]
        else:
            cyc = torch.randperm(n_met, generator=g)[:3].tolist()
        for i in range(3):
            add(cyc[i], cyc[(i + 1) % 3])
    while j < n_rxn:
        a, b = torch.randperm(n_met, generator=g)[:2].tolist()
        add(a, b)
    return _finish_network(n_met, n_rxn, sub, net)


def build_network(sim: SimulationConfig, g: torch.Generator) -> Network:
    if sim.network == "random":
        return random_network(sim.n_metabolites, sim.n_reactions, g)
    return cycles_network(sim.n_metabolites, sim.n_reactions, g)


def _tanh_mlp(sizes: list[int], g: torch.Generator, gain: float = 1.0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random weights of a tanh MLP: uniform(+-gain/sqrt(fan_in)) (gain 1 = PyTorch's default init)."""
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        bound = gain / math.sqrt(a)
        W = (torch.rand(b, a, generator=g, dtype=DTYPE) * 2 - 1) * bound
        bias = (torch.rand(b, generator=g, dtype=DTYPE) * 2 - 1) * bound
        layers.append((W, bias))
    return layers


def mlp_apply(layers: list[tuple[torch.Tensor, torch.Tensor]], x: torch.Tensor) -> torch.Tensor:
    for i, (W, b) in enumerate(layers):
        x = F.linear(x, W, b)
        if i < len(layers) - 1:
            x = torch.tanh(x)
    return x


#: the independent random draws of a dataset, each with its own seed (see the module doc)
STREAMS = ("network", "rates", "types", "initial")


def stream_seeds(sim: SimulationConfig, root=None) -> dict[str, int]:
    """The generator seed of each stream: simulation.seed mixed with the data secret of the cache root
    (`root`, default the configured cache root; GNN_AGENT_DATA_SECRET overrides the secret)."""
    r = cache_root(root)
    return {s: system_seed(sim.seed, r, s) for s in STREAMS}


def metabolite_types(n_met: int, n_types: int, seed: int) -> torch.Tensor:
    """Homeostasis type of each metabolite: equal shares (as equal as n allows) assigned through a random
    permutation drawn from `seed` (the "types" stream), so no index structure (blocks, parity) reveals a type."""
    g = torch.Generator().manual_seed(int(seed))
    blocks = torch.div(torch.arange(n_met) * n_types, n_met, rounding_mode="floor")
    types = torch.empty(n_met, dtype=torch.long)
    types[torch.randperm(n_met, generator=g)] = blocks
    return types


class Generator:
    """The true rate law; `dcdt(c)` for c of shape (B, n_met) is exact and batched."""

    def __init__(self, sim: SimulationConfig, net: Network, g: torch.Generator, types_seed: int):
        self.sim, self.net = sim, net
        n = net.n_met
        self.log_k = sim.log_k_min + (sim.log_k_max - sim.log_k_min) * torch.rand(net.n_rxn, generator=g, dtype=DTYPE)
        self.k = 10.0 ** self.log_k
        self.S = net.dense_S()  # (n_met, n_rxn)
        self.msg_layers = self.rate_layers = None
        if sim.generator == "mlp_rates":
            gain = sim.generator_weight_gain
            self.msg_layers = _tanh_mlp([2, sim.generator_hidden, sim.generator_msg_dim], g, gain)
            self.rate_layers = _tanh_mlp([sim.generator_msg_dim, sim.generator_hidden, 1], g, gain)
        self.types = metabolite_types(n, len(sim.homeostasis_lambda), types_seed)
        self.lam = torch.tensor(sim.homeostasis_lambda, dtype=DTYPE)
        self.base = torch.tensor(sim.homeostasis_baseline, dtype=DTYPE)
        # padded substrate layout for the mass-action product: (n_rxn, max_sub) with a "1" slot
        counts = torch.bincount(net.rxn_sub, minlength=net.n_rxn)
        self.n_sub = counts
        m = int(counts.max())
        order = torch.argsort(net.rxn_sub * (len(net.rxn_sub) + 1) + torch.arange(len(net.rxn_sub)))
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.arange(len(net.rxn_sub)) - starts[net.rxn_sub[order]]
        self.pad_edge = torch.full((net.n_rxn, m), len(net.rxn_sub), dtype=torch.long)
        self.pad_edge[net.rxn_sub[order], slot] = order

    def rates(self, c: torch.Tensor) -> torch.Tensor:
        """Reaction rates v (B, n_rxn) before the flux limiter."""
        net = self.net
        if self.sim.generator == "mass_action":
            ce = c[:, net.met_sub] ** net.s_sub  # (B, E_sub)
            ce = torch.cat([ce, torch.ones(c.shape[0], 1, dtype=c.dtype)], dim=1)
            return self.k * ce[:, self.pad_edge].prod(-1)
        x = torch.stack([c[:, net.met_sub], net.s_sub.expand(c.shape[0], -1)], dim=-1)
        msg = mlp_apply(self.msg_layers, x)  # (B, E_sub, msg_dim)
        h = torch.zeros(c.shape[0], net.n_rxn, msg.shape[-1], dtype=c.dtype).index_add_(1, net.rxn_sub, msg)
        return self.k * F.softplus(mlp_apply(self.rate_layers, h).squeeze(-1))

    def dcdt(self, c: torch.Tensor) -> torch.Tensor:
        """The exact dc/dt of the generator at states c (B, n_met)."""
        return self.dcdt_and_limited(c)[0]

    def dcdt_and_limited(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """dc/dt at states c (B, n_met) and, per reaction (B, n_rxn), whether one Euler step of the
        unlimited rates would consume more of a substrate than there is (limiter scale < 1), whether
        or not the flux limiter is on."""
        v = self.rates(c)
        scale = self.limiter(c, v)
        if self.sim.flux_limiter:
            v = v * scale
        d = v @ self.S.T
        if self.sim.homeostasis:
            d = d - self.lam[self.types] * (c - self.base[self.types])
        return d, scale < 1.0

    def limiter(self, c: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Per reaction scale in (0, 1]: min over its substrates of available/consumed (<= 1)."""
        net, dt = self.net, self.sim.delta_t
        consumed = torch.zeros_like(c).index_add_(1, net.met_sub, v[:, net.rxn_sub] * net.s_sub) * dt
        ratio = torch.where(consumed > c, c / consumed.clamp_min(1e-30), torch.ones_like(c))
        r_edge = ratio[:, net.met_sub]  # (B, E_sub)
        scale = torch.ones_like(v).scatter_reduce_(1, net.rxn_sub.expand(c.shape[0], -1), r_edge, reduce="amin")
        return scale


@dataclass
class SimStats:
    """Properties of a generated dataset that are not ground truth (reported in info.json / analysis.log)."""

    #: fraction of (run, frame, reaction) where one Euler step would consume more substrate than exists
    #: (the flux limiter's scale < 1, whether it is on or not)
    limited_fraction: float


def simulate(sim: SimulationConfig, n_runs: int = 2, tick=None, seeds: dict[str, int] | None = None,
             stats: list | None = None) -> tuple[Network, Generator, torch.Tensor, torch.Tensor]:
    """Generate a dataset: returns (network, generator, conc, deriv) with conc and
    deriv of shape (n_runs, n_frames, n_met). deriv[r, t] is the generator's exact
    dc/dt at conc[r, t]; conc[r, t+1] = max(0, conc[r, t] + delta_t * deriv[r, t]),
    except at segment starts (t a multiple of `segment_frames`), where every run
    restarts from a fresh initial state (drawn from the "initial" stream).
    `seeds`: one per STREAMS entry (default `stream_seeds(sim)`). `stats` (a list) receives a SimStats."""
    seeds = seeds if seeds is not None else stream_seeds(sim)
    net = build_network(sim, torch.Generator().manual_seed(seeds["network"]))
    gen = Generator(sim, net, torch.Generator().manual_seed(seeds["rates"]), seeds["types"])
    g = torch.Generator().manual_seed(seeds["initial"])
    seg = sim.frames_per_segment
    conc = torch.empty(n_runs, sim.n_frames, net.n_met, dtype=DTYPE)
    deriv = torch.empty_like(conc)
    n_limited = 0
    with torch.no_grad():
        for t in range(sim.n_frames):
            if t % seg == 0:
                c = sim.c_init_min + (sim.c_init_max - sim.c_init_min) * torch.rand(n_runs, net.n_met, generator=g, dtype=DTYPE)
            d, limited = gen.dcdt_and_limited(c)
            n_limited += int(limited.sum())
            conc[:, t] = c
            deriv[:, t] = d
            if tick is not None and t % 100 == 99:
                tick()
            c = (c + sim.delta_t * d).clamp_min_(0.0)
    if stats is not None:
        stats.append(SimStats(limited_fraction=n_limited / float(n_runs * sim.n_frames * net.n_rxn)))
    return net, gen, conc, deriv


def segment_starts(n_frames: int, segment_frames: int) -> torch.Tensor:
    """First frame of each trajectory segment."""
    return torch.arange(0, n_frames, segment_frames)


def activity_rank(conc: torch.Tensor) -> tuple[int, int]:
    """Components of the (centred) frames x metabolites matrix needed for 90% and 99% of the variance."""
    x = conc.double() - conc.double().mean(0, keepdim=True)
    s = torch.linalg.svdvals(x)
    var = s ** 2
    if float(var.sum()) == 0.0:
        return 0, 0
    frac = torch.cumsum(var, 0) / var.sum()
    r90 = int(torch.searchsorted(frac, torch.tensor(0.90, dtype=frac.dtype))) + 1
    r99 = int(torch.searchsorted(frac, torch.tensor(0.99, dtype=frac.dtype))) + 1
    return min(r90, len(s)), min(r99, len(s))
