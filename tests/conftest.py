"""Shared test setup."""

import pytest

#: a fixed data secret (regimes.runtime.data_secret): the simulated data, and so every figure a
#: test checks, are the same on every machine and in every fresh cache root
TEST_DATA_SECRET = "00112233445566778899aabbccddeeff"


@pytest.fixture(autouse=True)
def _fixed_data_secret(monkeypatch):
    monkeypatch.setenv("GNN_AGENT_DATA_SECRET", TEST_DATA_SECRET)
