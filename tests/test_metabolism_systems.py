"""Identifiability of a metabolic system (issue 15): shared-substrate and inactive reactions, degenerate flag."""

from types import SimpleNamespace

import numpy as np
import torch

from regimes.metabolism.evaluate import system_identifiability


def _data(conc, met_sub, rxn_sub, n_rxn):
    return SimpleNamespace(conc=torch.tensor(conc, dtype=torch.float32), met_sub=torch.tensor(met_sub),
                           rxn_sub=torch.tensor(rxn_sub), n_rxn=n_rxn)


def test_shared_and_inactive_reactions_and_the_degenerate_flag():
    # 4 metabolites; metabolite 3 is depleted (max 1e-6 against ~1): reactions consuming it carry no flux
    conc = np.abs(np.random.default_rng(0).normal(1.0, 0.3, (50, 4)))
    conc[:, 3] = 1e-6
    # reactions 0 and 1 consume the same substrate set {0 (x1)}; reaction 2 consumes 1 and 3; reaction 3 consumes 2
    data = _data(conc, met_sub=[0, 0, 1, 3, 2], rxn_sub=[0, 1, 2, 2, 3], n_rxn=4)
    truth = {"s_sub": np.array([1.0, 1.0, 1.0, 1.0, 2.0])}
    ident = system_identifiability(data, truth, rank_90=3)
    assert (ident["n_shared_substrate_reactions"], ident["n_inactive_reactions"], ident["system_degenerate"]) == (2, 1, 0)
    conc[:, 0] = 1e-7  # now reactions 0, 1 and 2 are inactive: 3 of 4
    ident = system_identifiability(_data(conc, [0, 0, 1, 3, 2], [0, 1, 2, 2, 3], 4), truth, rank_90=3)
    assert ident["n_inactive_reactions"] == 3 and ident["system_degenerate"] == 1
    assert "3 of 4 reactions inactive" in ident["degenerate_reason"]
    assert system_identifiability(data, truth, rank_90=2)["system_degenerate"] == 1  # a near-constant activity
