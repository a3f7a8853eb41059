"""Thread and process policy: CPU threads of torch and the BLAS/OpenMP
libraries, and work split over forked processes.

The kernels of this library's pipelines are small (batches of a few hundred
points through networks a few dozen units wide): a second thread saves little
on them, and on a machine that is busy with other work, OpenMP threads that
spin-wait for each other turn a two-minute job into twenty. So the command
line and the benchmarks run on one thread unless told otherwise
(``--threads N``); library users call :func:`set_threads` themselves.

Work made of independent, Python-heavy parts (the graph searches and per-pair
bookkeeping of distance matrices, the restarts of a learned manifold's fit)
gains more from processes than from threads: :func:`fork_map` runs parts in
forked children, one thread each; ``n_jobs`` arguments (:func:`check_jobs`)
say how many.
"""

import multiprocessing
import os
import pickle
import sys

import torch

from .numerics.validation import check_int

__all__ = ["set_threads", "thread_info", "fork_map", "can_fork", "check_jobs", "resolve_jobs",
           "reuse_freed_memory"]

_MIB = 1 << 20


def set_threads(n=1):
    """Use ``n`` CPU threads in torch and in the BLAS/OpenMP pools of numpy, scipy, POT.

    Parameters
    ----------
    n : int
        Threads, ``>= 1``.

    Returns
    -------
    int
        The torch thread count before the call.

    Raises
    ------
    ValueError
        ``n`` is not a positive integer.
    """
    n = check_int(n, "n", message=f"the thread count must be a positive integer, got {n!r}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:  # numpy/scipy's OpenBLAS and the OpenMP runtimes loaded so far
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - a scikit-learn dependency
        return previous
    threadpool_limits(limits=int(n))
    return previous


def thread_info():
    """``{"torch": n, "blas": [...]}``: the thread counts in effect (for reports)."""
    info = {"torch": torch.get_num_threads()}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return info
    info["pools"] = sorted({f"{p['internal_api']}={p['num_threads']}" for p in threadpool_info()})
    return info


def reuse_freed_memory(mmap_threshold=512 * _MIB, trim_threshold=1024 * _MIB,
                       top_pad=64 * _MIB):
    """Make glibc's malloc keep freed memory for reuse instead of returning it.

    The batched tensor programs here (path straightening, Newton solves over
    thousands of points) allocate and free blocks of a few to tens of MB at
    every step. With glibc's defaults each such block is mapped afresh and its
    pages are faulted in and zeroed by the kernel on first touch. Raising the
    mmap and trim thresholds keeps those blocks in the heap. Measured on the
    learned glycine torus (``benchmarks/geometry.py``, one process): a 60-
    residue distance matrix took 14-15 s instead of 16-19 s (three runs
    each), with 0.3 s of system time instead of 3-4 s; at 200 residues the
    page faults fell from 3.6 to 0.3 million, but the time changed by less
    than the run-to-run spread of a shared machine (108 s against 124 s on
    one seed, no difference on another). A process-wide setting, so
    the command line and the benchmarks call it and library code never does;
    it takes effect for later allocations and may keep up to
    ``trim_threshold`` of freed memory resident after a peak.

    Parameters
    ----------
    mmap_threshold, trim_threshold, top_pad : int
        Bytes, for ``mallopt``'s ``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``
        and ``M_TOP_PAD``.

    Returns
    -------
    bool
        Whether the settings were applied (False where the C library is not
        glibc).

    Raises
    ------
    ValueError
        A value that is not a positive integer, or one glibc refuses.
    """
    # (name, malloc.h's M_* code, value)
    settings = (("mmap_threshold", -3, mmap_threshold), ("trim_threshold", -1, trim_threshold),
                ("top_pad", -2, top_pad))
    for name, _, v in settings:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v < 2 ** 31:
            # (mallopt takes a C int: a larger value would wrap around.)
            raise ValueError(f"{name} must be a positive integer below 2**31 (bytes), "
                             f"got {v!r}")
    libc = _glibc()
    if libc is None:
        return False
    for name, code, v in settings:
        if libc.mallopt(code, v) != 1:
            raise ValueError(f"glibc refused {name}={v} (mallopt)")
    return True


def _glibc():
    """The glibc C library, or None on other platforms and C libraries."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):  # musl and others have no gnu_get_libc_version
        return None
    return libc


def can_fork():
    """Whether :func:`fork_map` can use child processes here: Linux (fork is
    unsafe with macOS frameworks and absent on Windows) and CUDA not
    initialised (a forked child cannot use the parent's CUDA context)."""
    return (sys.platform.startswith("linux")
            and "fork" in multiprocessing.get_all_start_methods()
            and not torch.cuda.is_initialized())


def _child(fn, part, conn):
    """Body of a forked worker: one thread, run ``fn(part)``, send the outcome."""
    try:
        set_threads(1)
        outcome = ("ok", fn(part))
    except BaseException as exc:  # sent to the parent, which re-raises it
        try:  # an exception that does not survive pickling goes as its text
            pickle.loads(pickle.dumps(exc))
        except Exception:
            exc = RuntimeError(f"in a fork_map worker: {type(exc).__name__}: {exc}")
        outcome = ("error", exc)
    # Plain pickle, not the connection's own: torch registers shared-memory
    # reductions there whose storage dies with this child.
    try:
        payload = pickle.dumps(outcome)
    except Exception as exc:  # an unpicklable result
        payload = pickle.dumps(("error", RuntimeError(
            f"a fork_map worker's result could not be sent back: {exc!r}")))
    try:
        conn.send_bytes(payload)
    finally:
        conn.close()


def check_jobs(n_jobs):
    """``n_jobs`` as an int, checked: a positive process count or -1 (every CPU).

    Raises
    ------
    ValueError
        Anything else (booleans, floats, 0, -2, ...).
    """
    n_jobs = check_int(n_jobs, "n_jobs", minimum=-1,
                       message=f"n_jobs must be a positive integer or -1, got {n_jobs!r}")
    if n_jobs == 0:
        raise ValueError("n_jobs must be a positive integer or -1, got 0")
    return n_jobs


def resolve_jobs(n_jobs):
    """The processes ``n_jobs`` asks for (checked; -1: the CPUs this process may run on)."""
    n_jobs = check_jobs(n_jobs)
    if n_jobs > 0:
        return n_jobs
    try:  # the CPUs this process may use (a container or taskset may allow fewer)
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def fork_map(fn, parts):
    """``[fn(part) for part in parts]`` with ``parts[1:]`` in forked child processes.

    The first part runs in this process, the others each in a child forked
    from it, so ``fn`` and its data (graphs, tables, networks, closures) are
    inherited, not pickled; only the results travel back (pickled through a
    pipe). Children use one thread each (see :func:`set_threads`). Where
    :func:`can_fork` is false the parts run here one after another, with the
    same results. Fork's usual caveat applies: only the calling thread is
    copied, so call it where no other thread of this process holds a lock
    that ``fn`` needs (idle kernel and tqdm threads are fine).

    Parameters
    ----------
    fn : callable
        ``part -> result``; the result must be picklable.
    parts : sequence

    Returns
    -------
    list
        The results, in the order of ``parts``.

    Raises
    ------
    Exception
        An exception raised by a part: this process's own (the children are
        then stopped), else the first child's, re-raised here with its type
        after every child has finished.
    ChildProcessError
        A child died without sending a result (killed, out of memory).
    """
    parts = list(parts)
    if len(parts) <= 1 or not can_fork():
        return [fn(part) for part in parts]
    ctx = multiprocessing.get_context("fork")
    children = []
    try:
        for part in parts[1:]:
            recv, send = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_child, args=(fn, part, send), daemon=True)
            proc.start()
            send.close()  # the child holds the write end; EOF when it exits
            children.append((proc, recv))
        first = fn(parts[0])
    except BaseException:
        # This process's own part failed (or was interrupted): its error is
        # the one reported, and the children's work is moot.
        for proc, recv in children:
            proc.terminate()
            proc.join()
            recv.close()
        raise
    outcomes = [("ok", first)]
    for proc, recv in children:
        try:
            outcome = pickle.loads(recv.recv_bytes())
        except EOFError:  # the child exited without sending
            outcome = None
        finally:
            recv.close()
            proc.join()
        outcomes.append(outcome or ("error", ChildProcessError(
            f"a fork_map worker died without a result (exit code {proc.exitcode})")))
    for kind, value in outcomes:
        if kind == "error":
            raise value
    return [value for _, value in outcomes]
