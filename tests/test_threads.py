"""Thread and process policy: fork_map (worker processes) and reuse_freed_memory."""

import os
import sys
import time

import pytest
import torch

from implicit_geom.exceptions import GeodesicError
from implicit_geom.threads import (can_fork, check_jobs, fork_map, resolve_jobs,
                                   reuse_freed_memory)

needs_fork = pytest.mark.skipif(not can_fork(), reason="fork_map runs serially here")


def _pid_and_threads(part):
    return part, os.getpid(), torch.get_num_threads()


@needs_fork
def test_fork_map_runs_parts_in_children_and_keeps_order():
    # Catches parts run in the wrong order, results mixed up, every part run
    # in this process (no parallelism), or children left on several threads.
    out = fork_map(_pid_and_threads, [0, 1, 2])
    assert [o[0] for o in out] == [0, 1, 2]
    pids = [o[1] for o in out]
    assert pids[0] == os.getpid() and len(set(pids)) == 3
    assert all(o[2] == 1 for o in out[1:])


@needs_fork
def test_fork_map_inherits_data_and_returns_tensors():
    # The function and its data reach the children by fork, not pickling (a
    # lambda over a network would not pickle); results come back as tensors
    # with their values. Catches torch's shared-memory pickling, whose
    # storage dies with the child.
    net = torch.nn.Linear(3, 2, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    out = fork_map(lambda k: net(x[k:]).detach()[:, :1], [0, 1, 2])
    for k, got in enumerate(out):
        assert torch.equal(got, net(x[k:]).detach()[:, :1])


def _raise_in_child(part):
    if part == 1:
        raise GeodesicError(f"part {part} failed")
    return part


class _Unpicklable(Exception):
    def __init__(self, a, b):  # pickling calls cls(*args): one arg short
        super().__init__(a)


def _raise_unpicklable(part):
    if part == 1:
        raise _Unpicklable("odd", 2)
    return part


@needs_fork
def test_a_childs_exception_is_reraised_with_its_type():
    # Catches a worker failure swallowed (a silently missing part) or turned
    # into a generic error that callers cannot catch by type.
    with pytest.raises(GeodesicError, match="part 1 failed"):
        fork_map(_raise_in_child, [0, 1])
    with pytest.raises(RuntimeError, match="_Unpicklable: odd"):
        fork_map(_raise_unpicklable, [0, 1])


def _die(part):
    if part == 1:
        os._exit(3)
    return part


@needs_fork
def test_a_dead_child_is_an_error():
    # Catches a hang or a missing result when a child is killed.
    with pytest.raises(ChildProcessError, match="exit code 3"):
        fork_map(_die, [0, 1])


def _slow_or_fail(part):
    if part == 0:
        raise ValueError("this process's part failed")
    time.sleep(60)
    return part


@needs_fork
def test_own_failure_stops_the_children():
    # Catches fork_map waiting for children whose work is moot.
    start = time.perf_counter()
    with pytest.raises(ValueError, match="this process's part"):
        fork_map(_slow_or_fail, [0, 1, 2])
    assert time.perf_counter() - start < 30


def test_without_fork_parts_run_here(monkeypatch):
    # Where fork is unsafe (macOS, Windows, CUDA initialised) the same results
    # come from this process.
    import implicit_geom.threads as threads

    monkeypatch.setattr(threads, "can_fork", lambda: False)
    out = threads.fork_map(_pid_and_threads, [0, 1])
    assert [o[0] for o in out] == [0, 1] and {o[1] for o in out} == {os.getpid()}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_reuse_freed_memory_applies_and_rejects_bad_values():
    # Catches a value wrapped around by mallopt's C int (2**32 would set 0).
    assert reuse_freed_memory() is True
    for bad in (dict(mmap_threshold=0), dict(trim_threshold=2 ** 32), dict(top_pad=1.5),
                dict(mmap_threshold=True)):
        with pytest.raises(ValueError, match="positive integer"):
            reuse_freed_memory(**bad)


def test_jobs_are_checked_and_resolved(monkeypatch):
    # n_jobs is a positive count or -1; -1 means the CPUs this process may use
    # (its affinity mask, which a container or taskset narrows), not the
    # machine's. Catches a -1 resolved to the wrong count and bad values let
    # through (a bool is an int to Python; 0 would run nothing).
    assert check_jobs(3) == 3 and check_jobs(-1) == -1 and resolve_jobs(2) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 5, 7}, raising=False)
    assert resolve_jobs(-1) == 3
    for bad in (0, -2, 1.5, True, "2", None):
        with pytest.raises(ValueError, match="n_jobs"):
            check_jobs(bad)
        with pytest.raises(ValueError, match="n_jobs"):
            resolve_jobs(bad)
