"""Sampling tests: a single intra-op thread.

The samplers run many tiny batched kernels; on a loaded 2-core machine torch's
OpenMP threads spin against each other and a step takes 10-100x longer, so the
tests here run with one thread (restored afterwards).
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
