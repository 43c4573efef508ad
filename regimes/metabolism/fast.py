"""Fast forward/backward of the metabolism models (issue 16): the same maths as model.py's reference
code, as one autograd Function per model with a hand-written backward.

Why: at batch 8 these models are overhead-bound. The reference step issued ~1,000 aten calls for
~21 MFLOP. Measured (perf, one thread, kinetics step): about a third of the step is arithmetic (MKL
gemm ~17 %, elementwise kernels ~15 %); the rest is per-call cost -- dispatcher/TensorIterator ~31 %,
the Python interpreter ~18 %, the Python bindings ~7 %, the autograd engine ~6 %, malloc ~5 %. So the
levers here are fewer calls and fewer autograd nodes: each model is one node of ~20 forward and
~35 backward aten calls, index layouts are built once per batch size and cached on the model (the MLP
input is one cat + one gather, each reaction's substrate product one gather + one prod), MLP_node's
first layer runs its embedding part once per metabolite, the phase-1 MLP_sub penalties are one node
(`SubPenaltyFn`), and `FlatAdam` is one fused call per parameter group.

Three more levers, measured on one thread on an AMD EPYC (Zen 5; regimes/metabolism/README.md "Speed"
has the step figures):
- on AMD CPUs only (`AMD_CPU`: MKL runs its generic code there), `tanh_` is 2 sigmoid(2z) - 1 on CPU
  (MKL's VML tanh: 120 us on 800 x 64 floats, this form 24 us) and `linear` sends float32 CPU layers to
  oneDNN's linear with the tanh fused (AVX-512; MKL's sgemm runs its AVX2 path there): the 64-wide
  layers ~40 % faster; elsewhere torch.tanh and MKL, as measured faster on an Intel machine;
- `ExplicitStep`: train_phase1's derivative-regression step (forward, loss, regularisers, backward,
  FlatAdam) with these Functions called directly, no autograd engine; guarded like the models (train.py's
  source hash, `explicit_step_unavailable`), else the autograd step runs;
- `tune_malloc`: glibc's adaptive thresholds returned the stoichiometry step's ~1 MB tensors to the
  kernel every step (~590 page faults, ~1.2 ms of kernel time per step).

What stays exactly the reference's maths (checked by tests/test_metabolism_fast.py, losses and
gradients on a fixed batch, float tolerance):
- kinetics (S frozen): MLP_sub once per distinct (metabolite, |s|) pair per batch row (f = softplus(u),
  or c softplus(u) for graph_model.mlp_sub_form c_softplus), plus any
  extra (c, s) rows the caller asks for (the phase-1 penalties: one MLP pass serves both), the
  product over each reaction's substrates on the padded layout, k = 10^log_k, v @ S^T, + MLP_node
  (whose output bias rides on the v @ S^T product);
- stoichiometry: the per-edge message MLP's last Linear is moved after the sum over a reaction's
  substrate edges (sum_e (W h_e + b) = W sum_e h_e + n_sub b, exact up to rounding), so that layer
  runs on B x n_rxn rows instead of B x E_sub, and S^T is assembled inside.
Not covered (the model falls back to the reference code): kinetics with a learned S, MLPs that are
not Linear (Tanh Linear)* with biases (e.g. after a code edit). float64 works (the tests run in it).
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
    "train": "c244c24ad3e484b8bedda33ae1305ec544fa05c2dad231c32aad60d7249769d9",
    "StoichiometryModel": "37bb200f504b01cbdfbc23278295f57d89d59639ff50303150f538f644895248",
    "KineticsModel": "96544f7eda0bf65a52d2223fb0a28e4dcc51fd13bb63b391ec28553bcca5a5e0",
}
_tanh_backward = torch.ops.aten.tanh_backward
_softplus_backward = torch.ops.aten.softplus_backward


def _compiling() -> bool:
    """Under torch.compile a Function must not save tensors that in-place ops produced (its tracing refuses
    a saved tensor that aliases another): out-of-place variants there, in place (no allocation) in eager."""
    return torch.compiler.is_compiling()


def cpu_vendor() -> str:
    """The CPU's vendor_id from /proc/cpuinfo ("AuthenticAMD", "GenuineIntel"; "" where not readable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


#: MKL (torch's CPU BLAS and VML) runs its generic code on AMD CPUs. Two kernel choices follow from the CPU's
#: vendor -- a fixed rule, the same on every run on one machine (never a timing race):
#: - `tanh_` on CPU: 2 sigmoid(2 z) - 1 on AMD (this AMD EPYC, Zen 5: MKL's VML tanh 120 us on 800 x 64
#:   floats, the sigmoid form 24 us; sigmoid is ATen's own AVX-512 kernel), torch.tanh elsewhere (the
#:   earlier machine, an AVX-512 Intel: tanh 17 us, sigmoid 23 us, so plain tanh was ~30 % faster);
#: - `linear`: oneDNN's fused linear on AMD for float32 (its AVX-512 kernels; MKL's sgemm runs its AVX2 path
#:   here), MKL's addmm elsewhere (measured at ~75 % of AVX-512 peak on the Intel machine).
AMD_CPU = cpu_vendor() == "AuthenticAMD"
SIGMOID_TANH = AMD_CPU


def tanh_(z: torch.Tensor) -> torch.Tensor:
    """tanh in place (out of place under torch.compile); on CPU with SIGMOID_TANH (AMD CPUs) as
    2 sigmoid(2 z) - 1: the same function, within ~1 ulp (2e-7 absolute in float32, 3e-16 in float64), ~5x
    faster there (see SIGMOID_TANH). tanh was a third of the kinetics and the stoichiometry step on AMD. On
    CUDA always torch.tanh (one kernel launch instead of four)."""
    if not (SIGMOID_TANH and z.device.type == "cpu"):
        return torch.tanh(z) if _compiling() else z.tanh_()
    if _compiling():
        return torch.sigmoid(z * 2.0) * 2.0 - 1.0
    return z.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


def linear_layers(seq: nn.Module) -> list[nn.Linear] | None:
    """The Linear layers (with bias) of an `mlp()`-shaped Sequential (Linear (Tanh Linear)*), else None.
    Called on every forward (the check must see a module swapped in by a code edit): through `_modules` and
    `_parameters` directly, ~10x cheaper than iterating the Sequential and nn.Module attribute lookups."""
    if not isinstance(seq, nn.Sequential):
        return None
    mods = tuple(seq._modules.values())
    if len(mods) % 2 != 1:
        return None
    lins = mods[0::2]
    for m in lins:
        if type(m) is not nn.Linear or m._parameters.get("bias") is None:
            return None
    for m in mods[1::2]:
        if type(m) is not nn.Tanh:
            return None
    return list(lins)


def mlp_params(seq: nn.Module) -> list[torch.Tensor]:
    """[W0, b0, W1, b1, ...] of an `mlp()` Sequential."""
    out: list[torch.Tensor] = []
    for lin in linear_layers(seq) or []:
        p = lin._parameters
        out += [p["weight"], p["bias"]]
    return out


def _probe_onednn() -> bool:
    """Whether oneDNN's fused linear (torch.ops.mkldnn._linear_pointwise, what inductor's CPU backend lowers
    linear + activation to) is there and computes x W^T + b and tanh(x W^T + b) (a private op: checked once)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return False
        g = torch.Generator().manual_seed(0)
        x, W, b = (torch.randn(s, generator=g) for s in ((7, 5), (3, 5), (3,)))
        lin = torch.ops.mkldnn._linear_pointwise(x, W, b, "none", [], "")
        act = torch.ops.mkldnn._linear_pointwise(x.t().contiguous().t(), W, b, "tanh", [], "")
        want = torch.addmm(b, x, W.t())
        return bool(torch.allclose(lin, want, rtol=1e-5, atol=1e-6)
                    and torch.allclose(act, torch.tanh(want), rtol=1e-5, atol=1e-6))
    except Exception:  # no such op in this torch build, or it refuses these arguments
        return False


#: oneDNN's fused linear works in this torch build; it is used (ONEDNN) for float32 on AMD CPUs (see AMD_CPU)
ONEDNN_WORKS = _probe_onednn()
ONEDNN = AMD_CPU and ONEDNN_WORKS
_linear_pointwise = torch.ops.mkldnn._linear_pointwise if ONEDNN_WORKS else None


def linear(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor | None = None, act: str = "none") -> torch.Tensor:
    """act(x W^T + b), act "none" or "tanh"; x and W may be transposed views (the backward's g W is
    linear(g, W.t())). With ONEDNN (AMD CPUs) float32 on CPU goes to oneDNN's linear with the tanh fused: MKL's
    sgemm runs its AVX2 path on this AMD CPU, oneDNN its AVX-512 one (measured, one thread: 835 x 64 -> 64 47
    vs 79 us, with the tanh 62 vs 104; 4200 x 2 -> 64 + tanh 90 vs 142 us; the products equal MKL's bit for
    bit on these shapes, the tanh within 1 ulp). Elsewhere (float64, CUDA, under torch.compile, Intel CPUs):
    addmm and `tanh_`.
    Not for one-output layers (MKL's gemv is 3x cheaper there) nor for g^T h weight gradients (no gain)."""
    if ONEDNN and x.dtype == torch.float32 and x.device.type == "cpu" and not _compiling():
        return _linear_pointwise(x, W, b, act, [], "")
    z = torch.mm(x, W.t()) if b is None else torch.addmm(b, x, W.t())
    return tanh_(z) if act == "tanh" else z


def mlp_tail_forward(h0: torch.Tensor, params, final_tanh: bool = False,
                     last_input: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The rest of Linear (Tanh Linear)* after layer 0, whose output h0 (N, H0) the caller computed (each caller
    has a cheaper form of that layer for its input), its tanh applied when layer 0 is hidden (more layers, or
    final_tanh: `hidden_act`). Returns (out, [tanh outputs, one per hidden layer]).
    final_tanh: a tanh after the last layer too (`out` is then the last tanh output, also listed).
    last_input (only with >= 2 layers): the last layer adds its product to this tensor (N, out) INSTEAD of
    its bias, which the caller folded in elsewhere (one addmm less)."""
    n = len(params) // 2
    hs: list[torch.Tensor] = [h0] if (n > 1 or final_tanh) else []
    h = h0
    for i in range(1, n):
        W, b = params[2 * i], params[2 * i + 1]
        if i < n - 1 or final_tanh:  # a hidden layer: its tanh fused into the product
            h = linear(h, W, b, "tanh")
            hs.append(h)
        elif W.shape[0] == 1 or last_input is not None:  # the output layer
            h = torch.addmm(b if last_input is None else last_input, h, W.t())
        else:
            h = linear(h, W, b)
    return h, hs


def hidden_act(params, final_tanh: bool = False) -> str:
    """The activation after layer 0 of an `mlp()` with these params (for `linear` / `mlp_tail_forward`)."""
    return "tanh" if (len(params) > 2 or final_tanh) else "none"


def mlp_tail_backward(g: torch.Tensor, hs: list[torch.Tensor], params, need: list[bool], final_tanh: bool = False
                      ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """Gradients of `mlp_tail_forward` for the gradient g at its output: ([None, None, gW1, gb1, ...] (None where
    `need` is False; layer 0's entries are the caller's), the gradient at z0, or None when neither layer 0's
    parameters nor anything below them need it (need[0], need[1] and the caller's own flag folded into need[0:2]))."""
    n = len(params) // 2
    grads: list[torch.Tensor | None] = [None] * (2 * n)
    if final_tanh:
        g = _tanh_backward(g, hs[-1])
    for i in reversed(range(1, n)):
        inp = hs[i - 1]
        if need[2 * i]:
            grads[2 * i] = torch.mm(g.t(), inp)
        if need[2 * i + 1]:
            grads[2 * i + 1] = g.sum(0)
        if not any(need[: 2 * i]):
            return grads, None
        W = params[2 * i]
        g = _tanh_backward(g * W if W.shape[0] == 1 else linear(g, W.t()), inp)  # a one-output layer: outer product
    return grads, g


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


class _KinLayout:
    """Index layouts of one (batch size, extra rows) for KineticsFn, built once and cached on the model:
    per step the MLP_sub input is then ONE cat and ONE gather, and the reactions' products one gather."""

    def __init__(self, m, B: int, extra_c: torch.Tensor, extra_s: torch.Tensor, like: torch.Tensor):
        dev = like.device
        M, P, Q = m.n_met, m.pair_met.numel(), extra_c.numel()
        BM, BP = B * M, B * P
        self.B, self.P, self.Q, self.BP, self.N = B, P, Q, BP, BP + Q
        # row r of the MLP_sub input: batch b = r // P, pair r % P (c[b, pair_met], pair_s), then the Q extra rows
        self.fidx = (torch.arange(B, device=dev).view(B, 1) * M + m.pair_met.view(1, P)).reshape(-1)
        # src = [c.reshape(-1) (BM), extra_c (Q), s column (BP + Q)]: x2 = src[gidx].view(2, N) is the input transposed
        self.tail = torch.cat((extra_c, m.pair_s.repeat(B), extra_s)).to(like.dtype)
        self.gidx = torch.cat((self.fidx, BM + torch.arange(Q, device=dev),
                               BM + Q + torch.arange(BP + Q, device=dev))).view(2, self.N)
        # the padded product layout into f_ext = [f (N), 1]: (b, r, w) -> b P + pair, or N (the constant 1)
        lay = m.pad_pair  # (R, W) into pairs, P = the constant 1
        self.W = lay.shape[1]
        rows = torch.arange(B, device=dev).view(B, 1, 1) * P + lay.unsqueeze(0)
        self.pidx = torch.where(lay.unsqueeze(0) >= P, torch.full_like(rows, self.N), rows).reshape(-1)
        self.one = like.new_ones(1)
        if not _compiling():  # kept alive: their ids stay unique (the cache's key); versions catch in-place edits
            self.extra = (extra_c, extra_c._version, extra_s, extra_s._version)


def _kin_layout(m, B: int, extra_c: torch.Tensor, extra_s: torch.Tensor, like: torch.Tensor) -> _KinLayout:
    if _compiling():  # traced once into the graph (no side effects on the model inside a compiled Function)
        return _KinLayout(m, B, extra_c, extra_s, like)
    cache = m.__dict__.setdefault("_fast_layouts", {})
    none = extra_c.numel() == 0 and extra_s.numel() == 0  # the plain forward passes fresh empty tensors
    key = (B, None if none else (id(extra_c), id(extra_s)), like.dtype, like.device, m.pad_pair.data_ptr())
    lay = cache.get(key)
    if lay is None or not none and (lay.extra[0] is not extra_c or lay.extra[2] is not extra_s  # (a deep copy's)
                                    or lay.extra[1] != extra_c._version or lay.extra[3] != extra_s._version):
        if len(cache) > 8:  # a caller that builds new extra rows per call: no unbounded growth
            cache.clear()
        lay = cache[key] = _KinLayout(m, B, extra_c, extra_s, like)
    return lay


class KineticsFn(torch.autograd.Function):
    """(dc/dt (B, n_met), f_sub at the extra rows (Q,)) of a frozen-S KineticsModel; see the module doc.

    apply(model, with_node, c, extra_c, extra_s, log_k, *mlp_sub params, [*mlp_node params, a]);
    with_node False: the reaction part S v(c) alone. extra_c / extra_s are constants (no gradient)."""

    @staticmethod
    def forward(ctx, m, with_node, c, extra_c, extra_s, log_k, *params):
        n_sub = len(m.mlp_sub) + 1  # Linear (Tanh Linear)*: fast_ok checked the shape
        sub, node = params[:n_sub], params[n_sub:]
        B, M = c.shape
        L = _kin_layout(m, B, extra_c, extra_s, c)
        x2 = torch.take(torch.cat((c.reshape(-1), L.tail)), L.gidx)  # (2, N): the MLP_sub input, transposed
        u2, hs = mlp_tail_forward(linear(x2.t(), sub[0], sub[1], hidden_act(sub)), sub)  # (N, 1)
        u = u2.view(-1)
        sp = F.softplus(u)
        f = sp * x2[0] if m.c_times_sub else sp  # mlp_sub_form c_softplus: f = c softplus(u)
        g_flat = torch.cat((f, L.one)).index_select(0, L.pidx)  # (B R W)
        R = m.n_rxn
        p = g_flat.view(B, R, L.W).prod(-1) if L.W > 1 else g_flat.view(B, R)
        k = torch.pow(10.0, log_k)
        v = p * k
        saved = [c, x2, u2, sp, g_flat, v, k, L.fidx, L.pidx, *hs]
        n_hs = len(hs)
        if node:
            Wn, a = node[:-1], node[-1]
            n_layers = len(Wn) // 2
            # layer 0 on [c_i, a_i]: the embedding part once per metabolite, the c part an outer product
            A = torch.addmm(Wn[1], a, Wn[0][:, 1:].t())  # (M, H0)
            w_c = Wn[0][:, 0].contiguous()  # (a strided column makes the broadcast addcmul 3x slower)
            z0 = torch.addcmul(A, c.unsqueeze(-1), w_c).view(B * M, -1)
            if n_layers >= 2:  # the last layer adds onto S v, whose mm carries that layer's bias
                d = torch.addmm(Wn[-1], v, m.S_frozen_T)
                out, hsn = mlp_tail_forward(tanh_(z0), Wn, last_input=d.view(B * M, 1))
                d = out.view(B, M).clone() if _compiling() else out.view(B, M)  # (no view outputs under compile)
            else:
                d = torch.mm(v, m.S_frozen_T)
                d = d + z0.view(B, M)
                hsn = []
            saved += hsn
        else:
            d = torch.mm(v, m.S_frozen_T)
        # ints only on ctx (the layout's tensors travel as saved tensors: torch.compile's tracing needs that)
        ctx.m, ctx.n_sub, ctx.n_hs, ctx.dims = m, n_sub, n_hs, (L.P, L.Q, L.BP, L.N, L.W)
        # only tensors that are not views are saved (torch.compile's tracing of a Function requires it)
        ctx.save_for_backward(*saved, *params)
        return d, f[L.BP:]

    @staticmethod
    def backward(ctx, g_d, g_fx):
        m, n_sub, n_hs = ctx.m, ctx.n_sub, ctx.n_hs
        P, Q, BP, N, W = ctx.dims
        saved = ctx.saved_tensors
        c, x2, u2, sp, g_flat, v, k, fidx, pidx = saved[:9]
        hs = list(saved[9:9 + n_hs])
        need = ctx.needs_input_grad  # (m, with_node, c, extra_c, extra_s, log_k, *params)
        need_c = need[2]
        n_params = len(need) - 6
        params = saved[len(saved) - n_params:]
        hsn = list(saved[9 + n_hs:len(saved) - n_params])
        sub, node = params[:n_sub], params[n_sub:]
        B, M = c.shape
        R = m.n_rxn
        grads: list = [None] * 6
        need_sub = list(need[6:6 + n_sub])
        gsub: list = [None] * n_sub
        gc = None
        if g_d is not None:
            g_v = torch.mm(g_d, m.S_frozen_T.t())
            if need[5]:
                grads[5] = (g_v * v).sum(0).mul_(LN10)
        if need_c or any(need_sub):
            if g_d is not None:
                g_p = g_v * k
                if W == 1:
                    g_g = g_p.reshape(-1)
                else:
                    g_g = (g_p.unsqueeze(-1) * _others_product(g_flat.view(B, R, W))).reshape(-1)
                g_fe = g_g.new_zeros(N + 1).index_add_(0, pidx, g_g)
                if g_fx is not None:
                    g_fe[BP:N].add_(g_fx)
                g_f = g_fe[:N]
            else:
                g_f = torch.cat((g_fx.new_zeros(BP), g_fx))
            g_sp = g_f * x2[0] if m.c_times_sub else g_f  # c_softplus: d f / d softplus = c
            g_u = _softplus_backward(g_sp, u2.view(-1), 1.0, 20.0).unsqueeze(1)
            gsub, gz0 = mlp_tail_backward(g_u, hs, sub, [need_sub[0] or need_sub[1] or need_c] + need_sub[1:])
            gsub[0] = gsub[1] = None
            if need_sub[0]:  # x2 is the input transposed (2, N): the thin product in its fast orientation
                gsub[0] = torch.mm(x2, gz0).t().contiguous()
            if need_sub[1]:
                gsub[1] = gz0.sum(0)
            if need_c:  # only the c column of the input gradient, only on the batch's rows
                gx0 = torch.mv(gz0[:BP], sub[0][:, 0])
                if m.c_times_sub:  # and the direct term d f / d c = softplus(u)
                    gx0 = gx0.addcmul_(g_f[:BP], sp[:BP])
                gc = g_f.new_zeros(B * M).index_add_(0, fidx, gx0).view(B, M)
        gnode: list = []
        if node:
            Wn, a = node[:-1], node[-1]
            need_node = list(need[6 + n_sub:])
            gnode = [None] * len(node)
            if g_d is not None and (need_c or any(need_node)):
                need_w = need_node[:-1]
                need_z0 = need_c or need_node[-1] or need_w[0] or need_w[1]
                gw, gz0 = mlp_tail_backward(g_d.reshape(-1, 1), hsn, Wn, [need_z0] + need_w[1:])
                gnode[2:len(Wn)] = gw[2:]  # (the last layer's bias rode on S v's mm: its gradient is the same sum)
                if gz0 is not None:
                    W0 = Wn[0]
                    GA = gz0.view(B, M, -1).sum(0) if (need_w[0] or need_w[1] or need_node[-1]) else None
                    if need_w[0]:
                        gnode[0] = torch.cat((torch.mv(gz0.t(), c.reshape(-1)).unsqueeze(1), torch.mm(GA.t(), a)), 1)
                    if need_w[1]:
                        gnode[1] = GA.sum(0)
                    if need_node[-1]:  # a is the same for every batch row: summed over the batch (GA)
                        gnode[-1] = torch.mm(GA, W0[:, 1:])
                    if need_c:
                        gcn = torch.mv(gz0, W0[:, 0]).view(B, M)
                        gc = gcn if gc is None else gc.add_(gcn)
        grads[2] = gc
        return (*grads, *gsub, *gnode)


class StoichiometryFn(torch.autograd.Function):
    """dc/dt (B, n_met) of a StoichiometryModel (learned or frozen S, tied or untied); see the module doc.

    apply(model, c, log_k, sto_all, sto_sub_or_None, *msg_mlp params, *rate_mlp params)"""

    @staticmethod
    def forward(ctx, m, c, log_k, sto_all, sto_sub, *params):
        n_msg = len(m.msg_mlp) + 1  # Linear (Tanh Linear)*: fast_ok checked the shape
        msg, rate = params[:n_msg], params[n_msg:]
        B, M = c.shape
        R, E = m.n_rxn, m.met_sub.numel()
        if m.freeze_S:
            mag, S_T = m.sto_sub, m.S_frozen_T
        else:
            mag = sto_sub.abs() if sto_sub is not None else sto_all.index_select(0, m.sub_to_all).abs()
            S_flat = (torch.index_put if _compiling() else torch.Tensor.index_put_)(
                sto_all.new_zeros(R * M), (m.lin_all_T,), sto_all)
            S_T = S_flat.view(R, M)
        gidx = _sto_gidx(m, B, c.device)
        x = torch.take(torch.cat((c.reshape(-1), mag)), gidx)  # (B E, 2): the msg_mlp input
        # every msg_mlp layer but the last, per edge; the sum over substrate edges; then the last layer
        # (sum_e (Wl h_e + bl) = Wl sum_e h_e + n_sub bl: that layer on B x n_rxn rows instead of B x E_sub)
        s0, hs = mlp_tail_forward(linear(x, msg[0], msg[1], "tanh"), msg[:-2], final_tanh=True)
        H = s0.shape[1]
        A3 = (torch.index_add if _compiling() else torch.Tensor.index_add_)(
            s0.new_zeros(B, R, H), 1, m.rxn_sub, s0.view(B, E, H))
        A = A3.view(B * R, H)
        Wl, bl = msg[-2], msg[-1]
        nb = torch.outer(m.n_sub_f, bl)
        if _compiling():  # (no saved views under compile)
            h = torch.addmm(nb.repeat(B, 1), A, Wl.t())
        else:
            h = linear(A, Wl)
            h.view(B, R, -1).add_(nb)
        u2, hr = mlp_tail_forward(linear(h, rate[0], rate[1], hidden_act(rate)), rate)  # (B R, 1)
        u = u2.view(B, R)
        k = torch.pow(10.0, log_k)
        sp = F.softplus(u)
        v = k * sp
        d = torch.mm(v, S_T)
        ctx.m, ctx.n_msg, ctx.n_hs, ctx.tied = m, n_msg, len(hs), sto_sub is None
        # only tensors that are not views are saved (torch.compile's tracing of a Function requires it)
        ctx.save_for_backward(c, x, A3, h, u2, k, v, S_flat if not m.freeze_S else sto_all, sto_all,
                              *([] if sto_sub is None else [sto_sub]), *hs, *hr, *params)
        return d

    @staticmethod
    def backward(ctx, g_d):
        m, n_msg, n_hs = ctx.m, ctx.n_msg, ctx.n_hs
        need = ctx.needs_input_grad  # (m, c, log_k, sto_all, sto_sub, *params)
        saved = ctx.saved_tensors
        c, x, A3, h, u2, k, v, S_flat, sto_all = saved[:9]
        i = 9
        sto_sub = None
        if not ctx.tied:
            sto_sub = saved[9]
            i = 10
        n_params = len(need) - 5
        params = saved[len(saved) - n_params:]
        hs = list(saved[i:i + n_hs])
        hr = list(saved[i + n_hs:len(saved) - n_params])
        msg, rate = params[:n_msg], params[n_msg:]
        B, M = c.shape
        R, E = m.n_rxn, m.met_sub.numel()
        u = u2.view(B, R)
        A = A3.view(B * R, -1)
        S_T = m.S_frozen_T if m.freeze_S else S_flat.view(R, M)
        grads: list = [None] * 5
        g_v = torch.mm(g_d, S_T.t())
        if need[2]:
            grads[2] = (g_v * v).sum(0).mul_(LN10)
        g_u = _softplus_backward(g_v * k, u, 1.0, 20.0).reshape(B * R, 1)
        need_msg = list(need[5:5 + n_msg])
        need_rate = list(need[5 + n_msg:])
        need_mag = not m.freeze_S and (need[3] or need[4])
        need_x = need[1] or need_mag
        need_h = need_x or any(need_msg)
        grate, gz0r = mlp_tail_backward(g_u, hr, rate, [need_rate[0] or need_h] + need_rate[1:])
        if need_rate[0]:
            grate[0] = torch.mm(gz0r.t(), h)
        else:
            grate[0] = None
        if need_rate[1]:
            grate[1] = gz0r.sum(0)
        gmsg: list = [None] * n_msg
        if need_h:
            g_h = linear(gz0r, rate[0].t())  # (B R, msg_dim)
            Wl = msg[-2]
            if need_msg[-2]:  # h = Wl A + n_sub bl
                gmsg[-2] = torch.mm(g_h.t(), A)
            if need_msg[-1]:
                gmsg[-1] = torch.mv(g_h.view(B, R, -1).sum(0).t(), m.n_sub_f)
            if need_x or any(need_msg[:-2]):
                g_s0 = linear(g_h, Wl.t()).view(B, R, -1).index_select(1, m.rxn_sub).reshape(B * E, -1)
                need_first = [need_msg[0] or need_msg[1] or need_x] + need_msg[1:-2]
                gfirst, gz0 = mlp_tail_backward(g_s0, hs, msg[:-2], need_first, final_tanh=True)
                gmsg[2:-2] = gfirst[2:]
                if need_msg[0]:  # the thin product in its fast orientation (gz0^T x is 8x slower)
                    gmsg[0] = torch.mm(x.t(), gz0).t().contiguous()
                # the batch sum per edge serves |s|'s gradient and layer 0's bias: one pass over B E x H, not two
                g_e = gz0.view(B, E, -1).sum(0) if (need_mag or need_msg[1]) else None
                if need_msg[1]:
                    gmsg[1] = g_e.sum(0)
                if need_x:
                    W0 = msg[0]
                    if need[1]:
                        g_c = torch.mv(gz0, W0[:, 0]).view(B, E)
                        grads[1] = c.new_zeros(B, M).index_add_(1, m.met_sub, g_c)
                    if need_mag:  # |s_e| is the same for every batch row: sum over the batch first
                        g_mag = torch.mv(g_e, W0[:, 1])
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


def _sto_gidx(m, B: int, dev) -> torch.Tensor:
    """Gather index (B E, 2) of the msg_mlp input from [c.reshape(-1) (B M), |s| (E)]: row (b, e) is
    (c[b, met_sub[e]], |s_e|); cached on the model per batch size. Row-major (B E, 2), not (2, B E)
    transposed: oneDNN's linear takes it 20 % faster (4200 rows: 90 vs 113 us with the tanh)."""
    def build() -> torch.Tensor:
        M, E = m.n_met, m.met_sub.numel()
        rows = (torch.arange(B, device=dev).view(B, 1) * M + m.met_sub.view(1, E)).reshape(-1)
        return torch.stack((rows, B * M + torch.arange(E, device=dev).repeat(B)), 1)

    if _compiling():  # traced into the graph: no side effects on the model inside a compiled Function
        return build()
    cache = m.__dict__.setdefault("_fast_layouts", {})
    key = ("sto_rows", B, dev, m.met_sub.data_ptr())
    g = cache.get(key)
    if g is None:
        g = cache[key] = build()
    return g


_DIFF: dict = {}


def _diff_matrix(n_s: int, n_c: int, q: int, like: torch.Tensor) -> torch.Tensor:
    """(n_s (n_c - 1), q) with D f = f[j+1] - f[j] along each grid row (+1 / -1 entries: exact differences):
    one mv forward and one mv backward instead of the slices, sub and in-place slice writes."""
    key = (n_s, n_c, q, like.dtype, like.device)
    D = _DIFF.get(key)
    if D is None:
        D = torch.zeros(n_s, n_c - 1, q, dtype=like.dtype, device=like.device)
        j = torch.arange(n_c - 1, device=like.device)
        for s in range(n_s):
            D[s, j, s * n_c + j + 1] = 1.0
            D[s, j, s * n_c + j] = -1.0
        D = _DIFF[key] = D.view(n_s * (n_c - 1), q)
    return D


class SubPenaltyFn(torch.autograd.Function):
    """train.sub_penalties (the phase-1 MLP_sub penalties and the gauge-corrected log k prior) from MLP_sub at
    the SubPenaltyInputs rows, as ONE autograd node with a hand-written backward: the reference's autograd
    graph of these few scalars is ~35 aten calls and ~25 nodes per step, about 8 % of the kinetics step.

    apply(f (Q,), log_k (R,), n_sub_f (R,), n_s, n_c, coeff_diff, coeff_norm, coeff_zero, coeff_prior, k_center)
    -> the penalty (0-dim); rows of f: n_s x n_c grid, f(0, s) (n_s), f(1, s) (n_s), f(1, 1). The terms are
    added in the reference's order; a zero coefficient skips its term, as there."""

    @staticmethod
    def forward(ctx, f, log_k, n_sub_f, n_s, n_c, c_diff, c_norm, c_zero, c_prior, k_center):
        n = n_s * n_c
        f11 = f[-1]
        terms = []
        saved: dict = {}
        if c_diff:  # relu(f_j - f_j+1) = -min(f_j+1 - f_j, 0) exactly
            D = _diff_matrix(n_s, n_c, f.numel(), f)
            dif = torch.mv(D, f)
            terms.append(dif.clamp_max(0.0).sum() * (-c_diff / dif.numel()))
            saved["dif"], saved["D"] = dif, D
        if c_norm:
            terms.append((f11 - 1.0).pow(2) * c_norm)
        if c_zero:
            ratio = f[n:n + n_s] / f[n + n_s:n + 2 * n_s]
            terms.append(ratio.pow(2).sum() * c_zero)
            saved["ratio"] = ratio
        if c_prior:
            e = torch.addcmul(log_k, n_sub_f, torch.log10(f11)).sub_(k_center)
            terms.append(torch.dot(e, e) * (c_prior / e.numel()))
            saved["e"] = e
        regul = f.new_zeros(()) if not terms else terms[0]
        for x in terms[1:]:
            regul = regul + x
        ctx.args = (n_s, n_c, c_diff, c_norm, c_zero, c_prior)
        ctx.saved = saved
        ctx.save_for_backward(f, n_sub_f)
        return regul

    @staticmethod
    def backward(ctx, g):
        n_s, n_c, c_diff, c_norm, c_zero, c_prior = ctx.args
        f, n_sub_f = ctx.saved_tensors
        saved = ctx.saved
        n = n_s * n_c
        f11 = f[-1]
        if c_diff:  # d/d dif_j = -c/count where dif_j < 0; back through D: one mv (D^T q)
            dif = saved["dif"]
            q = (dif < 0).to(f.dtype).mul_(g * (-c_diff / dif.numel()))
            g_f = torch.mv(saved["D"].t(), q)
        else:
            g_f = torch.zeros_like(f)
        g11 = None
        if c_norm:
            g11 = (f11 - 1.0) * (2.0 * c_norm) * g
        if c_zero:  # (f0 / f1)^2: 2 r / f1 and -2 r^2 / f1
            r = saved["ratio"]
            gr = r * (2.0 * c_zero) * g
            fz1 = f[n + n_s:n + 2 * n_s]
            g_f[n:n + n_s].add_(gr / fz1)
            g_f[n + n_s:n + 2 * n_s].sub_(gr * r / fz1)
        g_lk = None
        if c_prior:  # mean (log_k + n_sub log10 f11 - centre)^2
            g_lk = saved["e"] * (2.0 * c_prior / saved["e"].numel()) * g
            gp = torch.dot(g_lk, n_sub_f) / (f11 * LN10)
            g11 = gp if g11 is None else g11 + gp
        if g11 is not None:
            g_f.select(0, -1).add_(g11)  # (select + add_: no copy back, unlike g_f[-1] += x)
        return g_f, g_lk, None, None, None, None, None, None, None, None


class FlatAdam:
    """torch.optim.Adam (defaults betas (0.9, 0.999), eps 1e-8, no weight decay, no amsgrad) as ONE fused aten call
    per parameter group: torch._fused_adam_, the kernel behind torch.optim.Adam(fused=True), whose CPU loop does
    the whole update of a tensor in one pass. torch's Adam itself costs ~8 aten calls per tensor (foreach: per
    group), plus Optimizer.step's wrapper (profiler record, hook loops, per-group state gathering) -- more than
    this whole update at these sizes; an earlier flat-buffer version here was ~10 elementwise calls and a cat.

    A group's lr and eps may change between steps (schedules, code edits); betas are one for all groups.
    Differences from torch's Adam, by design: a parameter whose .grad is None counts as a zero gradient
    (its moments decay; torch skips it) -- identical when every parameter reaches the loss, as here; the
    parameters must all be on one device and of one dtype. A non-contiguous .grad (a code edit that sets one)
    is made contiguous first: the fused kernel reads raw memory. Host syncs: none (the step count is one device
    tensor, shared). Not a torch.optim.Optimizer; `param_groups` is the same list of dicts."""

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
        if any(p.is_sparse or not p.is_contiguous() for p in params):
            raise ValueError("FlatAdam: dense contiguous parameters only")
        self._params = params
        self._t = torch.zeros((), dtype=torch.float32, device=params[0].device)  # the step count, one for all
        self._lists = []
        for g in self.param_groups:
            ps = g["params"]
            self._lists.append((ps, [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps],
                                [self._t] * len(ps)))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params:
            p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            raise ValueError("FlatAdam: no closure support")
        self._t += 1
        b1, b2 = self.param_groups[0]["betas"]
        for g, (ps, ms, vs, ts) in zip(self.param_groups, self._lists):
            grads = [p.grad for p in ps]
            for i, gr in enumerate(grads):
                if gr is None:
                    grads[i] = torch.zeros_like(ps[i])
                elif not gr.is_contiguous():
                    grads[i] = gr.contiguous()
            torch._fused_adam_(ps, grads, ms, vs, [], ts, lr=float(g["lr"]), beta1=b1, beta2=b2, weight_decay=0.0,
                               eps=float(g["eps"]), amsgrad=False, maximize=False)
        return None



# ----- the process's allocator -----

def tune_malloc(mmap_threshold: int = 32 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Keep glibc's malloc from handing a training step's large tensors back to the kernel between steps:
    blocks below `mmap_threshold` come from the heap (not a fresh mmap each), and the heap top is trimmed only
    past `trim_threshold`. Why: glibc's default thresholds adapt to ~1 MB and 2x that; the stoichiometry step
    allocates a few B x E_sub x 64 tensors of ~1 MB, freed and re-allocated every step, and measured (one
    thread, batch 8) ~590 page faults and ~1.2 ms of kernel time per step -- more than the step's own work
    (steps/CPU-s 351 -> 574 with the thresholds set). Process-wide, idempotent; False where it does not apply
    (not glibc). The memory kept is what a step already used (plus the data), not more."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h
    return bool(mallopt(M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(mallopt(M_TRIM_THRESHOLD, int(trim_threshold)))


# ----- explicit training step (no autograd engine) -----

class _Ctx:
    """The parts of autograd's ctx that this file's Functions use, for calling their forward and backward
    directly (ExplicitStep): saved tensors, needs_input_grad, and whatever attributes forward sets."""

    def save_for_backward(self, *tensors: torch.Tensor) -> None:
        self.saved_tensors = tensors


def _s_regul(s: torch.Tensor, t, coeff_L1: float, s_prior: torch.Tensor | None, rxn_all: torch.Tensor, n_rxn: int
             ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """train_phase1's learned-S regularisers (coeff_L1, coeff_S_L2, coeff_S_integer, coeff_mass_conservation,
    coeff_S_prior with train.S_shape_prior) at s = sto_all: (their sum, its gradient in s), each term added in
    train_phase1's order; (None, None) when every coefficient is 0. Gradients by hand (tests check them)."""
    n = s.numel()
    val, grad = None, None

    def add(v, g):
        nonlocal val, grad
        val = v if val is None else val + v
        grad = g if grad is None else grad.add_(g)

    if coeff_L1:  # |s|' = sgn(s) (0 at 0, as torch's abs backward)
        add(coeff_L1 * s.abs().mean(), torch.sgn(s).mul_(coeff_L1 / n))
    if t.coeff_S_L2:
        add(t.coeff_S_L2 * (s ** 2).mean(), s * (2.0 * t.coeff_S_L2 / n))
    if t.coeff_S_integer:  # (sin^2 pi s)' = 2 pi sin(pi s) cos(pi s)
        ps = math.pi * s
        sn = torch.sin(ps)
        add(t.coeff_S_integer * sn.pow(2).mean(), sn.mul_(torch.cos(ps)).mul_(2.0 * math.pi * t.coeff_S_integer / n))
    if t.coeff_mass_conservation:  # mean_j col_j^2, col_j = sum of column j's entries
        col = s.new_zeros(n_rxn).index_add_(0, rxn_all, s)
        add(t.coeff_mass_conservation * (col ** 2).mean(),
            col.mul(2.0 * t.coeff_mass_conservation / n_rxn).index_select(0, rxn_all))
    if t.coeff_S_prior:  # mean_j (1 - cos_j), cos_j = <s, p>_j / sqrt(max(<s, s>_j <p, p>_j, 1e-24))
        def col_sum(x):
            return x.new_zeros(n_rxn).index_add_(0, rxn_all, x)
        st, ss, tt = col_sum(s * s_prior), col_sum(s * s), col_sum(s_prior * s_prior)
        q = ss * tt
        den = q.clamp_min(1e-24).sqrt()
        cos = st / den
        # d cos_j / d s_e = p_e / den_j - st_j [q_j >= 1e-24] tt_j s_e / den_j^3 (the clamp passes no gradient below)
        a = den.reciprocal()
        b = torch.where(q >= 1e-24, st * tt / (den * den * den), torch.zeros_like(q))
        c = -t.coeff_S_prior / n_rxn
        g = s_prior * (a * c).index_select(0, rxn_all) - s * (b * c).index_select(0, rxn_all)
        add(t.coeff_S_prior * (1.0 - cos).mean(), g)
    return val, grad


def source_sha(fns: tuple) -> str | None:
    """sha256 of the source of these functions (None: source not readable); for train.LOSS_CODE, the train.py
    functions whose loss ExplicitStep reproduces (checked like model.MIRRORED's methods)."""
    import hashlib
    import inspect

    try:
        text = "".join(inspect.getsource(f) for f in fns)
    except (OSError, TypeError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def explicit_step_unavailable(model: nn.Module, opt, t, compiled: bool, loss_code: tuple) -> str | None:
    """Why train_phase1 cannot use ExplicitStep for this model and config (None: it can). loss_code:
    train.LOSS_CODE, the functions whose loss it reproduces (passed in: fast.py does not import train.py)."""
    if not (getattr(model, "fast", False) and model.fast_ok()):
        return "the model is on the reference path"
    if not isinstance(opt, FlatAdam):
        return "the optimiser is not FlatAdam"
    if compiled:
        return "training.compile is on"
    if t.recurrent_training:
        return "recurrent training"
    if model.kind == "kinetics" and t.coeff_MLP_node_L1 and model.use_node:
        return "coeff_MLP_node_L1"
    if "forward" in model.__dict__ or "forward_and_sub" in model.__dict__:
        return "the model's forward is replaced"
    if source_sha(tuple(loss_code)) != REFERENCE_SOURCE.get("train"):
        return "train.py's loss code is edited"
    inputs = {id(p) for p in ExplicitStep.inputs(model)}
    if any(id(p) not in inputs for g in opt.param_groups for p in g["params"]):
        return "the optimiser trains a parameter the model's forward does not take"
    return None


class ExplicitStep:
    """One train_phase1 step of derivative regression -- forward, loss, gradients, Adam -- without the autograd
    engine: the Functions above called directly (their forward with a `_Ctx`, the loss's gradient at dc/dt by
    hand, their backward), the regularisers' gradients by hand, then FlatAdam. The same maths and numbers as
    the autograd step within float rounding (tests/test_metabolism_fast.py: losses and gradients in float64,
    and whole trainings). Why: the engine's own work (graph nodes of the loss and regularisers, AccumulateGrad,
    the backward call) was ~170 us of a ~1.3 ms kinetics step. Use only where `explicit_step_unavailable` is
    None (train_phase1 checks it: anything not covered, an edited train.py or model.py included, trains on the
    autograd path as before).

    step(c, y, coeff_L1) -> (pred_loss, regul), 0-dim tensors; `grads` returns the gradients instead of
    stepping (for the tests)."""

    def __init__(self, model: nn.Module, opt: FlatAdam, t, ynorm2: float, k_center: float, sub_inputs=None,
                 s_prior: torch.Tensor | None = None):
        self.m, self.opt, self.t = model, opt, t
        self.ynorm2, self.k_center = float(ynorm2), float(k_center)
        self.kinetic = model.kind == "kinetics"
        self.sub = sub_inputs  # train.SubPenaltyInputs, or None (no MLP_sub penalties)
        self.s_prior = s_prior
        self.coeffs = None if sub_inputs is None else (
            float(t.coeff_MLP_sub_diff), float(t.coeff_MLP_sub_norm), float(t.coeff_MLP_sub_zero), float(t.coeff_k_prior))
        if self.kinetic and sub_inputs is None:
            self.sub_c = self.sub_s = model.log_k.new_zeros(0)
        # the inputs, fixed for the loop (Adam updates them in place; the loop's code is the shipped one)
        self.ins = self.inputs(model)
        self.need = tuple(p.requires_grad for p in self.ins)

    @staticmethod
    def inputs(m) -> list[torch.Tensor]:
        """The model tensors its Function takes after the constants, in order (parameters or buffers)."""
        if m.kind == "kinetics":
            return [m.log_k, *mlp_params(m.mlp_sub), *([*mlp_params(m.mlp_node), m.a] if m.use_node else [])]
        return [m.log_k, m.sto_all, *([] if m.freeze_S else [m.sto_sub] if m.sto_sub is not None else []),
                *mlp_params(m.msg_mlp), *mlp_params(m.rate_mlp)]

    @torch.no_grad()
    def grads(self, c: torch.Tensor, y: torch.Tensor, coeff_L1: float = 0.0):
        """(pred_loss, regul, [(tensor, its gradient or None)]) for the batch c, targets y (dc/dt)."""
        m, t, ins, need = self.m, self.t, self.ins, self.need
        ctx = _Ctx()
        if self.kinetic:  # apply(model, with_node, c, extra_c, extra_s, log_k, *params)
            ctx.needs_input_grad = (False,) * 5 + need
            sub_c, sub_s = (self.sub.c, self.sub.s) if self.sub is not None else (self.sub_c, self.sub_s)
            d, fx = KineticsFn.forward(ctx, m, m.use_node, c, sub_c, sub_s, *ins)
        else:  # apply(model, c, log_k, sto_all, sto_sub or None, *params)
            sto_sub = None if m.freeze_S or m.sto_sub is None else m.sto_sub
            k = 2 if sto_sub is None else 3
            ctx.needs_input_grad = (False, False, need[0], need[1], sto_sub is not None and need[2], *need[k:])
            d = StoichiometryFn.forward(ctx, m, c, m.log_k, m.sto_all, sto_sub, *ins[k:])
        r = d - y
        pred_loss = (r ** 2).mean() / self.ynorm2
        g_d = r.mul_(2.0 / (r.numel() * self.ynorm2))  # d pred_loss / d d (r is not needed after this)
        regul = pred_loss.new_zeros(())
        g_logk = g_sto = g_fx = None
        if not self.kinetic and not m.freeze_S:
            val, g_sto = _s_regul(m.sto_all, t, coeff_L1, self.s_prior, m.rxn_all, m.n_rxn)
            if val is not None:
                regul = regul + val
        if self.kinetic and self.sub is not None:
            pctx = _Ctx()
            pen = SubPenaltyFn.forward(pctx, fx, m.log_k, m.n_sub_f.to(fx.dtype), self.sub.n_s, self.sub.n_c,
                                       *self.coeffs, self.k_center)
            regul = regul + pen
            g_fx, g_logk = SubPenaltyFn.backward(pctx, 1.0)[:2]
        if t.coeff_k_center:  # coeff (mean log k - centre)^2
            e = m.log_k.mean() - self.k_center
            regul = regul + t.coeff_k_center * e ** 2
            g = (e * (2.0 * t.coeff_k_center / m.log_k.numel())).expand(m.log_k.shape)
            g_logk = g if g_logk is None else g_logk + g
        if self.kinetic:
            out = KineticsFn.backward(ctx, g_d, g_fx)[5:]
        else:
            gs = StoichiometryFn.backward(ctx, g_d)
            out = [gs[2], gs[3], *([] if sto_sub is None else [gs[4]]), *gs[5:]]
        out = list(out)
        if g_logk is not None:
            out[0] = g_logk if out[0] is None else out[0] + g_logk
        if g_sto is not None:
            out[1] = g_sto if out[1] is None else out[1] + g_sto
        return pred_loss, regul, list(zip(ins, out))

    def step(self, c: torch.Tensor, y: torch.Tensor, coeff_L1: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        pred_loss, regul, grads = self.grads(c, y, coeff_L1)
        for p, g in grads:
            if p.requires_grad:
                p.grad = g
        self.opt.step()
        return pred_loss, regul


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
