"""Why phase 2 fails at long rollouts (issue 12): the quick homeostasis dataset's chaos, per rollout length T.

    python benchmarks/rollout_chaos.py        (one core, ~2 min; writes /tmp/rollout_chaos.json)

Loads the quick homeostasis dataset, the default phase-1 checkpoint and the truth; measures per T:
- the end-state error of the phase-1 reactions alone (node = 0) and with the TRUE homeostasis term added,
  against the data, and the homeostasis term's own effect on the end state;
- the loss L(alpha) with node = alpha * true homeostasis term (is its minimum at alpha = 1?);
- the gradient dL/dalpha and its batch-to-batch spread (signal to noise);
- perturbation growth over T steps (largest singular value of d x_T / d x_0, power iteration with jvp/vjp);
- stiffness dt * max |eig| of the reaction Jacobian; clamp hits.
"""
import json
import sys

import torch
import yaml

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from regimes.metabolism.config import parse_config
from regimes.metabolism.data import load_or_generate
from regimes.metabolism.evaluate import load_truth
from regimes.metabolism.model import build_model
from regimes.metabolism.phase1 import CONFIG_DIR, default_phase1_config, ensure_phase1_checkpoint

torch.set_num_threads(1)
base = yaml.safe_load((CONFIG_DIR / "homeostasis_quick.yaml").read_text())
base.pop("claude")
path, m1 = ensure_phase1_checkpoint(base["simulation"], default_phase1_config("quick"), log=lambda *a: None)
cfg = parse_config(base)
data, truth_path = load_or_generate(cfg.simulation, given_stoichiometry=True, log=lambda *a: None)
truth = load_truth(truth_path)
torch.manual_seed(0)
model = build_model(cfg.graph_model, data, True)
model.load_state_dict(torch.load(path, weights_only=True)["state_dict"])
model.fast = True
for p in model.parameters():
    p.requires_grad_(False)
lam = truth["lambda"][truth["types"]].float()
bas = truth["baseline"][truth["types"]].float()
conc = data.conc.float()
dt = data.delta_t
ynorm2 = data.ynorm ** 2
print("phase1", {k: m1.get(k) for k in ("rate_constants_R2_identifiable", "test_R2_short")}, "ynorm", data.ynorm)


def homeo(x):
    return -lam * (x - bas)


def roll(x, T, alpha=0.0, clamp=True, keep=False):
    xs = []
    for _ in range(T):
        x = x + dt * (model.reaction(x) + alpha * homeo(x))
        if clamp:
            x = x.clamp_min(0.0)
        if keep:
            xs.append(x)
    return (x, xs) if keep else x


g = torch.Generator().manual_seed(0)
rows = []
Ts = [1, 4, 8, 16, 32, 64]
for T in Ts:
    idx = torch.randint(0, data.n_frames - T, (512,), generator=g)
    x0, xT = conc[idx], conc[idx + T]
    with torch.no_grad():
        r0 = roll(x0, T, 0.0)
        r1 = roll(x0, T, 1.0)
        norm = (dt * T) ** 2 * ynorm2
        err0 = ((r0 - xT) ** 2).mean().sqrt().item()
        err1 = ((r1 - xT) ** 2).mean().sqrt().item()
        eff = ((r1 - r0) ** 2).mean().sqrt().item()
        alphas = torch.linspace(-1, 3, 41)
        Ls = []
        for a in alphas:
            Ls.append((((roll(x0, T, float(a)) - xT) ** 2).mean() / norm).item())
        Ls = torch.tensor(Ls)
        amin = float(alphas[Ls.argmin()])
        # per batch of 8: dL/dalpha at alpha = 0 and 1 (finite difference), spread over batches
        gr0, gr1 = [], []
        for j in range(0, 512, 8):
            xb, yb = x0[j:j + 8], xT[j:j + 8]
            def L(a):
                return (((roll(xb, T, a) - yb) ** 2).mean() / norm).item()
            h = 1e-2
            gr0.append((L(h) - L(-h)) / (2 * h))
            gr1.append((L(1 + h) - L(1 - h)) / (2 * h))
        gr0, gr1 = torch.tensor(gr0), torch.tensor(gr1)
        # clamp hits along the rollout
        _, xs = roll(x0, T, 1.0, keep=True)
        hits = sum(float((x <= 0).float().mean()) for x in xs) / T
    # perturbation growth: largest singular value of d x_T/d x_0 (power iteration, 10 its, 16 starts)
    xb = x0[:16].clone()
    v = torch.randn_like(xb)
    v = v / v.norm(dim=1, keepdim=True)
    f = lambda x: roll(x, T, 1.0)
    for _ in range(10):
        _, jv = torch.func.jvp(f, (xb,), (v,))
        _, vjp = torch.func.vjp(f, xb)
        (u,) = vjp(jv)
        sig = jv.norm(dim=1)
        v = u / u.norm(dim=1, keepdim=True)
    sig = sig.median().item()
    row = dict(T=T, err_reaction_only=err0, err_with_true_homeo=err1, homeo_effect=eff,
               ratio_err_to_effect=err1 / eff, loss0=float(Ls[alphas.tolist().index(0.0)] if 0.0 in alphas.tolist() else float('nan')),
               alpha_argmin=amin, grad0_mean=gr0.mean().item(), grad0_std=gr0.std().item(),
               grad1_mean=gr1.mean().item(), grad1_std=gr1.std().item(), clamp_hits=hits, growth_sigma_max=sig,
               L_alpha=Ls.tolist())
    rows.append(row)
    print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items() if k != "L_alpha"}), flush=True)

# stiffness: eigenvalues of the reaction Jacobian at 64 frames
eigs = []
for i in torch.linspace(0, data.n_frames - 1, 64).long():
    J = torch.func.jacrev(lambda c: model.reaction(c.unsqueeze(0))[0])(conc[i])
    ev = torch.linalg.eigvals(J.double())
    eigs.append((ev.abs().max().item(), ev.real.max().item(), ev.real.min().item()))
eigs = torch.tensor(eigs)
print("dt*max|eig| median/max", (dt * eigs[:, 0]).median().item(), (dt * eigs[:, 0]).max().item(),
      "dt*max Re", (dt * eigs[:, 1]).median().item(), (dt * eigs[:, 1]).max().item(),
      "dt*min Re", (dt * eigs[:, 2]).median().item())
json.dump({"rows": rows, "alphas": torch.linspace(-1, 3, 41).tolist(), "eigs": eigs.tolist(), "dt": dt},
          open("/tmp/rollout_chaos.json", "w"))
