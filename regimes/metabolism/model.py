"""The learned models (SCIENCE.md A3).

Both models share the stoichiometry part: the support (met_sub/rxn_sub,
met_all/rxn_all) is a fixed buffer; the coefficients on it are buffers when S
is frozen (given) and parameters (init N(0, init_S_std^2)) otherwise. In
variant `tied` the substrate magnitude is |sto_all| at that edge; in `untied`
it is a separate parameter |sto_sub|.

- `StoichiometryModel`: v_j = k_j softplus(rate_mlp(sum_e msg_mlp([c, |s|]))).
- `KineticsModel`: v_j = k_j prod_{e in sub(j)} f(c_e, |s_e|) (+ MLP_node([c_i, a_i])), with
  f = softplus(MLP_sub(c, |s|)) or, for graph_model.mlp_sub_form c_softplus, c softplus(MLP_sub(c, |s|)).
  With S frozen, MLP_sub runs once per distinct (metabolite, |s|) pair.

dc/dt = S v, computed as v @ S_dense^T (S_dense assembled from the edge
coefficients each call, differentiable), which is faster than a scatter at
these sizes.

Two implementations of one maths: the plain autograd code below is the
reference (`model.fast = False`, or whatever fast.py does not cover); the
default `fast = True` runs fast.py's fused Functions (hand-written backward,
~5x fewer aten calls), checked against the reference by
tests/test_metabolism_fast.py. A change to the maths goes into both (or set
`fast = False` until fast.py follows): that test fails until they agree.

This file is editable by the agent (a code strategy or the LLM may change
`rates`, `f_sub`, ...). fast.py would not see such an edit, so the fast path
runs only while the source of every method it mirrors (`MIRRORED`) is the
shipped one (`fast.REFERENCE_SOURCE`); an edited model trains on the
reference code, slower but as written, and the training log says so.
"""

from __future__ import annotations

import functools
import hashlib
import inspect

import torch
import torch.nn.functional as F
from torch import nn

from regimes.metabolism.config import GraphModelConfig
from regimes.metabolism.data import TrainingData
from regimes.metabolism.fast import REFERENCE_SOURCE, KineticsFn, StoichiometryFn, linear_layers, mlp_params


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with tanh between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def padded_layout(rxn_of_item: torch.Tensor, n_rxn: int, pad_value: int) -> torch.Tensor:
    """(n_rxn, max_items) index matrix listing each reaction's items, padded with `pad_value`."""
    n = len(rxn_of_item)
    counts = torch.bincount(rxn_of_item, minlength=n_rxn)
    width = max(1, int(counts.max()) if n else 1)
    order = torch.argsort(rxn_of_item * (n + 1) + torch.arange(n))
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n) - starts[rxn_of_item[order]]
    out = torch.full((n_rxn, width), pad_value, dtype=torch.long)
    out[rxn_of_item[order], slot] = order
    return out


def data_free_S(kind: str, data: TrainingData) -> torch.Tensor:
    """S on the support (E_all,) from the substrate/product roles alone: `sign` is -1 on substrate edges and
    +1 on product edges; `balanced` is -1 on substrates and n_sub/n_prod on products, so every column sums
    to zero (up to each column's scale, the per-entry mean of S given the roles)."""
    e_all = len(data.met_all)
    is_sub = torch.zeros(e_all, dtype=torch.bool).index_fill_(0, data.sub_to_all, True)
    s = torch.where(is_sub, -1.0, 1.0)
    if kind == "balanced":
        n_sub = torch.bincount(data.rxn_all[is_sub], minlength=data.n_rxn).float()
        n_prod = torch.bincount(data.rxn_all[~is_sub], minlength=data.n_rxn).float()
        s = torch.where(is_sub, -1.0, (n_sub / n_prod.clamp_min(1.0))[data.rxn_all])
    return s


class _Stoichiometry(nn.Module):
    """The S part shared by both models."""

    def __init__(self, gm: GraphModelConfig, data: TrainingData, freeze_S: bool):
        super().__init__()
        self.n_met, self.n_rxn = data.n_met, data.n_rxn
        self.freeze_S = freeze_S
        self.variant = gm.variant
        for name in ("met_sub", "rxn_sub", "met_all", "rxn_all", "sub_to_all"):
            self.register_buffer(name, getattr(data, name).clone(), persistent=False)
        self.register_buffer("lin_all", data.met_all * data.n_rxn + data.rxn_all, persistent=False)
        self.register_buffer("lin_all_T", data.rxn_all * data.n_met + data.met_all, persistent=False)
        #: fast.py's fused forward/backward (False: the reference autograd code, same numbers)
        self.fast = True
        self.register_buffer("n_sub", torch.bincount(data.rxn_sub, minlength=data.n_rxn), persistent=False)
        self.register_buffer("n_sub_f", self.n_sub.float(), persistent=False)
        e_all, e_sub = len(data.met_all), len(data.met_sub)
        if freeze_S:
            if data.s_all is None or data.s_sub is None:
                raise ValueError("freeze_stoichiometry needs the given S values in the training data")
            self.register_buffer("sto_all", data.s_all.clone())
            self.register_buffer("sto_sub", data.s_sub.clone())
            S = torch.zeros(self.n_met * self.n_rxn).index_put((self.lin_all,), self.sto_all).view(self.n_met, self.n_rxn)
            self.register_buffer("S_frozen_T", S.T.contiguous(), persistent=False)
        else:
            all0, sub0 = torch.zeros(e_all), torch.zeros(e_sub)
            if gm.init_S != "random":  # the roles come with the support: the data-free answers
                all0 = data_free_S(gm.init_S, data)
                sub0 = torch.ones(e_sub)
            self.sto_all = nn.Parameter(all0 + torch.randn(e_all) * gm.init_S_std)
            if gm.variant == "untied":
                self.sto_sub = nn.Parameter(sub0 + torch.randn(e_sub) * gm.init_S_std)
            else:
                self.sto_sub = None
        self.log_k = nn.Parameter(gm.init_log_k_min + (gm.init_log_k_max - gm.init_log_k_min) * torch.rand(self.n_rxn))

    def substrate_magnitude(self) -> torch.Tensor:
        """|s| on each substrate edge (E_sub,)."""
        if self.freeze_S:
            return self.sto_sub
        if self.sto_sub is not None:
            return self.sto_sub.abs()
        return self.sto_all[self.sub_to_all].abs()

    def S_T(self) -> torch.Tensor:
        """S transposed (n_rxn, n_met), differentiable in sto_all when learned."""
        if self.freeze_S:
            return self.S_frozen_T
        S = torch.zeros(self.n_met * self.n_rxn, dtype=self.sto_all.dtype, device=self.sto_all.device)
        return S.index_put((self.lin_all,), self.sto_all).view(self.n_met, self.n_rxn).T

    def s_param_groups(self) -> list[nn.Parameter]:
        if self.freeze_S:
            return []
        return [self.sto_all] + ([self.sto_sub] if self.sto_sub is not None else [])

    def rates(self, c: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def reaction(self, c: torch.Tensor) -> torch.Tensor:
        """The reaction part of dc/dt, S v(c), for c (B, n_met)."""
        return self.rates(c) @ self.S_T()


class StoichiometryModel(_Stoichiometry):
    """Learned S with msg_mlp (2->64->16) and rate_mlp (16->64->1) rates."""

    kind = "stoichiometry"

    def __init__(self, gm: GraphModelConfig, data: TrainingData, freeze_S: bool = False):
        super().__init__(gm, data, freeze_S)
        self.msg_mlp = mlp([2, gm.hidden_dim, gm.msg_dim])
        self.rate_mlp = mlp([gm.msg_dim, gm.hidden_dim, 1])

    def rates(self, c: torch.Tensor) -> torch.Tensor:
        B = c.shape[0]
        mag = self.substrate_magnitude()
        x = torch.stack((c[:, self.met_sub], mag.expand(B, -1)), dim=-1)
        msg = self.msg_mlp(x)
        h = msg.new_zeros(B, self.n_rxn, msg.shape[-1]).index_add_(1, self.rxn_sub, msg)
        return torch.pow(10.0, self.log_k) * F.softplus(self.rate_mlp(h).squeeze(-1))

    def fast_ok(self) -> bool:
        """fast.py covers this model: `fast` on and both MLPs plain `mlp()` stacks (msg_mlp with a hidden layer)."""
        msg = linear_layers(self.msg_mlp)
        return (self.fast and reference_unedited(type(self)) and msg is not None and len(msg) >= 2
                and linear_layers(self.rate_mlp) is not None)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if self.fast_ok():
            return StoichiometryFn.apply(self, c, self.log_k, self.sto_all, None if self.freeze_S else self.sto_sub,
                                         *mlp_params(self.msg_mlp), *mlp_params(self.rate_mlp))
        return self.reaction(c)

    def mlp_parameters(self) -> list[nn.Parameter]:
        return list(self.msg_mlp.parameters()) + list(self.rate_mlp.parameters())


class KineticsModel(_Stoichiometry):
    """v_j = k_j prod MLP_sub(c, |s|), plus MLP_node([c_i, a_i]) (homeostasis)."""

    kind = "kinetics"

    def __init__(self, gm: GraphModelConfig, data: TrainingData, freeze_S: bool = True):
        super().__init__(gm, data, freeze_S)
        self.mlp_sub = mlp([2, gm.hidden_dim, gm.hidden_dim, 1])
        self.c_times_sub = gm.mlp_sub_form == "c_softplus"
        self.use_node = gm.use_mlp_node
        self.embedding_dim = gm.embedding_dim
        self.init_embedding_std = gm.init_embedding_std
        if self.use_node:
            self.mlp_node = mlp([1 + gm.embedding_dim, gm.hidden_dim, gm.hidden_dim, 1])
            self.a = nn.Parameter(torch.randn(data.n_met, gm.embedding_dim) * gm.init_embedding_std)
            self._zero_node_output()
        if freeze_S:
            # distinct (metabolite, |s|) pairs: MLP_sub runs once per pair, not per edge
            key = self.met_sub * 1000 + torch.round(self.sto_sub * 100).long()
            uniq, inv = torch.unique(key, return_inverse=True)
            first = torch.full((len(uniq),), len(key), dtype=torch.long).scatter_reduce(
                0, inv, torch.arange(len(key)), reduce="amin")
            self.register_buffer("pair_met", self.met_sub[first].clone(), persistent=False)
            self.register_buffer("pair_s", self.sto_sub[first].clone(), persistent=False)
            # padded (n_rxn, max_sub) layout into the pairs; index n_pairs is a constant 1
            lay_edges = padded_layout(self.rxn_sub, self.n_rxn, len(key))
            inv_ext = torch.cat([inv, torch.tensor([len(uniq)])])
            self.register_buffer("pad_pair", inv_ext[lay_edges], persistent=False)
        else:
            self.register_buffer("pad_edge", padded_layout(self.rxn_sub, self.n_rxn, len(self.met_sub)), persistent=False)

    def _zero_node_output(self) -> None:
        last = self.mlp_node[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def reset_node(self) -> None:
        """Fresh MLP_node (output layer zero) and embeddings N(0, std^2), from the current RNG state."""
        for m in self.mlp_node:
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        self._zero_node_output()
        with torch.no_grad():
            self.a.copy_(torch.randn_like(self.a) * self.init_embedding_std)

    def f_sub(self, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """f(c, s) >= 0, elementwise over broadcast c and s: softplus(MLP_sub(c, s)), times c when
        mlp_sub_form is c_softplus (then f(0, s) = 0 exactly and f is linear near c = 0)."""
        c, s = torch.broadcast_tensors(c, s)
        f = F.softplus(self.mlp_sub(torch.stack((c, s), dim=-1)).squeeze(-1))
        return c * f if self.c_times_sub else f

    def rates(self, c: torch.Tensor) -> torch.Tensor:
        B = c.shape[0]
        if self.freeze_S:
            f = self.f_sub(c[:, self.pair_met], self.pair_s)  # (B, n_pairs)
            lay = self.pad_pair
        else:
            f = self.f_sub(c[:, self.met_sub], self.substrate_magnitude())  # (B, E_sub)
            lay = self.pad_edge
        f = torch.cat((f, f.new_ones(B, 1)), dim=1)
        return torch.pow(10.0, self.log_k) * f[:, lay].prod(-1)

    def node(self, c: torch.Tensor) -> torch.Tensor:
        """MLP_node([c_i, a_i]) for c (B, n_met) -> (B, n_met); zero without MLP_node."""
        if not self.use_node:
            return torch.zeros_like(c)
        return self.node_fn(c, self.a.expand(c.shape[0], -1, -1))

    def node_fn(self, c: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """MLP_node on concentrations c (...,) with embeddings a (..., d)."""
        return self.mlp_node(torch.cat((c.unsqueeze(-1), a), dim=-1)).squeeze(-1)

    def fast_ok(self) -> bool:
        """fast.py covers this model: `fast` on, S frozen, and the MLPs plain `mlp()` stacks."""
        return (self.fast and reference_unedited(type(self)) and self.freeze_S and linear_layers(self.mlp_sub) is not None
                and (not self.use_node or linear_layers(self.mlp_node) is not None))

    def _fast(self, c: torch.Tensor, with_node: bool, sub_c: torch.Tensor | None = None,
              sub_s: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if sub_c is None:
            sub_c = sub_s = c.new_zeros(0)
        node = [*mlp_params(self.mlp_node), self.a] if with_node else []
        return KineticsFn.apply(self, with_node, c, sub_c, sub_s, self.log_k, *mlp_params(self.mlp_sub), *node)

    def reaction(self, c: torch.Tensor) -> torch.Tensor:
        if self.fast_ok():
            return self._fast(c, False)[0]
        return super().reaction(c)

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        if self.fast_ok():
            return self._fast(c, self.use_node)[0]
        d = self.reaction(c)
        if self.use_node:
            d = d + self.node(c)
        return d

    def forward_and_sub(self, c: torch.Tensor, sub_c: torch.Tensor, sub_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(forward(c), f_sub(sub_c, sub_s)) for 1-D sub_c, sub_s: on the fast path ONE MLP_sub pass serves both
        (a tiny MLP is overhead-bound; the phase-1 penalties' rows ride along with the data's)."""
        if self.fast_ok():
            return self._fast(c, self.use_node, sub_c, sub_s)
        return self.forward(c), self.f_sub(sub_c, sub_s)


#: the reference code fast.py reproduces, per model class (module-level `mlp` is part of every entry)
MIRRORED = {
    "StoichiometryModel": ("substrate_magnitude", "S_T", "reaction", "rates", "fast_ok", "forward"),
    "KineticsModel": ("substrate_magnitude", "S_T", "f_sub", "rates", "node", "node_fn", "fast_ok", "_fast",
                      "reaction", "forward", "forward_and_sub"),
}


def reference_source_sha(cls: type) -> str | None:
    """sha256 of the source of the methods of `cls` that fast.py mirrors (None: source not readable). Cached
    per tuple of the method objects themselves, not per class: a method replaced at run time (a patch of the
    class) is hashed anew, so fast.py's explicit step, which calls no model method, cannot skip it."""
    names = MIRRORED.get(cls.__name__)
    if names is None:
        return None
    return _source_sha((mlp, *(getattr(cls, n, None) for n in names)))


@functools.lru_cache(maxsize=64)
def _source_sha(fns: tuple) -> str | None:
    try:
        text = "".join(inspect.getsource(f) for f in fns)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def reference_unedited(cls: type) -> bool:
    """Whether the mirrored reference code of `cls` is the shipped one, so fast.py computes what it says."""
    sha = reference_source_sha(cls)
    return sha is not None and REFERENCE_SOURCE.get(cls.__name__) == sha


def fast_path_line(model: nn.Module) -> str | None:
    """One line for the training log when the fast path is off for a reason worth saying (None otherwise)."""
    if getattr(model, "fast", False) and not reference_unedited(type(model)):
        return (f"model code edited ({type(model).__name__}: a method fast.py mirrors differs from the shipped one): "
                "fast path off, training on the reference autograd code as edited (slower)")
    return None


def build_model(gm: GraphModelConfig, data: TrainingData, freeze_S: bool) -> _Stoichiometry:
    """The model named by graph_model.model, initialised from the current torch RNG state."""
    if gm.model == "stoichiometry":
        return StoichiometryModel(gm, data, freeze_S)
    return KineticsModel(gm, data, freeze_S)


def rollout(model: nn.Module, c0: torch.Tensor, n_frames: int, delta_t: float, tick=None) -> torch.Tensor:
    """Free Euler rollout (clamped at 0) from c0 (n_met,) -> (n_frames, n_met), frame 0 = c0.
    `tick()` (optional) is called every 250 frames."""
    out = torch.empty(n_frames, c0.shape[-1], dtype=c0.dtype, device=c0.device)
    c = c0.unsqueeze(0)
    with torch.no_grad():
        for t in range(n_frames):
            out[t] = c[0]
            if tick is not None and t % 250 == 249:
                tick()
            c = (c + delta_t * model(c)).clamp_min_(0.0)
            if not torch.isfinite(c).all():
                out[t + 1:] = float("nan")
                break
    return out
