"""Thread policy: how many CPU threads torch and the BLAS/OpenMP libraries may use.

The kernels of this library's pipelines are small (batches of a few hundred
points through networks a few dozen units wide): a second thread saves little
on them, and on a machine that is busy with other work, OpenMP threads that
spin-wait for each other turn a two-minute job into twenty. So the command
line and the benchmarks run on one thread unless told otherwise
(``--threads N``); library users call :func:`set_threads` themselves.
"""

import torch

__all__ = ["set_threads", "thread_info"]


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
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"the thread count must be a positive integer, got {n!r}")
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
