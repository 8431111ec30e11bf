"""Shared test fixtures. Tests never touch the network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The real data bundle (``$XALIGN_DATA`` or ``../shared/data``)."""
    from xalign.params import resolve_data_root

    return resolve_data_root(None, REPO)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the models and probes in the tests are tiny,
    and on a 2-core machine OpenMP threads waiting for a descheduled sibling make small ops
    many times slower than one thread. Restored at the end."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
