"""Fast forward/backward of the metabolism models (issue 16): the same maths as model.py's reference
code, as one autograd Function per model with a hand-written backward.

Why: at batch 8 these models are overhead-bound. The reference step issued ~1,000 aten calls for
~21 MFLOP; most of its time went to autograd bookkeeping of ~60 small ops, to torch.tanh (on this
CPU build ~6x slower than sigmoid, which is vectorised), and to Adam's per-parameter loop. Here
each model is ~25 forward + ~35 backward aten calls, tanh is 2 sigmoid(2x) - 1 on CPU, and
`FlatAdam` updates every parameter in ~10 calls.

What stays exactly the reference's maths (checked by tests/test_metabolism_fast.py, losses and
gradients on a fixed batch, float tolerance):
- kinetics (S frozen): MLP_sub once per distinct (metabolite, |s|) pair per batch row (f = softplus(u),
  or c softplus(u) for graph_model.mlp_sub_form c_softplus), plus any
  extra (c, s) rows the caller asks for (the phase-1 penalties: one MLP pass serves both), the
  product over each reaction's substrates on the padded layout, k = 10^log_k, v @ S^T, + MLP_node;
- stoichiometry: the per-edge message MLP's last Linear is moved after the sum over a reaction's
  substrate edges (sum_e (W h_e + b) = W sum_e h_e + n_sub b, exact up to rounding), so that layer
  runs on B x n_rxn rows instead of B x E_sub, and S^T is assembled inside.
Not covered (the model falls back to the reference code): kinetics with a learned S, MLPs that are
not Linear (Tanh Linear)* (e.g. after a code edit), and float64 inputs on CPU are still fine.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LN10 = math.log(10.0)

#: sha256 of the reference methods this file reproduces (model.MIRRORED), as shipped. model.py is
#: agent-editable: when an edit changes one of them, the model's fast_ok() is False and it trains on
#: the reference code as edited. Changing the maths here and in model.py together? Update these from
#: `model.reference_source_sha(cls)` (tests/test_metabolism_fast.py prints the new values).
REFERENCE_SOURCE = {
    "StoichiometryModel": "37bb200f504b01cbdfbc23278295f57d89d59639ff50303150f538f644895248",
    "KineticsModel": "96544f7eda0bf65a52d2223fb0a28e4dcc51fd13bb63b391ec28553bcca5a5e0",
}
_tanh_backward = torch.ops.aten.tanh_backward
_sigmoid_backward = torch.ops.aten.sigmoid_backward
_softplus_backward = torch.ops.aten.softplus_backward


def tanh_(z: torch.Tensor) -> torch.Tensor:
    """tanh in place. On CPU as 2 sigmoid(2z) - 1 (same value within ~2e-7 absolute; torch.tanh is not
    vectorised well on CPU: 2.8 ns vs 0.5 ns an element measured here); torch's own elsewhere."""
    if z.device.type == "cpu":
        return z.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
    return z.tanh_()


def linear_layers(seq: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers of an `mlp()`-shaped Sequential (Linear (Tanh Linear)*), else None."""
    if not isinstance(seq, nn.Sequential) or len(seq) % 2 != 1:
        return None
    mods = list(seq)
    for i, m in enumerate(mods):
        if (i % 2 == 0 and type(m) is not nn.Linear) or (i % 2 == 1 and type(m) is not nn.Tanh):
            return None
    return mods[0::2]


def mlp_params(seq: nn.Module) -> list[torch.Tensor]:
    """[W0, b0, W1, b1, ...] of an `mlp()` Sequential."""
    out: list[torch.Tensor] = []
    for lin in linear_layers(seq) or []:
        out += [lin.weight, lin.bias]
    return out


def _affine(i: int, n: int, final_tanh: bool) -> tuple[float, float, float]:
    """(a, c, o) of layer i: its input is h = a s + c (s the previous sigmoid output; the true x for i = 0)
    and it outputs o z (o = 2 before a tanh, whose input is then sigmoid's: tanh(z) = 2 sigmoid(2z) - 1)."""
    act = i < n - 1 or final_tanh
    return (1.0, 0.0, 2.0 if act else 1.0) if i == 0 else (2.0, -1.0, 2.0 if act else 1.0)


_ONES: dict = {}


def _ones(n: int, like: torch.Tensor) -> torch.Tensor:
    """A cached ones vector (one aten call saved per use)."""
    key = (n, like.dtype, like.device)
    t = _ONES.get(key)
    if t is None:
        t = _ONES[key] = torch.ones(n, dtype=like.dtype, device=like.device)
    return t


def mlp_forward(x: torch.Tensor, params, final_tanh: bool = False) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """x (N, in) through Linear (Tanh Linear)* -> (out, [s_0, s_1, ...]), each hidden layer kept as
    s = sigmoid(2 z) (its tanh is 2 s - 1, folded into the next layer: addmm's alpha/beta and the bias
    b - W 1, so one elementwise pass per hidden layer instead of tanh's, which torch does not vectorise
    well on CPU). With final_tanh the last layer has a tanh too and `out` is its s (tanh = 2 s - 1)."""
    ss: list[torch.Tensor] = []
    h = x
    n = len(params) // 2
    for i in range(n):
        a, c, o = _affine(i, n, final_tanh)
        W, b = params[2 * i], params[2 * i + 1]
        if c != 0.0:
            b = torch.addmv(b, W, _ones(W.shape[1], W), alpha=c)  # b + c W 1
        h = torch.addmm(b, h, W.t(), beta=o, alpha=o * a)
        if o != 1.0:
            # in place in eager (no allocation); out of place under torch.compile, whose tracing of a Function
            # refuses a saved tensor that aliases another
            h = torch.sigmoid(h) if torch.compiler.is_compiling() else h.sigmoid_()
            ss.append(h)
    return h, ss


def _grad_w(g: torch.Tensor, inp: torch.Tensor, gsum: torch.Tensor | None, alpha: float, beta: float) -> torch.Tensor:
    """alpha g.t() @ inp + beta gsum 1^T (the weight gradient). For a thin input (<= 4 columns) as a
    transposed product: MKL is ~7x slower on the direct form of that shape (4200 x 64 by 4200 x 2)."""
    thin = inp.shape[1] <= 4
    if gsum is None or beta == 0.0:
        return torch.mm(inp.t(), g).t().mul_(alpha) if thin else torch.mm(g.t(), inp).mul_(alpha)
    if thin:
        return torch.addmm(gsum.unsqueeze(0).expand(inp.shape[1], -1), inp.t(), g, beta=beta, alpha=alpha).t()
    return torch.addmm(gsum.unsqueeze(1).expand(-1, inp.shape[1]), g.t(), inp, beta=beta, alpha=alpha)


def mlp_backward(g: torch.Tensor, x: torch.Tensor, ss: list[torch.Tensor], params, need: list[bool],
                 need_x: bool, final_tanh: bool = False, scale: float = 1.0
                 ) -> tuple[list[torch.Tensor | None], torch.Tensor | None, float]:
    """Gradients of `mlp_forward`. The gradient at `out` (at the last s with final_tanh) is scale * g.
    Returns ([gW0, gb0, ...] (None where `need` is False), g_y, k): the input gradient is k * (g_y @ W0),
    left to the caller, which often needs only some of its columns or a sum over rows (thin products are
    slow). The scalar factors of the folded tanh ride along as `k` instead of passes over big tensors."""
    n = len(params) // 2
    grads: list[torch.Tensor | None] = [None] * (2 * n)
    k = scale
    for i in reversed(range(n)):
        a, c, o = _affine(i, n, final_tanh)
        W = params[2 * i]
        if o != 1.0:
            g = _sigmoid_backward(g, ss[i])
        inp = x if i == 0 else ss[i - 1]
        gsum = g.sum(0) if need[2 * i + 1] or (need[2 * i] and c != 0.0) else None
        if need[2 * i]:  # W enters as o a W (product) and o c W 1 (bias)
            grads[2 * i] = _grad_w(g, inp, gsum, o * a * k, o * c * k)
        if need[2 * i + 1]:
            grads[2 * i + 1] = gsum * (o * k)
        if i > 0:
            # earlier layers need the gradient only when some parameter (or x) below asks for it
            if not (need_x or any(need[: 2 * i])):
                return grads, None, k
            g = g * W if W.shape[0] == 1 else torch.mm(g, W)  # a one-output layer: an outer product
            k *= o * a
    return grads, (g if need_x else None), k * _affine(0, n, final_tanh)[2]


def _others_product(g: torch.Tensor) -> torch.Tensor:
    """For g (..., W): the product of the other W-1 entries at each position (no division: an underflowed
    softplus of 0 must not give 0/0)."""
    W = g.shape[-1]
    if W == 1:
        return torch.ones_like(g)
    if W == 2:
        return g.flip(-1)
    ones = torch.ones_like(g[..., :1])
    pre = torch.cat((ones, torch.cumprod(g[..., :-1], -1)), -1)
    suf = torch.cat((torch.cumprod(g.flip(-1)[..., :-1], -1).flip(-1), ones), -1)
    return pre * suf


class KineticsFn(torch.autograd.Function):
    """(dc/dt (B, n_met), f_sub at the extra rows (Q,)) of a frozen-S KineticsModel; see the module doc.

    apply(model, with_node, c, extra_c, extra_s, log_k, *mlp_sub params, [*mlp_node params, a]);
    with_node False: the reaction part S v(c) alone."""

    @staticmethod
    def forward(ctx, m, with_node, c, extra_c, extra_s, log_k, *params):
        n_sub = len(mlp_params(m.mlp_sub))
        sub, node = params[:n_sub], params[n_sub:]
        B, M = c.shape
        P = m.pair_met.numel()
        fidx = torch.add(m.pair_met.repeat(B), torch.arange(0, B * M, M, device=c.device).repeat_interleave(P))
        x = torch.stack((torch.cat((c.reshape(-1).index_select(0, fidx), extra_c)),
                         torch.cat((m.pair_s.repeat(B), extra_s))), 1)
        u2, hs = mlp_forward(x, sub)  # (N, 1)
        f = F.softplus(u2.view(-1))
        if m.c_times_sub:  # mlp_sub_form c_softplus: f = c softplus(u)
            f = f * x[:, 0]
        fe = torch.cat((f[: B * P].view(B, P), f.new_ones(B, 1)), 1)
        lay = m.pad_pair
        g_flat = fe.index_select(1, lay.reshape(-1))  # (B, R * W)
        p = g_flat.view(B, lay.shape[0], lay.shape[1]).prod(-1)
        k = torch.pow(10.0, log_k)
        S_T = m.S_frozen_T
        d = torch.mm(k * p, S_T)
        # only tensors that are not views are saved (torch.compile's tracing of a Function requires it)
        saved = [c, x, u2, g_flat, p, k, fidx, *hs]
        n_hs = len(hs)
        if node:
            a = node[-1]
            xn = torch.cat((c.reshape(-1, 1), a.repeat(B, 1)), 1)
            out, hsn = mlp_forward(xn, node[:-1])
            d = d + out.view(B, M)
            saved += [xn, *hsn]
        ctx.m, ctx.n_sub, ctx.n_hs, ctx.P, ctx.Q = m, n_sub, n_hs, P, extra_c.numel()
        ctx.save_for_backward(*saved, *params)
        return d, f[B * P:]

    @staticmethod
    def backward(ctx, g_d, g_fx):
        m, n_sub, n_hs, P, Q = ctx.m, ctx.n_sub, ctx.n_hs, ctx.P, ctx.Q
        saved = ctx.saved_tensors
        c, x, u2, g_flat, p, k, fidx = saved[:7]
        u = u2.view(-1)
        hs = list(saved[7:7 + n_hs])
        rest = saved[7 + n_hs:]
        need = ctx.needs_input_grad  # (m, with_node, c, extra_c, extra_s, log_k, *params)
        need_c = need[2]
        n_params = len(need) - 6
        params = rest[len(rest) - n_params:]
        node_saved = rest[:len(rest) - n_params]
        sub, node = params[:n_sub], params[n_sub:]
        B, M = c.shape
        if g_d is None:
            g_d = torch.zeros_like(c)
        grads: list = [None] * 6
        g_v = torch.mm(g_d, m.S_frozen_T.t())
        if need[5]:
            grads[5] = (g_v * p).sum(0) * (k * LN10)
        g_p = g_v * k
        lay = m.pad_pair
        g_g = g_p.unsqueeze(-1) * _others_product(g_flat.view(B, lay.shape[0], lay.shape[1]))
        g_fe = g_d.new_zeros(B, P + 1).index_add_(1, lay.reshape(-1), g_g.reshape(B, -1))
        g_fx = g_fx if g_fx is not None else g_d.new_zeros(Q)
        g_f = torch.cat((g_fe[:, :P].reshape(-1), g_fx))
        g_sp = g_f * x[:, 0] if m.c_times_sub else g_f  # c_softplus: d f / d softplus = c
        g_u = _softplus_backward(g_sp, u, 1.0, 20.0).unsqueeze(1)
        gsub, gz, kz = mlp_backward(g_u, x, hs, sub, list(need[6:6 + n_sub]), need_c)
        gc = None
        if need_c:  # only the c column of the input gradient, only on the batch's rows
            gx0 = torch.mv(gz[: B * P], sub[0][:, 0] * kz)
            if m.c_times_sub:  # and the direct term d f / d c = softplus(u)
                gx0 = gx0 + g_f[: B * P] * F.softplus(u[: B * P])
            gc = g_d.new_zeros(B * M).index_add_(0, fidx, gx0).view(B, M)
        gnode: list = []
        if node:
            xn, hsn = node_saved[0], list(node_saved[1:])
            need_node = list(need[6 + n_sub:])
            need_xn = need_c or need_node[-1]
            gnode, gzn, kn = mlp_backward(g_d.reshape(-1, 1), xn, hsn, node[:-1], need_node[:-1], need_xn)
            ga = None
            if need_xn:
                W0n = node[0] * kn
                if need_node[-1]:  # a is the same for every batch row: sum over the batch first
                    ga = torch.mm(gzn.view(B, M, -1).sum(0), W0n[:, 1:])
                if need_c:
                    gc = gc + torch.mv(gzn, W0n[:, 0]).view(B, M)
            gnode = gnode + [ga]
        grads[2] = gc
        return (*grads, *gsub, *gnode)


class StoichiometryFn(torch.autograd.Function):
    """dc/dt (B, n_met) of a StoichiometryModel (learned or frozen S, tied or untied); see the module doc.

    apply(model, c, log_k, sto_all, sto_sub_or_None, *msg_mlp params, *rate_mlp params)"""

    @staticmethod
    def forward(ctx, m, c, log_k, sto_all, sto_sub, *params):
        n_msg = len(mlp_params(m.msg_mlp))
        msg, rate = params[:n_msg], params[n_msg:]
        B, M = c.shape
        R, E = m.n_rxn, m.met_sub.numel()
        tracing = torch.compiler.is_compiling()  # saved tensors must not be in-place results under compile
        if m.freeze_S:
            mag, S_T = m.sto_sub, m.S_frozen_T
        else:
            mag = sto_sub.abs() if sto_sub is not None else sto_all.index_select(0, m.sub_to_all).abs()
            S_flat = (torch.index_put if tracing else torch.Tensor.index_put_)(
                sto_all.new_zeros(R * M), (m.lin_all_T,), sto_all)
            S_T = S_flat.view(R, M)
        x3 = torch.stack((c.index_select(1, m.met_sub), mag.expand(B, E)), -1)  # (B, E, 2)
        x = x3.view(B * E, 2)
        # every msg_mlp layer but the last, per edge; the sum over substrate edges; then the last layer
        # (kept as s, h = 2 s - 1: sum_e (Wl h_e + bl) = 2 Wl sum_e s_e + n_sub (bl - Wl 1))
        s0, hs = mlp_forward(x, msg[:-2], final_tanh=True)
        H = s0.shape[1]
        A3 = (torch.index_add if tracing else torch.Tensor.index_add_)(
            s0.new_zeros(B, R, H), 1, m.rxn_sub, s0.view(B, E, H))
        A = A3.view(B * R, H)
        Wl, bl = msg[-2], msg[-1]
        nb = torch.outer(m.n_sub_f, torch.addmv(bl, Wl, _ones(Wl.shape[1], Wl), alpha=-1.0))
        h = torch.addmm(nb.repeat(B, 1), A, Wl.t(), alpha=2.0)
        u2, hr = mlp_forward(h, rate)  # (B R, 1)
        u = u2.view(B, R)
        k = torch.pow(10.0, log_k)
        sp = F.softplus(u)
        v = k * sp
        d = torch.mm(v, S_T)
        ctx.m, ctx.n_msg, ctx.n_hs, ctx.tied = m, n_msg, len(hs), sto_sub is None
        # only tensors that are not views are saved (torch.compile's tracing of a Function requires it)
        ctx.save_for_backward(c, x3, A3, h, u2, sp, k, v, S_flat if not m.freeze_S else sto_all, sto_all,
                              *([] if sto_sub is None else [sto_sub]), *hs, *hr, *params)
        return d

    @staticmethod
    def backward(ctx, g_d):
        m, n_msg, n_hs = ctx.m, ctx.n_msg, ctx.n_hs
        need = ctx.needs_input_grad  # (m, c, log_k, sto_all, sto_sub, *params)
        saved = ctx.saved_tensors
        c, x3, A3, h, u2, sp, k, v, S_flat, sto_all = saved[:10]
        i = 10
        sto_sub = None
        if not ctx.tied:
            sto_sub = saved[10]
            i = 11
        n_params = len(need) - 5
        params = saved[len(saved) - n_params:]
        hs = list(saved[i:i + n_hs])
        hr = list(saved[i + n_hs:len(saved) - n_params])
        msg, rate = params[:n_msg], params[n_msg:]
        B, M = c.shape
        R, E = m.n_rxn, m.met_sub.numel()
        x, u = x3.view(B * E, 2), u2.view(B, R)
        A = A3.view(B * R, -1)
        S_T = m.S_frozen_T if m.freeze_S else S_flat.view(R, M)
        grads: list = [None] * 5
        g_v = torch.mm(g_d, S_T.t())
        if need[2]:
            grads[2] = (g_v * sp).sum(0) * (k * LN10)
        g_u = _softplus_backward(g_v * k, u, 1.0, 20.0).reshape(B * R, 1)
        need_msg = list(need[5:5 + n_msg])
        need_mag = not m.freeze_S and (need[3] or need[4])
        need_x = need[1] or need_mag
        need_h = need_x or any(need_msg)
        grate, g_yr, kr = mlp_backward(g_u, h, hr, rate, list(need[5 + n_msg:]), need_h)
        gmsg: list = [None] * n_msg
        if need_h:
            g_h = torch.mm(g_yr, rate[0])  # the true gradient at h is kr * g_h
            Wl = msg[-2]
            gbl = torch.mv(g_h.view(B, R, -1).sum(0).t(), m.n_sub_f).mul_(kr) if any(need_msg[-2:]) else None
            if need_msg[-2]:  # h = 2 Wl A + n_sub (bl - Wl 1)
                gmsg[-2] = torch.addmm(gbl.unsqueeze(1).expand(-1, A.shape[1]), g_h.t(), A, beta=-1.0, alpha=2.0 * kr)
            if need_msg[-1]:
                gmsg[-1] = gbl
            if need_x or any(need_msg[:-2]):
                g_A = torch.mm(g_h, Wl).view(B, R, -1)  # true: 2 kr g_A
                g_s0 = g_A.index_select(1, m.rxn_sub).reshape(B * E, -1)
                gfirst, g_y, ky = mlp_backward(g_s0, x, hs, msg[:-2], need_msg[:-2], need_x, final_tanh=True,
                                               scale=2.0 * kr)
                gmsg[:-2] = gfirst
                if need_x:
                    W0 = msg[0] * ky
                    if need[1]:
                        g_c = torch.mv(g_y, W0[:, 0]).view(B, E)
                        grads[1] = c.new_zeros(B, M).index_add_(1, m.met_sub, g_c)
                    if need_mag:  # |s_e| is the same for every batch row: sum over the batch first
                        g_mag = torch.mv(g_y.view(B, E, -1).sum(0), W0[:, 1])
                        if sto_sub is not None:
                            if need[4]:
                                grads[4] = g_mag * torch.sgn(sto_sub)
                        else:
                            s_e = sto_all.index_select(0, m.sub_to_all)
                            grads[3] = torch.zeros_like(sto_all).index_add_(0, m.sub_to_all, g_mag * torch.sgn(s_e))
        if need[3] and not m.freeze_S:
            g_S = torch.mm(v.t(), g_d).view(-1).index_select(0, m.lin_all_T)
            grads[3] = g_S if grads[3] is None else grads[3] + g_S
        return (*grads, *gmsg, *grate)


class FlatAdam:
    """torch.optim.Adam (defaults betas (0.9, 0.999), eps 1e-8, no weight decay, no amsgrad) over ONE flat
    buffer: the parameters become views into it, each group's lr fills its slice of a per-element lr vector,
    and a step is ~10 aten calls whatever the number of tensors (torch's Adam: ~8 per tensor, or a fused
    kernel per group plus Python bookkeeping per group; the metabolism models have 14 tensors in 5 groups).

    A group's lr and eps may change between steps (schedules, code edits); betas are one for all groups.
    Differences from torch's Adam, by design: a parameter whose .grad is None counts as a zero gradient
    (its moments decay; torch skips it) -- identical when every parameter reaches the loss, as here; the
    parameters must all be on one device, dense, and of one dtype. Host syncs: none (the step count and
    the bias corrections are Python numbers). Not a torch.optim.Optimizer: its step() wrapper (profiler
    record and hook loops) costs more than this whole update; `param_groups` is the same list of dicts."""

    def __init__(self, groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [{"lr": 1e-3, "betas": betas, "eps": eps, **g, "params": list(g["params"])}
                             for g in groups]
        self.param_groups = [g for g in self.param_groups if g["params"]]
        if not self.param_groups:
            raise ValueError("FlatAdam: no parameters")
        params = [p for g in self.param_groups for p in g["params"]]
        if len({tuple(g["betas"]) for g in self.param_groups}) > 1:
            raise ValueError("FlatAdam: one betas for all groups")
        if len({id(p) for p in params}) != len(params):
            raise ValueError("FlatAdam: a parameter is in two groups")
        if len({(p.device, p.dtype) for p in params}) > 1:
            raise ValueError("FlatAdam: parameters on several devices or dtypes")
        ref = params[0]
        n = sum(p.numel() for p in params)
        self._flat = torch.empty(n, dtype=ref.dtype, device=ref.device)
        self._slices: list[tuple[int, int]] = []
        off = 0
        with torch.no_grad():
            for g in self.param_groups:
                start = off
                for p in g["params"]:
                    k = p.numel()
                    self._flat[off:off + k].copy_(p.reshape(-1))
                    p.data = self._flat[off:off + k].view_as(p)
                    off += k
                self._slices.append((start, off))
        self._params = params
        self._m = torch.zeros_like(self._flat)
        self._v = torch.zeros_like(self._flat)
        self._lr = torch.empty_like(self._flat)
        self._eps = torch.empty_like(self._flat)
        self._lr_now: list[float] | None = None
        self._eps_now: list[float] | None = None
        self._t = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("FlatAdam: no closure support")
        lrs = [float(g["lr"]) for g in self.param_groups]
        if lrs != self._lr_now:  # a schedule changed a group's lr: refill its slice (no sync)
            for (a, b), lr in zip(self._slices, lrs):
                self._lr[a:b].fill_(lr)
            self._lr_now = lrs
        epss = [float(g["eps"]) for g in self.param_groups]
        if epss != self._eps_now:
            for (a, b), eps in zip(self._slices, epss):
                self._eps[a:b].fill_(eps)
            self._eps_now = epss
        grad = torch.cat([p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1)
                          for p in self._params])
        b1, b2 = self.param_groups[0]["betas"]
        self._t += 1
        bc1, bc2 = 1 - b1 ** self._t, 1 - b2 ** self._t
        self._m.lerp_(grad, 1 - b1)
        self._v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = self._v.sqrt().div_(math.sqrt(bc2)).add_(self._eps)
        self._flat.addcdiv_(self._m * self._lr, denom, value=-1.0 / bc1)
        return None



# ----- torch.compile (training.compile) -----

def compile_unavailable(device: torch.device | str) -> str | None:
    """Why torch.compile cannot work here (None when it can): inductor needs a C++ compiler on CPU and
    Triton on CUDA."""
    import importlib.util
    import os
    import shutil

    if torch.device(device).type == "cuda":
        return None if importlib.util.find_spec("triton") is not None else "no Triton (pip install triton)"
    cxx = os.environ.get("CXX")
    if any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"]):
        return None
    return "no C++ compiler (g++/c++/clang++) on PATH"


class _Compiled:
    """A compiled callable that falls back to the eager one, once and for good, when compiling fails
    (torch.compile is lazy: its errors come with the first call)."""

    def __init__(self, eager, mode: str, log):
        self.eager, self.log, self.mode = eager, log, mode
        self.fn = torch.compile(eager, mode=None if mode == "default" else mode, dynamic=False)
        self.tried = False

    def __call__(self, *args, **kwargs):
        if not self.tried:
            self.tried = True
            try:
                return self.fn(*args, **kwargs)
            except Exception as e:  # a compiler/toolchain failure must not fail the training
                self.log(f"training.compile {self.mode}: compiling failed ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''}); running eager")
                self.fn = self.eager
        return self.fn(*args, **kwargs)


COMPILED_METHODS = ("forward", "forward_and_sub")


def compile_model(model: nn.Module, mode: str, log=print):
    """Make the model's forward (and forward_and_sub) run through torch.compile(mode); returns (active,
    restore): call restore() after the loop to get the eager methods back (the predictions run on CPU
    without grad: a compiled forward would recompile for them). mode "off", or compile unavailable (one
    log line), leaves the model as it is."""
    if mode == "off":
        return False, lambda: None
    why = compile_unavailable(next(model.parameters()).device)
    if why is not None:
        log(f"training.compile {mode}: {why}; running eager")
        return False, lambda: None
    names = [n for n in COMPILED_METHODS if hasattr(model, n)]
    for n in names:
        setattr(model, n, _Compiled(getattr(model, n), mode, log))  # an instance attribute shadows the method

    def restore() -> None:
        for n in names:
            model.__dict__.pop(n, None)
    return True, restore


def step_begin(active: bool, mode: str) -> None:
    """Tell CUDA-graph trees (compile mode reduce-overhead) a new training step begins: the previous step's
    graph outputs may be overwritten (they were consumed: the losses were detached into the StepLog)."""
    if active and mode == "reduce-overhead":
        torch.compiler.cudagraph_mark_step_begin()
