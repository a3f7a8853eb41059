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


@pytest.fixture
def record_forks(monkeypatch):
    """``record_forks(module)`` makes that module's ``fork_map`` record the
    process id of each part it runs (for real) and returns that list; the test
    is skipped where ``fork_map`` cannot fork."""
    from implicit_geom.threads import can_fork, fork_map

    if not can_fork():
        pytest.skip("fork_map runs serially here")

    def patch(module):
        pids = []

        def recording_fork_map(fn, parts):
            out = fork_map(lambda part: (os.getpid(), fn(part)), parts)
            pids.extend(pid for pid, _ in out)
            return [res for _, res in out]

        monkeypatch.setattr(module, "fork_map", recording_fork_map)
        return pids

    return patch
