"""Regime `low_rank_connectivity`: recover a rank-20 synaptic matrix W.

Same package, model and exploration space as `sparse_connectivity` (seed 004,
whose low-rank remarks this regime follows): W = U V / sqrt(rank n), dense but
confined to a rank-20 subspace, so activity has few modes (effective rank ~12)
and many W explain it equally well. L1 does not match this structure.
"""

from __future__ import annotations

from regimes import _builtin as B
from regimes.sparse_connectivity import REGIME as SPARSE
from regimes.sparse_connectivity import SIGNAL_CODE_STRATEGIES, SIGNAL_STRATEGIES

# The same package, model, search space, metrics and log form as the sparse
# regime; only what differs is stated here.
REGIME = SPARSE.model_copy(update=dict(
    name="low_rank_connectivity",
    title="Neural signal: low-rank connectivity recovery",
    description=("Recover W = U V / sqrt(20 n) (rank 20, no self-connections) of du/dt = -u + 7 W tanh(u) "
                 "from activity with few modes (effective rank ~12): high degeneracy risk. Variants n100 and "
                 "n200. Primary: connectivity_R2 (identity R2 after the gauge: sign-aware); converged > 0.9."),
    config_stem="low_rank",
    # proximal L1 pushes entries to zero: it does not match a dense low-rank W
    code_strategies=[c for c in SIGNAL_CODE_STRATEGIES if c.name != "proximal-L1"],
    instructions=B.instructions("low_rank_connectivity"),
    # L1-calibration is the sparse regime's lever; here L1 does not match the structure
    strategies=[s for s in SIGNAL_STRATEGIES if s != "L1-calibration"],
), deep=True)
