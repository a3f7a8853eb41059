"""Data-parallel training across processes with ``torch.distributed``.

Launch any training script or the CLI with ``torchrun`` (gloo on CPUs, NCCL on
GPUs)::

    torchrun --standalone --nproc_per_node=2 .venv/bin/implicit-geom fit two_circles --out DIR

Every process builds the same model (the weights are broadcast from rank 0 when
training starts); each step, rank 0 draws the global mini-batch and every rank
takes its slice, computes the loss on it, and the gradients are averaged over
ranks before the optimiser step, so that all ranks take identical steps: the
arithmetic of ``DistributedDataParallel``. The module wrapper itself is not
used because the library's losses call the network several times per step
(positives, Jacobians for the rank penalty, negatives; PCD's two energies) and
differentiate through Jacobians, which DDP's once-per-backward gradient hooks
do not support. Markov chains (MDF negatives, PCD replay buffers) are sharded:
each rank advances its own ``1 / world_size`` of them with its own random
stream, and what a model reports per step is averaged over ranks.

Only rank 0 writes files and reports progress; :func:`context` tells a model or
script where it runs (rank 0 of 1 when no process group is initialised, so
single-process code paths are unchanged).
"""

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .trainer import Trainer

__all__ = ["DistContext", "DistributedTrainer", "context", "init_distributed", "launched",
           "make_trainer", "shutdown_distributed"]

#: Per-rank seeds are ``seed + SEED_STRIDE * rank``: far apart, and rank 0 keeps
#: the caller's seed so a one-process run is the plain run.
SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DistContext:
    """Where this process runs: its rank among ``world_size`` processes.

    Attributes
    ----------
    rank : int
    world_size : int
    device : torch.device
        Where collectives run: this rank's GPU under NCCL, the CPU under gloo.
        Tensors are moved there for an exchange and the results moved back.
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def active(self):
        """Whether more than one process trains together."""
        return self.world_size > 1

    @property
    def is_main(self):
        """Whether this is rank 0 (the one that writes files and reports)."""
        return self.rank == 0

    def seed(self, seed):
        """This rank's seed for its own random streams (chains, restarts)."""
        return int(seed) + SEED_STRIDE * self.rank

    def shard_size(self, n):
        """This rank's share of ``n`` items (shares differ by at most one)."""
        n = int(n)
        return n // self.world_size + int(self.rank < n % self.world_size)

    def shard(self, tensor):
        """This rank's contiguous slice of ``tensor`` along dim 0 (as :meth:`shard_size`)."""
        return tensor.tensor_split(self.world_size)[self.rank]

    # --------------------------------------------------------------- collectives
    def all_gather(self, tensor):
        """Concatenate every rank's ``tensor`` along dim 0, in rank order.

        Shapes may differ in dim 0 (they are padded for the exchange); every
        rank gets the whole result. A no-op in a single process.
        """
        if not self.active:
            return tensor
        home = tensor.device
        tensor = tensor.to(self.device).contiguous()
        sizes = [torch.zeros(1, dtype=torch.long, device=self.device)
                 for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([tensor.shape[0]], device=self.device))
        sizes = [int(s) for s in sizes]
        padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
        padded[:tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(home)

    def all_reduce_mean(self, tensor):
        """Mean over ranks of a tensor of the same shape on every rank (new tensor)."""
        if not self.active:
            return tensor
        out = tensor.to(self.device, copy=True)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return (out / self.world_size).to(tensor.device)

    def broadcast(self, tensor, src=0):
        """``tensor`` as held by rank ``src``, on every rank (in place; returned)."""
        if self.active:
            if tensor.device == self.device:
                dist.broadcast(tensor, src)
            else:
                moved = tensor.to(self.device)
                dist.broadcast(moved, src)
                tensor.copy_(moved)
        return tensor

    def barrier(self):
        """Wait until every rank arrives (no-op in a single process)."""
        if self.active:
            dist.barrier()


def context():
    """The :class:`DistContext` of this process (rank 0 of 1 without a process group)."""
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        return DistContext(dist.get_rank(), dist.get_world_size(), device)
    return DistContext()


def launched():
    """Whether this process was started by ``torchrun`` (or another launcher setting
    ``WORLD_SIZE``/``RANK``) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_distributed(device=None, timeout_s=1800):
    """Join the process group described by the launcher's environment.

    Parameters
    ----------
    device : str or torch.device, optional
        ``"cuda"`` selects NCCL and this process's GPU (``cuda:LOCAL_RANK``);
        anything else gloo. Default: CUDA when available.
    timeout_s : float
        Collective timeout.

    Returns
    -------
    ctx : DistContext
    device : torch.device
        The device this rank should train on.

    Raises
    ------
    RuntimeError
        If ``torch.distributed`` is unavailable or the environment names no
        process group (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``).
    """
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this torch build")
    missing = [k for k in ("WORLD_SIZE", "RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(f"no process group to join: {', '.join(missing)} not set "
                           "(launch with torchrun)")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs = {"device_id": device} if backend == "nccl" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **kwargs)
    return context(), device


def shutdown_distributed(wait=True):
    """Leave the process group (no-op when none was joined).

    Parameters
    ----------
    wait : bool
        First wait for every rank (so that nobody tears the group down while
        another rank still talks); False after a failure, when the others may
        never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        gc.collect()  # drop finished work objects (and their tensors) first
        dist.destroy_process_group()


class DistributedTrainer(Trainer):
    """:class:`~implicit_geom.learning.trainer.Trainer` whose steps are averaged over ranks.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter
        Broadcast from rank 0 at construction, so every rank starts alike.
    ctx : DistContext, optional
        Default: :func:`context`.
    **kwargs
        See :class:`Trainer`.

    Notes
    -----
    ``batch_size`` stays the *global* batch: rank 0 draws the batch rows (with
    the generator the model passed, as a single process would) and broadcasts
    them; rank r trains on its slice, so a step averages the same number of
    rows as in one process and the learning rate needs no change. In an
    epoch of shuffled batches, a trailing batch with fewer rows than ranks is
    dropped (every rank needs at least one row).
    """

    def __init__(self, params, ctx=None, **kwargs):
        super().__init__(params, **kwargs)
        self.ctx = context() if ctx is None else ctx
        with torch.no_grad():
            for p in self.params:
                self.ctx.broadcast(p.data)

    @property
    def is_main(self):
        return self.ctx.is_main

    def batch_indices(self, n, batch_size, sampling, generator, device):
        if self.ctx.is_main:
            batches = super().batch_indices(n, batch_size, sampling, generator, device)
            rows = torch.cat(batches)
            sizes = torch.tensor([len(b) for b in batches], dtype=torch.long, device=device)
            count = torch.tensor([len(batches)], dtype=torch.long, device=device)
        else:
            count = torch.zeros(1, dtype=torch.long, device=device)
        self.ctx.broadcast(count)
        if not self.ctx.is_main:
            sizes = torch.zeros(int(count), dtype=torch.long, device=device)
        self.ctx.broadcast(sizes)
        if not self.ctx.is_main:
            rows = torch.zeros(int(sizes.sum()), dtype=torch.long, device=device)
        self.ctx.broadcast(rows)
        out = []
        for batch in rows.split(sizes.tolist()):
            if len(batch) >= self.ctx.world_size:
                out.append(self.ctx.shard(batch))
        return out

    def loss_is_finite(self, loss):
        # Collective: a rank that stopped alone would leave the others waiting.
        ok = torch.tensor([float(torch.isfinite(loss.detach()).all())], dtype=torch.float64)
        return bool(self.ctx.all_reduce_mean(ok) == 1.0)

    def sync_gradients(self):
        # One flat all-reduce (a parameter without a gradient counts as zero,
        # consistently on every rank: all ranks build the same graph).
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.ctx.all_reduce_mean(torch.cat([g.reshape(-1) for g in grads]))
        offset = 0
        for p, g in zip(self.params, grads):
            size = g.numel()
            p.grad = flat[offset:offset + size].view_as(p)
            offset += size

    def reduce_terms(self, terms):
        keys = sorted(terms)
        values = self.ctx.all_reduce_mean(torch.tensor([float(terms[k]) for k in keys],
                                                        dtype=torch.float64))
        return dict(zip(keys, values.tolist()))


def make_trainer(params, **kwargs):
    """A :class:`DistributedTrainer` inside an active process group, else a :class:`Trainer`.

    The one place models build their training loop, so that every model
    trains data-parallel under ``torchrun`` without knowing about it.
    """
    ctx = context()
    if ctx.active:
        return DistributedTrainer(params, ctx=ctx, **kwargs)
    return Trainer(params, **kwargs)
