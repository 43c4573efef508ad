"""fast.py against the reference code of model.py (`model.fast = False`): the same losses and gradients on a
fixed batch, for every configuration the fast path covers, and FlatAdam against torch.optim.Adam."""

from __future__ import annotations

import copy

import pytest
import torch

from regimes.metabolism.bench import _data
from regimes.metabolism.config import GraphModelConfig
from regimes.metabolism.fast import FlatAdam, tanh_
from regimes.metabolism.model import KineticsModel, StoichiometryModel
from tests._metabolism_tiny import TINY_CYCLES, TINY_RANDOM

F64 = dict(rtol=1e-9, atol=1e-12)


@pytest.fixture(params=["amd", "other"])
def cpu_kernels(request, monkeypatch):
    """Both branches of fast.py's CPU-vendor rule (AMD: tanh as 2 sigmoid(2z) - 1 and oneDNN's float32 linear;
    other CPUs: torch.tanh and MKL's addmm), whatever this machine's vendor: the twins must hold under each."""
    import regimes.metabolism.fast as fast

    amd = request.param == "amd"
    monkeypatch.setattr(fast, "SIGMOID_TANH", amd)
    monkeypatch.setattr(fast, "ONEDNN", amd and fast.ONEDNN_WORKS)
    return request.param


def _twins(cls, gm: dict, data, freeze: bool, dtype=torch.float64):
    """(fast, reference): the same initialisation, one on each code path."""
    torch.manual_seed(0)
    fast = cls(GraphModelConfig.model_validate({"hidden_dim": 16, "msg_dim": 8, **gm}), data, freeze).to(dtype)
    with torch.no_grad():  # non-zero node output (it starts at zero) and a spread of log k
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref = copy.deepcopy(fast)
    ref.fast = False
    assert fast.fast_ok() and not ref.fast_ok()
    return fast, ref


def _grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.autograd.grad(loss, params, allow_unused=True)


def _compare(fast, ref, loss_fn, **tol):
    lf, lr = loss_fn(fast), loss_fn(ref)
    torch.testing.assert_close(lf, lr, **tol)
    names = [n for n, p in fast.named_parameters() if p.requires_grad]
    for name, gf, gr in zip(names, _grads(fast, lf), _grads(ref, lr)):
        assert (gf is None) == (gr is None), name
        if gr is not None:
            torch.testing.assert_close(gf, gr, **tol, msg=lambda m: f"{name}: {m}")


def _batch(data, dtype=torch.float64, B=5):
    idx = torch.tensor([3, 17, 40, 41, 90][:B])
    return data.conc[idx].to(dtype), data.deriv[idx].to(dtype)


def _recurrent(c, T=3, dt=0.1):
    def loss(m):
        x = c
        for _ in range(T):
            x = (x + dt * m(x)).clamp_min(0.0)
        return (x ** 2).mean()
    return loss


@pytest.mark.parametrize("sim, use_node, form", [(TINY_CYCLES, True, "softplus"), (TINY_RANDOM, False, "softplus"),
                                                  (TINY_RANDOM, True, "softplus"), (TINY_CYCLES, True, "c_softplus"),
                                                  (TINY_RANDOM, False, "c_softplus")])
@pytest.mark.usefixtures("cpu_kernels")
def test_kinetics_loss_grads_and_penalty_rows_match(sim, use_node, form):
    data = _data(sim, True, "cpu")
    fast, ref = _twins(KineticsModel, {"model": "kinetics", "use_mlp_node": use_node, "mlp_sub_form": form}, data, True)
    c, y = _batch(data)
    sub_c = torch.linspace(0.0, 9.0, 7, dtype=torch.float64)
    sub_s = torch.tensor([1.0, 2.0, 1.0, 1.0, 2.0, 1.0, 1.0], dtype=torch.float64)

    def loss(m):
        d, f = m.forward_and_sub(c, sub_c, sub_s)
        return ((d - y) ** 2).mean() + (f[1:] - f[:-1]).relu().mean() + (f[-1] - 1.0) ** 2 + m.log_k.mean() ** 2

    _compare(fast, ref, loss, **F64)
    _compare(fast, ref, lambda m: ((m.reaction(c) - y) ** 2).sum(), **F64)
    _compare(fast, ref, _recurrent(c), **F64)  # gradients through c (recurrent training)


@pytest.mark.usefixtures("cpu_kernels")
def test_kinetics_phase2_only_node_trains_through_the_rollout():
    data = _data(TINY_CYCLES, True, "cpu")
    fast, ref = _twins(KineticsModel, {"model": "kinetics"}, data, True)
    for m in (fast, ref):
        for name, p in m.named_parameters():
            p.requires_grad_(name.startswith(("mlp_node.", "a")))
    _compare(fast, ref, _recurrent(_batch(data)[0], T=4), **F64)


@pytest.mark.usefixtures("cpu_kernels")
def test_kinetics_float32_within_float_tolerance():
    data = _data(TINY_CYCLES, True, "cpu")
    fast, ref = _twins(KineticsModel, {"model": "kinetics"}, data, True, dtype=torch.float32)
    c, y = _batch(data, torch.float32)
    _compare(fast, ref, lambda m: ((m(c) - y) ** 2).mean(), rtol=2e-4, atol=1e-6)


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("variant, freeze", [("tied", False), ("untied", False), ("tied", True)])
def test_stoichiometry_loss_and_grads_match(variant, freeze):
    data = _data(TINY_RANDOM, freeze, "cpu")
    fast, ref = _twins(StoichiometryModel, {"model": "stoichiometry", "variant": variant,
                                            "init_S": "balanced"}, data, freeze)
    c, y = _batch(data)
    _compare(fast, ref, lambda m: ((m(c) - y) ** 2).mean() + m.log_k.mean() ** 2, **F64)
    _compare(fast, ref, _recurrent(c, dt=1.0), **F64)


def test_fallbacks_keep_the_reference_path():
    data = _data(TINY_CYCLES, False, "cpu")
    m = KineticsModel(GraphModelConfig.model_validate({"model": "kinetics", "hidden_dim": 8}), data, False)
    assert not m.fast_ok()  # learned S: not covered by fast.py
    m2 = KineticsModel(GraphModelConfig.model_validate({"model": "kinetics", "hidden_dim": 8}), _data(TINY_CYCLES, True, "cpu"), True)
    m2.mlp_sub[1] = torch.nn.ReLU()  # an edited activation
    assert not m2.fast_ok()


def test_tanh_is_in_place_and_torch_s_tanh_within_rounding(cpu_kernels):
    """fast.tanh_ writes into its argument (no allocation per hidden layer) and is the reference's activation,
    torch.tanh: exactly on other CPUs, within rounding on AMD ones (2 sigmoid(2z) - 1: MKL's tanh is ~5x slower
    there); which form runs is fast.SIGMOID_TANH, fixed by the CPU's vendor."""
    import regimes.metabolism.fast as fast

    assert fast.SIGMOID_TANH == (cpu_kernels == "amd")
    for dtype, atol in ((torch.float32, 3e-7), (torch.float64, 1e-15)):
        z = torch.linspace(-30, 30, 10_001, dtype=dtype)
        want = torch.tanh(z)
        out = tanh_(z)
        assert out is z
        if cpu_kernels == "amd":
            torch.testing.assert_close(out, want, rtol=0, atol=atol)
        else:
            assert torch.equal(out, want)
        assert bool((out.abs() <= 1).all()) and torch.equal(tanh_(torch.zeros(3, dtype=dtype)), torch.zeros(3, dtype=dtype))


def test_cpu_vendor_rule_is_fixed_by_proc_cpuinfo():
    """The kernel choice is the vendor's, read once: this machine's /proc/cpuinfo decides it, no timing."""
    import regimes.metabolism.fast as fast

    vendor = fast.cpu_vendor()
    assert fast.AMD_CPU == (vendor == "AuthenticAMD") and fast.SIGMOID_TANH == fast.AMD_CPU
    assert fast.ONEDNN == (fast.AMD_CPU and fast.ONEDNN_WORKS)


def test_flat_adam_matches_torch_adam_with_a_changing_lr():
    torch.manual_seed(0)
    a = [torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64)), torch.nn.Parameter(torch.randn(5, dtype=torch.float64)),
         torch.nn.Parameter(torch.randn(2, dtype=torch.float64))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    groups = lambda ps: [{"name": "x", "params": ps[:2], "lr": 1e-2}, {"name": "y", "params": ps[2:], "lr": 3e-3}]
    ours, theirs = FlatAdam(groups(a)), torch.optim.Adam(groups(b))
    for step in range(6):
        for opt, ps in ((ours, a), (theirs, b)):
            for g in opt.param_groups:
                g["lr"] *= 0.9  # a schedule
            if step == 2:
                opt.param_groups[1]["eps"] = 1e-3  # a code edit (rate_constants' log-k-adam-eps)
            opt.zero_grad(set_to_none=True)
            loss = (ps[0].sin().sum() * ps[1].sum()) + (ps[2] ** 3).sum() + step * ps[1].pow(2).sum()
            loss.backward()
            opt.step()
        for p, q in zip(a, b):
            torch.testing.assert_close(p, q, **F64)
    with pytest.raises(ValueError, match="one betas"):
        FlatAdam([{"params": a[:1], "betas": (0.9, 0.99)}, {"params": a[1:]}])


def test_flat_adam_handles_a_non_contiguous_and_a_missing_grad():
    """The fused kernel reads raw memory: a transposed .grad (a code edit may set one) must give torch's step; a
    parameter that did not reach the loss counts as a zero gradient (its moments decay)."""
    torch.manual_seed(1)
    a = [torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64)), torch.nn.Parameter(torch.randn(2, dtype=torch.float64))]
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    ours, theirs = FlatAdam([{"params": a, "lr": 0.1}]), torch.optim.Adam([{"params": b, "lr": 0.1}])
    g = torch.randn(3, 4, dtype=torch.float64).t()
    a[0].grad, b[0].grad = g, g.contiguous()
    a[1].grad, b[1].grad = None, torch.zeros(2, dtype=torch.float64)
    ours.step()
    theirs.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, **F64)


# ----- training.compile -----

def _tiny_kinetics(dtype=torch.float32):
    data = _data(TINY_CYCLES, True, "cpu")
    torch.manual_seed(0)
    m = KineticsModel(GraphModelConfig.model_validate({"model": "kinetics", "hidden_dim": 8}), data, True)
    return m, data


def test_compile_unavailable_or_failing_runs_eager(monkeypatch):
    import regimes.metabolism.fast as fast

    m, data = _tiny_kinetics()
    c = data.conc[:3]
    want = m(c)
    lines: list[str] = []
    monkeypatch.setattr("shutil.which", lambda name: None)
    active, restore = fast.compile_model(m, "default", log=lines.append)
    assert not active and "no C++ compiler" in lines[-1] and "forward" not in m.__dict__
    monkeypatch.undo()

    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("inductor: cannot find cl.exe\nmore")
        return run
    monkeypatch.setattr(torch, "compile", broken)
    active, restore = fast.compile_model(m, "reduce-overhead", log=lines.append)
    assert active and isinstance(m.__dict__["forward"], fast._Compiled)
    torch.testing.assert_close(m(c), want)  # the failed compile fell back to the eager forward
    assert "compiling failed (RuntimeError: inductor: cannot find cl.exe)" in lines[-1]
    torch.testing.assert_close(m(c), want)
    restore()
    assert "forward" not in m.__dict__ and "forward_and_sub" not in m.__dict__


def test_training_compile_key_wires_the_compiled_forward(monkeypatch):
    """training.compile: the phase-1 loop calls the compiled forward_and_sub, marks each step, and gets the
    eager methods back for the predictions. torch.compile is faked (a real compile takes minutes here)."""
    from regimes.metabolism import train
    from regimes.metabolism.config import parse_config
    from regimes.runtime import ProgressWriter
    from tests._metabolism_tiny import kinetics_cfg

    calls, marks = [], []

    def fake_compile(fn, mode=None, dynamic=None):
        def run(*a, **k):
            calls.append((fn.__name__, mode))
            return fn(*a, **k)
        return run
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: marks.append(1))
    monkeypatch.setattr("regimes.metabolism.fast.compile_unavailable", lambda device: None)
    cfg = parse_config(kinetics_cfg(compile="reduce-overhead", coeff_MLP_sub_diff=1.0))
    data = _data(TINY_CYCLES, True, "cpu")
    torch.manual_seed(0)
    model = KineticsModel(cfg.graph_model, data, True)
    hist = train.train_phase1(model, data, cfg, ProgressWriter(None, 0))
    assert hist["steps"] > 0 and len(calls) == hist["steps"] and len(marks) == hist["steps"]
    assert {c for c in calls} == {("forward_and_sub", "reduce-overhead")}
    assert "forward" not in model.__dict__ and "forward_and_sub" not in model.__dict__
    assert parse_config(kinetics_cfg()).training.compile == "off"


@pytest.mark.slow
def test_real_compile_matches_eager():
    """torch.compile (inductor, C++ on CPU: minutes on a loaded machine) of the fast path: same loss and grads."""
    import regimes.metabolism.fast as fast

    if fast.compile_unavailable("cpu"):
        pytest.skip("no C++ compiler")
    kin, data = _tiny_kinetics()
    sdata = _data(TINY_RANDOM, False, "cpu")
    torch.manual_seed(0)
    sto = StoichiometryModel(GraphModelConfig.model_validate({"model": "stoichiometry", "hidden_dim": 8,
                                                               "msg_dim": 4, "init_S": "balanced"}), sdata, False)
    for m, d in ((kin, data), (sto, sdata)):
        ref = copy.deepcopy(m)
        c, y = d.conc[:4], d.deriv[:4]
        lines: list[str] = []
        active, restore = fast.compile_model(m, "default", log=lines.append)
        assert active
        _compare(m, ref, lambda mm: ((mm(c) - y) ** 2).mean(), rtol=1e-4, atol=1e-6)
        wrapper = m.__dict__["forward"]
        assert wrapper.fn is not wrapper.eager and not lines, lines  # it compiled (no eager fallback)
        restore()


def test_whole_step_fast_and_reference_follow_the_same_path():
    """bench.make_step (train_phase1's step: penalties, FlatAdam vs torch's Adam): the same losses over steps."""
    from regimes.metabolism import bench
    from regimes.metabolism.config import parse_config
    from tests._metabolism_tiny import kinetics_cfg, stoich_cfg

    for cfg_dict, freeze, sim in ((kinetics_cfg(coeff_MLP_sub_diff=3.0, coeff_MLP_sub_zero=1.0, coeff_k_prior=2e-4),
                                   True, TINY_CYCLES), (stoich_cfg(), False, TINY_RANDOM)):
        cfg = parse_config(cfg_dict)
        data = _data(sim, freeze, "cpu")
        fast, ref = bench.make_step(cfg, data=data), bench.make_step(cfg, data=data, reference=True)
        lf = torch.stack([fast() for _ in range(5)])
        lr = torch.stack([ref() for _ in range(5)])
        torch.testing.assert_close(lf, lr, rtol=1e-4, atol=1e-7)


def test_throughput_ab_alternates_both_steps():
    import benchmarks.throughput as tp

    calls = {"a": 0, "b": 0}
    r = tp.measure_ab(lambda: calls.__setitem__("a", calls["a"] + 1),
                      lambda: calls.__setitem__("b", calls["b"] + 1), 0.05, "cpu", rounds=3)
    assert calls["a"] >= 3 + 3 and calls["b"] >= 3 + 3  # warm-up and at least one per chunk each
    assert r["n_a"] > 0 and r["n_b"] > 0 and r["ratio"] > 0


def test_step_log_fetches_in_chunks_and_reports_divergence_at_its_step(monkeypatch):
    from regimes import runtime
    from regimes.metabolism.train import History, StepLog

    seen = []

    class Progress:
        base = 0

        def __call__(self, step, loss, force=False):
            seen.append((step, loss))

    losses, reguls = History(4), History(4)
    log = StepLog(losses, reguls, Progress(), every=3, every_s=1e9)
    for step in range(1, 6):
        log.add(torch.tensor(float(step)), torch.tensor(0.5), step)
    assert len(losses) == 3 and seen == [(3, 3.0)]  # one fetch after 3 steps, none per step
    log.flush()
    assert losses.values().tolist() == [1.0, 2.0, 3.0, 4.0, 5.0] and reguls.values().tolist() == [0.5] * 5
    assert seen[-1] == (5, 5.0)

    slow = StepLog(History(4), History(4), Progress(), every=100, every_s=0.0)  # slow steps: fetched by time
    slow.add(torch.tensor(1.0), torch.tensor(0.0), 1)
    assert seen[-1] == (1, 1.0)

    bad = StepLog(History(4), History(4), Progress(), every=10, every_s=1e9)
    for step, v in ((1, 1.0), (2, float("nan")), (3, 1.0)):
        bad.add(torch.tensor(v), torch.tensor(0.0), step)
    with pytest.raises(runtime.EntryError, match="at step 2"):
        bad.flush()


def test_shipped_reference_source_is_the_one_fast_py_mirrors():
    """fast.REFERENCE_SOURCE names the shipped code: else every model silently trains on the slow path."""
    from regimes.metabolism.fast import REFERENCE_SOURCE, source_sha
    from regimes.metabolism.model import reference_source_sha
    from regimes.metabolism.train import LOSS_CODE

    now = {cls.__name__: reference_source_sha(cls) for cls in (StoichiometryModel, KineticsModel)}
    now["train"] = source_sha(LOSS_CODE)  # the train.py loss code fast.ExplicitStep mirrors
    assert now == REFERENCE_SOURCE, (
        "a method or train.py function fast.py mirrors changed: make fast.py compute the same maths (the twin tests here "
        "check it; for train_phase1 / phase1_regularisers / sub_penalties / S_shape_prior that is fast.ExplicitStep, the same loss and every "
        f"regulariser's gradient, with a twin test of any new term), then set fast.REFERENCE_SOURCE = {now}")


_EDIT_CHECK = r"""
import sys
sys.path[:0] = [{ws!r}, {root!r}]
import torch
import regimes.metabolism.model as M
assert M.__file__.startswith({ws!r}), M.__file__
from regimes.metabolism.bench import _data
from regimes.metabolism.config import GraphModelConfig
from tests._metabolism_tiny import TINY_RANDOM
data = _data(TINY_RANDOM, True, "cpu")
torch.manual_seed(0)
m = M.KineticsModel(GraphModelConfig.model_validate({{"model": "kinetics", "hidden_dim": 16, "msg_dim": 8}}), data, True).double()
c = data.conc[:4].double()
fast_on = m.fast_ok()
line = M.fast_path_line(m)
edited = m(c)
m.fast = False
print(fast_on, line is not None, torch.allclose(edited, m(c), rtol=1e-12, atol=0))
with torch.no_grad():
    f = m.f_sub(c[:, m.pair_met], m.pair_s)
print(bool(torch.allclose(f, 2.0 * torch.nn.functional.softplus(
    m.mlp_sub(torch.stack(torch.broadcast_tensors(c[:, m.pair_met], m.pair_s), -1)).squeeze(-1)))))
"""


def test_an_agent_edit_to_mirrored_code_takes_effect(tmp_path):
    """model.py is agent-editable: an edit to f_sub in a checkout must change what trains (fast path off)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    ws = tmp_path / "checkout"
    shutil.copytree(root / "regimes", ws / "regimes", ignore=shutil.ignore_patterns("__pycache__"))
    model_py = ws / "regimes" / "metabolism" / "model.py"
    src = model_py.read_text()
    old = "f = F.softplus(self.mlp_sub(torch.stack((c, s), dim=-1)).squeeze(-1))"
    assert src.count(old) == 1
    model_py.write_text(src.replace(old, "f = 2.0 * " + old[len("f = "):]))
    out = subprocess.run([sys.executable, "-c", _EDIT_CHECK.format(ws=str(ws), root=str(root))],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.split("\n")[:2]
    # fast path off, the log line said so, forward is the (edited) reference; and the edit is what runs
    assert first == "False True True" and second == "True"


@pytest.mark.parametrize("coeffs", [dict(coeff_MLP_sub_diff=3.0, coeff_k_prior=2e-4), dict(coeff_MLP_sub_diff=2.0),
                                    dict(coeff_MLP_sub_zero=1.0),
                                    dict(coeff_MLP_sub_diff=1.0, coeff_MLP_sub_norm=0.5, coeff_MLP_sub_zero=0.7,
                                         coeff_k_prior=0.3)])
def test_sub_penalties_one_node_matches_the_reference_terms(coeffs):
    """train.sub_penalties on the fast path (fast.SubPenaltyFn, hand-written backward) against its autograd
    terms (model.fast False): the value and the gradients at MLP_sub's rows and at log k."""
    from types import SimpleNamespace

    from regimes.metabolism.train import SubPenaltyInputs, sub_penalties

    data = _data(TINY_CYCLES, True, "cpu")
    fast, ref = _twins(KineticsModel, {"model": "kinetics"}, data, True)
    inp = SubPenaltyInputs(fast, data)
    inp.c, inp.s = inp.c.double(), inp.s.double()
    t = SimpleNamespace(**{**{k: 0.0 for k in ("coeff_MLP_sub_diff", "coeff_MLP_sub_norm", "coeff_MLP_sub_zero",
                                               "coeff_k_prior")}, **coeffs})
    c = _batch(data)[0]

    def loss(m):
        d, f = m.forward_and_sub(c, inp.c, inp.s)
        return (d ** 2).mean() + sub_penalties(m, t, inp, -1.5, f=f)

    _compare(fast, ref, loss, **F64)
    with torch.no_grad():  # the diff term active: some grid steps decrease
        f = ref.f_sub(inp.c, inp.s)
        grid = f[: inp.n_s * inp.n_c].view(inp.n_s, inp.n_c)
        assert bool((grid[:, :-1] > grid[:, 1:]).any())


def _twins_with_mlps(cls, gm: dict, data, freeze: bool, **sizes):
    """Fast and reference twins whose MLPs (attribute name -> layer sizes) are replaced by equal fresh stacks."""
    from regimes.metabolism.model import mlp

    fast, ref = _twins(cls, gm, data, freeze)
    torch.manual_seed(3)
    for name, layers in sizes.items():
        setattr(fast, name, mlp(layers).double())
        setattr(ref, name, copy.deepcopy(getattr(fast, name)))
    assert fast.fast_ok() and not ref.fast_ok()
    return fast, ref


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("sub, node", [([2, 8, 1], [3, 8, 1]), ([2, 8, 8, 8, 1], [3, 1]), ([2, 1], [3, 8, 8, 8, 1])])
def test_kinetics_other_mlp_depths_match(sub, node):
    """MLPs of other depths (a code edit such as rate_constants' mlp-sub-capacity-half, or an LLM's): the fast
    path's generic layers (layer 0 by the caller, the output bias of MLP_node riding on S v) still give the
    reference's losses and gradients, through c too."""
    data = _data(TINY_CYCLES, True, "cpu")
    fast, ref = _twins_with_mlps(KineticsModel, {"model": "kinetics", "mlp_sub_form": "c_softplus"}, data, True,
                                 mlp_sub=sub, mlp_node=node)
    c, y = _batch(data)
    sub_c = torch.linspace(0.0, 9.0, 7, dtype=torch.float64)
    sub_s = torch.ones(7, dtype=torch.float64)

    def loss(m):
        d, f = m.forward_and_sub(c, sub_c, sub_s)
        return ((d - y) ** 2).mean() + (f ** 2).mean()

    _compare(fast, ref, loss, **F64)
    _compare(fast, ref, _recurrent(c), **F64)


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("msg, rate", [([2, 8, 8, 4], [4, 8, 8, 1]), ([2, 8, 4], [4, 1])])
def test_stoichiometry_other_mlp_depths_match(msg, rate):
    data = _data(TINY_RANDOM, False, "cpu")
    fast, ref = _twins_with_mlps(StoichiometryModel, {"model": "stoichiometry", "init_S": "balanced"}, data, False,
                                 msg_mlp=msg, rate_mlp=rate)
    c, y = _batch(data)
    _compare(fast, ref, lambda m: ((m(c) - y) ** 2).mean(), **F64)
    _compare(fast, ref, _recurrent(c, dt=1.0), **F64)


# ----- fast.ExplicitStep: train_phase1's step without the autograd engine -----

def _autograd_phase1_loss(m, t, c, y, coeff_L1, sub_inputs, k_center, s_prior, ynorm2):
    """train_phase1's loss (derivative regression) on the autograd path, with train_phase1's own regularisers."""
    from regimes.metabolism.train import phase1_regularisers

    if sub_inputs is not None:
        d, f = m.forward_and_sub(c, sub_inputs.c, sub_inputs.s)
    else:
        d, f = m(c), None
    pred_loss = ((d - y) ** 2).mean() / ynorm2
    regul = phase1_regularisers(m, t, c, coeff_L1, k_center, s_prior if t.coeff_S_prior else None, sub_inputs, f)
    return pred_loss, regul


def _check_explicit(fast, ref, tcfg: dict, data, coeff_L1=0.0, zero_column=False):
    from regimes.metabolism.config import TrainingConfig
    from regimes.metabolism.fast import ExplicitStep
    from regimes.metabolism.model import data_free_S
    from regimes.metabolism.train import SubPenaltyInputs

    t = TrainingConfig.model_validate({"freeze_stoichiometry": fast.freeze_S, **tcfg})
    if zero_column:  # a column of S at 0: S_shape_prior's clamp (no gradient through it there)
        for m in (fast, ref):
            with torch.no_grad():
                m.sto_all[m.rxn_all == 0] = 0.0
    sub = None
    if fast.kind == "kinetics" and any(tcfg.get(k) for k in ("coeff_MLP_sub_diff", "coeff_MLP_sub_norm",
                                                              "coeff_MLP_sub_zero", "coeff_k_prior")):
        sub = SubPenaltyInputs(fast, data)
        sub.c, sub.s = sub.c.double(), sub.s.double()
    s_prior = data_free_S("balanced", data).double() if t.coeff_S_prior else None
    c, y = _batch(data)
    ynorm2, k_center = 0.37, -1.3
    step = ExplicitStep(fast, None, t, ynorm2, k_center, sub, s_prior)
    pl, rg, grads = step.grads(c, y, coeff_L1)
    pl_ref, rg_ref = _autograd_phase1_loss(ref, t, c, y, coeff_L1, sub, k_center, s_prior, ynorm2)
    torch.testing.assert_close(pl, pl_ref.detach(), **F64)
    torch.testing.assert_close(rg, rg_ref.detach(), **F64)
    ref_params = dict(ref.named_parameters())
    names = {id(p): n for n, p in fast.named_parameters()}
    trained = [n for n, p in ref.named_parameters() if p.requires_grad]
    want = dict(zip(trained, torch.autograd.grad(pl_ref + rg_ref, [ref_params[n] for n in trained], allow_unused=True)))
    got = {names[id(p)]: g for p, g in grads if id(p) in names}
    assert set(got) == set(want)
    for n in want:
        assert (got[n] is None) == (want[n] is None), n
        if want[n] is not None:
            torch.testing.assert_close(got[n], want[n], **F64, msg=lambda msg: f"{n}: {msg}")


_KIN_TERMS = [{}, dict(coeff_MLP_sub_diff=3.0, coeff_k_prior=2e-4),
              dict(coeff_MLP_sub_diff=1.0, coeff_MLP_sub_norm=0.5, coeff_MLP_sub_zero=0.7, coeff_k_prior=0.3,
                   coeff_k_center=1.0)]


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("terms", _KIN_TERMS)
@pytest.mark.parametrize("use_node, form", [(True, "c_softplus"), (False, "softplus"), (True, "softplus")])
def test_explicit_step_kinetics_matches_autograd(terms, use_node, form):
    data = _data(TINY_CYCLES, True, "cpu")
    fast, ref = _twins(KineticsModel, {"model": "kinetics", "use_mlp_node": use_node, "mlp_sub_form": form}, data, True)
    _check_explicit(fast, ref, terms, data)


_STO_TERMS = [({}, 0.0, False), (dict(coeff_mass_conservation=1.0), 0.0, False),
              (dict(coeff_mass_conservation=1.0, coeff_S_prior=0.003), 0.0, False),
              (dict(coeff_S_L2=0.2, coeff_S_integer=0.1, coeff_mass_conservation=0.5, coeff_S_prior=0.5,
                    coeff_k_center=2.0), 0.3, False),
              (dict(coeff_S_prior=0.5, coeff_S_L1=0.1), 0.1, True)]


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("terms, coeff_L1, zero_column", _STO_TERMS)
@pytest.mark.parametrize("variant", ["tied", "untied"])
def test_explicit_step_stoichiometry_matches_autograd(terms, coeff_L1, zero_column, variant):
    data = _data(TINY_RANDOM, False, "cpu")
    fast, ref = _twins(StoichiometryModel, {"model": "stoichiometry", "variant": variant, "init_S": "balanced"},
                       data, False)
    _check_explicit(fast, ref, terms, data, coeff_L1, zero_column)


def test_explicit_step_stoichiometry_frozen_S_matches_autograd():
    data = _data(TINY_RANDOM, True, "cpu")
    fast, ref = _twins(StoichiometryModel, {"model": "stoichiometry"}, data, True)
    _check_explicit(fast, ref, dict(coeff_k_center=1.0), data)


@pytest.mark.parametrize("which", ["kinetics", "stoichiometry"])
def test_train_phase1_explicit_step_trains_as_the_autograd_step(which, monkeypatch):
    """train_phase1 with fast.ExplicitStep (the default where it covers the config) and with the autograd step:
    the same loss and regulariser histories and the same final parameters, within float32 rounding."""
    from regimes.metabolism import train
    from regimes.metabolism.config import parse_config
    from regimes.metabolism.model import build_model
    from regimes.runtime import ProgressWriter
    from tests._metabolism_tiny import kinetics_cfg, stoich_cfg

    if which == "kinetics":
        cfg = parse_config(kinetics_cfg(coeff_MLP_sub_diff=3.0, coeff_k_prior=2e-4, lr_schedule="cosine"))
        data = _data(TINY_CYCLES, True, "cpu")
    else:
        cfg = parse_config(stoich_cfg("untied", coeff_mass_conservation=1.0, coeff_S_prior=0.003, coeff_S_L1=0.01,
                                      first_coeff_L1=0.1, n_epochs=2, n_epochs_init=1))
        data = _data(TINY_RANDOM, False, "cpu")
    calls = []
    real_step = train.ExplicitStep.step
    monkeypatch.setattr(train.ExplicitStep, "step", lambda self, *a: calls.append(1) or real_step(self, *a))
    runs = []
    for explicit in (True, False):
        if not explicit:
            monkeypatch.setattr(train, "explicit_step_unavailable", lambda *a: "off for the test")
        torch.manual_seed(cfg.training.seed)
        model = build_model(cfg.graph_model, data, cfg.training.freeze_stoichiometry)
        hist = train.train_phase1(model, data, cfg, ProgressWriter(None, 0))
        runs.append((hist, {n: p.detach().clone() for n, p in model.named_parameters()}))
    (h1, p1), (h2, p2) = runs
    assert len(calls) == h1["steps"] == h2["steps"] > 0  # the first run took the explicit step every step
    torch.testing.assert_close(h1["loss"], h2["loss"], rtol=1e-4, atol=1e-8)
    torch.testing.assert_close(h1["regul"], h2["regul"], rtol=1e-4, atol=1e-8)
    for n in p1:
        torch.testing.assert_close(p1[n], p2[n], rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_explicit_step_only_where_covered(monkeypatch):
    """An edited train.py loss (its source differs from the shipped one), recurrent training, compile, a
    non-fast model, coeff_MLP_node_L1: train_phase1 keeps the autograd step."""
    from types import SimpleNamespace

    import regimes.metabolism.fast as fast
    from regimes.metabolism.config import parse_config
    from regimes.metabolism import train
    from regimes.metabolism.train import LOSS_CODE, make_optimizer, param_groups
    from tests._metabolism_tiny import kinetics_cfg

    cfg = parse_config(kinetics_cfg(coeff_MLP_sub_diff=3.0))
    data = _data(TINY_CYCLES, True, "cpu")
    m = KineticsModel(cfg.graph_model, data, True)
    opt = make_optimizer(m, param_groups(m, cfg))
    t = cfg.training
    u = fast.explicit_step_unavailable
    assert u(m, opt, t, False, LOSS_CODE) is None
    assert "compile" in u(m, opt, t, True, LOSS_CODE)
    assert "recurrent" in u(m, opt, SimpleNamespace(**{**dict(t), "recurrent_training": True}), False, LOSS_CODE)
    assert "L1" in u(m, opt, SimpleNamespace(**{**dict(t), "coeff_MLP_node_L1": 0.1}), False, LOSS_CODE)
    assert "FlatAdam" in u(m, torch.optim.Adam(m.parameters()), t, False, LOSS_CODE)

    def sub_penalties(model, t, inp, k_center, f=None):  # an agent's edit of the penalties
        return 2.0 * train.sub_penalties(model, t, inp, k_center, f)
    assert "edited" in u(m, opt, t, False, (LOSS_CODE[0], sub_penalties, LOSS_CODE[2]))
    monkeypatch.setitem(fast.REFERENCE_SOURCE, "train", "0" * 64)  # as after an edit of train_phase1
    assert "edited" in u(m, opt, t, False, LOSS_CODE)
    monkeypatch.undo()
    m.fast = False
    assert "reference" in u(m, opt, t, False, LOSS_CODE)


def test_tune_malloc_keeps_a_step_s_tensors_off_fresh_pages():
    """fast.tune_malloc (train.run calls it): a ~1 MB tensor freed and allocated again, as the stoichiometry step's
    B x E_sub x 64 activations are, comes back from the heap -- no page faults per allocation (glibc's default
    hands it to the kernel and faults it in again: ~590 faults per stoichiometry step, measured)."""
    import resource
    import sys

    from regimes.metabolism.fast import tune_malloc

    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert tune_malloc()
    def step():
        x = torch.ones(4200, 64)  # 1.07 MB, touched
        y = x * 2.0
        del x, y

    for _ in range(3):  # the heap grows to what a step uses (first touches)
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(50):
        step()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < 50 * 20, faults  # untuned: ~260 per iteration (2 x 1 MB in 4 KB pages); tuned ~0


def _f32_against_f64(fast64, ref64, loss_fn, data, rtol=2e-4, atol=1e-6):
    """The fast path in float32 (oneDNN's fused linear on CPU, where ONEDNN) against the float64 reference."""
    fast32 = copy.deepcopy(fast64).float()
    assert fast32.fast_ok()
    l32, l64 = loss_fn(fast32, torch.float32), loss_fn(ref64, torch.float64)
    torch.testing.assert_close(l32.double(), l64, rtol=rtol, atol=atol)
    names = [n for n, p in fast32.named_parameters() if p.requires_grad]
    for name, g32, g64 in zip(names, _grads(fast32, l32), _grads(ref64, l64)):
        scale = g64.abs().max().clamp_min(1e-12)  # float32 rounding relative to the gradient's size
        torch.testing.assert_close(g32.double() / scale, g64 / scale, rtol=0, atol=atol * 100,
                                   msg=lambda m: f"{name}: {m}")


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("use_node, form", [(True, "c_softplus"), (False, "softplus")])
def test_kinetics_float32_onednn_path_matches_float64_reference(use_node, form):
    import regimes.metabolism.fast as fast

    data = _data(TINY_CYCLES, True, "cpu")
    f64, r64 = _twins(KineticsModel, {"model": "kinetics", "use_mlp_node": use_node, "mlp_sub_form": form}, data, True)
    c, y = _batch(data)
    sub_c = torch.linspace(0.0, 9.0, 7, dtype=torch.float64)
    sub_s = torch.ones(7, dtype=torch.float64)

    def loss(m, dt):
        d, f = m.forward_and_sub(c.to(dt), sub_c.to(dt), sub_s.to(dt))
        return ((d - y.to(dt)) ** 2).mean() + (f ** 2).mean()

    _f32_against_f64(f64, r64, loss, data)
    _f32_against_f64(f64, r64, lambda m, dt: _recurrent(c.to(dt))(m), data)
    if fast.ONEDNN:  # the float32 layers above went through oneDNN; float64 never does
        x, W, b = torch.randn(50, 16), torch.randn(8, 16), torch.randn(8)
        torch.testing.assert_close(fast.linear(x, W, b, "tanh"), torch.tanh(torch.addmm(b, x, W.t())), rtol=0, atol=1e-6)
        torch.testing.assert_close(fast.linear(x.t().contiguous().t(), W.t().contiguous().t()),
                                   x @ W.t(), rtol=1e-6, atol=1e-5)


@pytest.mark.usefixtures("cpu_kernels")
@pytest.mark.parametrize("variant, freeze", [("tied", False), ("untied", False), ("tied", True)])
def test_stoichiometry_float32_onednn_path_matches_float64_reference(variant, freeze):
    data = _data(TINY_RANDOM, freeze, "cpu")
    f64, r64 = _twins(StoichiometryModel, {"model": "stoichiometry", "variant": variant, "init_S": "balanced"},
                      data, freeze)
    c, y = _batch(data)
    _f32_against_f64(f64, r64, lambda m, dt: ((m(c.to(dt)) - y.to(dt)) ** 2).mean(), data)
    _f32_against_f64(f64, r64, lambda m, dt: _recurrent(c.to(dt), dt=1.0)(m), data)


@pytest.mark.usefixtures("cpu_kernels")
def test_explicit_step_float32_matches_float64_autograd():
    """ExplicitStep in float32 (the training dtype, oneDNN layers) against the float64 autograd step."""
    from regimes.metabolism.config import TrainingConfig
    from regimes.metabolism.fast import ExplicitStep

    data = _data(TINY_RANDOM, False, "cpu")
    f64, r64 = _twins(StoichiometryModel, {"model": "stoichiometry", "variant": "untied", "init_S": "balanced"},
                      data, False)
    f32 = copy.deepcopy(f64).float()
    t = TrainingConfig.model_validate({"coeff_mass_conservation": 1.0})
    c, y = _batch(data)
    pl, rg, grads = ExplicitStep(f32, None, t, 0.5, -1.0).grads(c.float(), y.float())
    pl_ref, rg_ref = _autograd_phase1_loss(r64, t, c, y, 0.0, None, -1.0, None, 0.5)
    torch.testing.assert_close(pl.double(), pl_ref.detach(), rtol=1e-4, atol=1e-7)
    names = {id(p): n for n, p in f32.named_parameters()}
    got = {names[id(p)]: g for p, g in grads}
    ref_params = dict(r64.named_parameters())
    want = dict(zip(got, torch.autograd.grad(pl_ref + rg_ref, [ref_params[n] for n in got])))
    assert set(got) == set(ref_params)
    for n, w in want.items():
        scale = w.abs().max().clamp_min(1e-12)
        torch.testing.assert_close(got[n].double() / scale, w / scale, rtol=0, atol=1e-4, msg=lambda m: f"{n}: {m}")
