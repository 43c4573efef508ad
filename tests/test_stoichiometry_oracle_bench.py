"""benchmarks/stoichiometry_oracle.py: its least-squares ceiling and its proportional-rate groups, on tiny data."""

import numpy as np

from _bench import load_benchmark

oracle = load_benchmark("stoichiometry_oracle")


def tiny_system(rng):
    """4 metabolites, 3 reactions with independent rates over 50 frames; S on a 7-edge support."""
    met_all = np.array([0, 1, 1, 2, 2, 3, 0])
    rxn_all = np.array([0, 0, 1, 1, 2, 2, 2])
    s_true = np.array([-1.0, 1.0, -2.0, 2.0, -1.0, 0.5, 0.5])
    V = 1.0 + 0.2 * rng.standard_normal((50, 3))
    S = np.zeros((4, 3))
    S[met_all, rxn_all] = s_true
    return met_all, rxn_all, s_true, V, V @ S.T


def test_least_squares_on_exact_rates_recovers_S_and_the_ridge_pulls_to_s0():
    met_all, rxn_all, s_true, V, D = tiny_system(np.random.default_rng(0))
    s0 = -np.ones(len(s_true))
    assert np.allclose(oracle.row_least_squares(V, D, met_all, rxn_all, 1e-12, s0), s_true, atol=1e-8)
    strong = oracle.row_least_squares(V, D, met_all, rxn_all, 1e8, s0)
    assert np.allclose(strong, s0, atol=1e-5)


def test_proportional_groups_are_reactions_with_the_same_substrates_and_magnitudes():
    met_sub = np.array([0, 0, 1, 0, 2, 0])
    rxn_sub = np.array([0, 1, 1, 2, 3, 4])
    s_sub = np.array([1.0, 1.0, 2.0, 1.0, 1.0, 2.0])
    # reactions 0 and 2: substrate 0 with |s| 1; 1 has an extra substrate, 4 has |s| 2, 3 another metabolite
    assert oracle.proportional_groups(met_sub, rxn_sub, s_sub, 5) == [[0, 2]]


def test_rate_errors_remove_the_scale_and_see_the_misfit():
    rng = np.random.default_rng(1)
    v = 1.0 + 0.2 * rng.standard_normal((200, 2))
    err, err_var = oracle.rate_errors(3.0 * v, v)  # a rescaled rate is the S-column gauge: no error
    assert np.allclose(err, 0.0, atol=1e-12) and np.allclose(err_var, 0.0, atol=1e-12)
    off = v + 0.01 * rng.standard_normal(v.shape)
    err, err_var = oracle.rate_errors(off, v)
    assert np.all((err > 0.003) & (err < 0.03)) and np.all(err_var > err)  # the variation is the small part
