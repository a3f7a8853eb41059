"""Shared test set-up: pytorch backend, float64, fixed seeds."""

import os

os.environ.setdefault("GEOMSTATS_BACKEND", "pytorch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import implicit_geom  # noqa: E402,F401  (selects the backend before geomstats)

# One intra-op thread: the tests use small batches (where threads only add
# synchronisation) and single-threaded reductions are bit-reproducible.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
    yield
