"""Shared test setup."""

import pytest

#: a fixed data secret (regimes.runtime.data_secret): the simulated data, and so every figure a
#: test checks, are the same on every machine and in every fresh cache root
TEST_DATA_SECRET = "00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def _fixed_data_secret(monkeypatch):
    monkeypatch.setenv("GNN_AGENT_DATA_SECRET", TEST_DATA_SECRET)


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """A finished run of the toy regime (tests/fixtures/toy_regime): one batch of 2 slots, nodes 1
    and 2, heuristic policy, real trainings. Read-only: copy it (`toy_ctx`) before writing."""
    from agent.run import start_run
    from tests.loop_helpers import toy_options

    d = tmp_path_factory.mktemp("toy_run") / "run"
    start_run(toy_options(d, iterations=2))
    return d


@pytest.fixture
def toy_ctx(toy_run, tmp_path):
    """A RunCtx over a private copy of `toy_run` (tests/loop_helpers.at: the Step of a node over it)."""
    from tests.loop_helpers import copy_run, open_ctx

    return open_ctx(copy_run(toy_run, tmp_path / "run"))
