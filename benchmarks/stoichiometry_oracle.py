"""Stoichiometry: how well S can be recovered at all from this system's data (issue 13).

dc/dt = S v is linear in S, so with the *true* rates v each metabolite's row of S on its support is a
least-squares problem. This prints the score of that solve (the ceiling of any training that learns
the rates) and how fast it falls when the rates carry a relative error, plus the reactions whose
rates are exactly proportional (same substrates and magnitudes: only sums of their entries at a
shared metabolite are identifiable). With --run DIR (a training's output of this system, as
benchmarks/stoichiometry_quality.py or the runner writes it, with DIR/config.yaml, DIR/inputs and
DIR/run/model.pt) it also prints that model's rate error per third of the reactions by true k, the
figure to compare with the tolerance above.

Uses the truth (regenerated from the cache root's data secret), so it is a developer's benchmark,
never part of a training. One thread, about a minute.

    python benchmarks/stoichiometry_oracle.py [--variant untied|tied] [--profile quick|full]
        [--sim-seed N] [--run DIR]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: relative rate errors tried: independent per frame and reaction, and smooth (a shared function of the state,
#: the kind of error a fitted MLP makes)
NOISE_LEVELS = (1e-4, 1e-3, 1e-2)
#: ridge towards the balanced data-free answer, relative to each metabolite's mean diagonal of V^T V
RIDGES = (1e-6, 1e-4, 1e-2)


def row_least_squares(V: np.ndarray, D: np.ndarray, met_all: np.ndarray, rxn_all: np.ndarray, ridge: float,
                      s0: np.ndarray) -> np.ndarray:
    """S on the support (E_all,): per metabolite i, argmin |V_i s - D_i|^2 + r |s - s0|^2 with
    r = ridge * mean(diag(V_i^T V_i)) (the form of training.S_least_squares, towards s0)."""
    G, B = V.T @ V, V.T @ D
    out = np.zeros(len(met_all))
    for i in range(D.shape[1]):
        e = np.flatnonzero(met_all == i)
        r = rxn_all[e]
        g = G[np.ix_(r, r)]
        lam = ridge * np.trace(g) / len(r)
        out[e] = np.linalg.solve(g + lam * np.eye(len(r)), B[r, i] + lam * s0[e])
    return out


def proportional_groups(met_sub: np.ndarray, rxn_sub: np.ndarray, s_sub: np.ndarray, n_rxn: int) -> list[list[int]]:
    """Reactions with the same substrate multiset (metabolite, |s|): the rate law gives them rates that
    differ only by k, so the data see only k-weighted sums of their columns where they meet."""
    by_key: dict[tuple, list[int]] = defaultdict(list)
    for j in range(n_rxn):
        e = rxn_sub == j
        by_key[tuple(sorted(zip(met_sub[e].tolist(), s_sub[e].tolist())))].append(j)
    return [g for g in by_key.values() if len(g) > 1]


def rate_errors(v_learned: np.ndarray, v_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per reaction: relative error of the rate after its scale (the S-column gauge) is fitted, and the
    same for the rate's variation over time (the part that identifies S)."""
    def rel(a, b):
        alpha = (a * b).sum(0) / np.maximum((a * a).sum(0), 1e-300)
        return np.linalg.norm(alpha * a - b, axis=0) / np.maximum(np.linalg.norm(b, axis=0), 1e-300)
    return rel(v_learned, v_true), rel(v_learned - v_learned.mean(0), v_true - v_true.mean(0))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="untied", choices=["tied", "untied"])
    ap.add_argument("--profile", default="quick", choices=["quick", "full"])
    ap.add_argument("--sim-seed", type=int, help="simulation.seed (default: the config's)")
    ap.add_argument("--run", type=Path, help="a training's output directory of this system: also its rate errors")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    from regimes.metabolism import evaluate
    from regimes.metabolism.config import load_config
    from regimes.metabolism.phase1 import CONFIG_DIR
    from regimes.metabolism.simulator import simulate, stream_seeds
    from regimes.runtime import cache_root

    cfg = load_config(args.run / "config.yaml" if args.run else CONFIG_DIR / f"stoichiometry_{args.variant}_{args.profile}.yaml")
    sim = cfg.simulation if args.sim_seed is None else cfg.simulation.model_copy(update={"seed": args.sim_seed})
    net, gen, conc, deriv = simulate(sim, seeds=stream_seeds(sim, cache_root()))
    with torch.no_grad():
        V = gen.rates(conc[0]).double().numpy()  # (n_frames, n_rxn), run 0 (the training run)
    D = deriv[0].double().numpy()
    met_all, rxn_all, sub_to_all = net.met_all.numpy(), net.rxn_all.numpy(), net.sub_to_all.numpy()
    s_true, log_k = net.s_all.double().numpy(), gen.log_k.numpy()
    balanced = evaluate.mass_balance_answer(len(s_true), sub_to_all, rxn_all, net.n_rxn)
    thirds = np.array_split(np.argsort(log_k, kind="stable"), 3)

    def line(tag: str, s: np.ndarray) -> None:
        m, _ = evaluate.stoichiometry_metrics(s, s_true, rxn_all, sub_to_all, net.n_rxn, log_k)
        print(f"{tag:52s} skill {m['stoichiometry_skill']:7.3f}  slow/mid/fast {m['stoichiometry_skill_slow']:7.3f} "
              f"{m['stoichiometry_skill_mid']:7.3f} {m['stoichiometry_skill_fast']:7.3f}  exact "
              f"{m['stoichiometry_exact_frac']:.3f}", flush=True)

    rel_var = V.std(0) / V.mean(0)
    groups = proportional_groups(net.met_sub.numpy(), net.rxn_sub.numpy(), net.s_sub.numpy(), net.n_rxn)
    print(f"system: {cfg.graph_model.variant} {args.profile}, simulation.seed {sim.seed}; |dc/dt| std "
          f"{D.std():.3g}; each rate varies over run 0 by {np.median(rel_var):.3f} of its mean (median; 10-90% "
          f"{np.quantile(rel_var, .1):.3f}-{np.quantile(rel_var, .9):.3f}); {len(groups)} groups of reactions with "
          f"proportional rates ({sum(map(len, groups))} reactions)")
    line("data-free (balanced)", balanced)
    for ridge in RIDGES:
        line(f"LS on the true rates, ridge {ridge:g}", row_least_squares(V, D, met_all, rxn_all, ridge, balanced))
    g = np.random.default_rng(0)
    state = (conc[0].double().numpy() - conc[0].double().numpy().mean(0)) / conc[0].double().numpy().std()
    smooth = np.tanh(state @ g.standard_normal((net.n_met, 8)) / np.sqrt(net.n_met)) @ g.standard_normal((8, net.n_rxn))
    smooth /= smooth.std()
    for eps in NOISE_LEVELS:
        for kind, err in (("independent", g.standard_normal(V.shape)), ("smooth", smooth)):
            line(f"LS on rates x (1 + {eps:g} {kind} error), ridge 1e-6",
                 row_least_squares(V * (1 + eps * err), D, met_all, rxn_all, 1e-6, balanced))
    if args.run:
        from regimes.metabolism import train
        from regimes.metabolism.data import load_staged
        data, _, _ = load_staged(args.run / "inputs")
        model = train.build_model(cfg.graph_model, data, cfg.training.freeze_stoichiometry)
        model.load_state_dict(torch.load(args.run / "run" / "model.pt", weights_only=True)["state_dict"])
        with torch.no_grad():
            v_learned = model.rates(data.conc).double().numpy()
        err, err_var = rate_errors(v_learned, V)
        for name, idx in zip(("slow", "mid", "fast"), thirds):
            print(f"learned rates, {name:4s} third: relative error {np.median(err[idx]):.2e} (median), of the "
                  f"variation {np.median(err_var[idx]):.2e}")
        s_learned = model.sto_all.detach().double().numpy()
        line("the run's S", s_learned)
        for ridge in (1e-2, *RIDGES[:-1]):  # 1e-2: training.S_least_squares's default
            line(f"LS on the run's rates, ridge {ridge:g} towards its S",
                 row_least_squares(v_learned, D, met_all, rxn_all, ridge, s_learned))
    return 0


if __name__ == "__main__":
    sys.exit(main())
