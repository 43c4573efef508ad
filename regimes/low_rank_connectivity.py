"""Regime `low_rank_connectivity`: recover a rank-20 synaptic matrix W.

Same package, model and exploration space as `sparse_connectivity` (seed 004,
whose low-rank remarks this regime follows): W = U V / sqrt(rank n), dense but
confined to a rank-20 subspace, so activity has few modes (effective rank ~12)
and many W explain it equally well. L1 does not match this structure.
"""

from __future__ import annotations

from regimes import _builtin as B
from regimes.sparse_connectivity import (SIGNAL_CODE_STRATEGIES, SIGNAL_EDITABLE, SIGNAL_LOG_CONFIG, SIGNAL_LOG_METRICS,
                                         SIGNAL_METRIC_LABELS, SIGNAL_PLOTS, SIGNAL_STRATEGIES, SignalRegime,
                                         signal_mutable)

REGIME = SignalRegime(
    name="low_rank_connectivity",
    title="Neural signal: low-rank connectivity recovery",
    description=("Recover W = U V / sqrt(20 n) (rank 20, no self-connections) of du/dt = -u + 7 W tanh(u) "
                 "from activity with few modes (effective rank ~12): high degeneracy risk. Variants n100 and "
                 "n200. Primary: connectivity_R2; converged > 0.9."),
    variants=["n100", "n200"],
    default_variant="n100",
    package="regimes.signal",
    package_dir=B.SIGNAL_DIR,
    train_entry="regimes.signal.train",
    config_stem="low_rank",
    mutable=signal_mutable(),
    frozen=["simulation.*", "graph_model.*", "training.*"],
    metrics=list(B.SIGNAL_METRICS),
    primary_metric="connectivity_R2",
    log_metrics=SIGNAL_LOG_METRICS,
    metric_labels=SIGNAL_METRIC_LABELS,
    log_config=SIGNAL_LOG_CONFIG,
    editable=SIGNAL_EDITABLE,
    code_edit_when="after_warmup",
    code_warmup_iters=4,
    # proximal L1 pushes entries to zero: it does not match a dense low-rank W
    code_strategies=[c for c in SIGNAL_CODE_STRATEGIES if c.name != "proximal-L1"],
    plots=SIGNAL_PLOTS,
    instructions=B.instructions("low_rank_connectivity"),
    # L1-calibration is the sparse regime's lever; here L1 does not match the structure
    strategies=[s for s in SIGNAL_STRATEGIES if s != "L1-calibration"],
    import_allowlist=B.IMPORT_ALLOWLIST,
    truth_identifiers=list(B.SIGNAL_TRUTH),
)
