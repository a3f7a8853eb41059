"""Mini-batch Adam training loop with a resumable cosine schedule and per-epoch history.

The loop knows nothing about manifolds: a model hands it a ``loss_fn(batch)``
returning ``(loss, terms)``; the same loop can drive later energy-based models.
"""

import copy
import math

import torch
from tqdm.auto import tqdm

from ..exceptions import ImplicitGeomError


def cosine_lr(base_lr, epoch, total_epochs, floor=0.01):
    """Learning rate at ``epoch``: cosine decay from ``base_lr`` to ``floor * base_lr``.

    Epochs past ``total_epochs`` (resumed training) stay at the floor.
    """
    frac = min(epoch / max(total_epochs, 1), 1.0)
    return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac)))


class Trainer:
    """Adam on a parameter list, epoch by epoch over shuffled mini-batches.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter
    lr : float
        Initial learning rate.
    total_epochs : int
        Length of the cosine schedule.
    lr_floor : float
        Final learning rate as a fraction of ``lr``.
    progress : bool
        Show a tqdm bar over epochs.
    desc : str
        Label of the bar.

    Attributes
    ----------
    epoch : int
        Epochs completed so far (the schedule resumes from here).
    history : dict of list of float
        Per-epoch means of every term the loss reports, plus ``loss`` and ``lr``.
    """

    def __init__(self, params, lr=1e-2, total_epochs=100, lr_floor=0.01, progress=True,
                 desc="training"):
        self.params = list(params)
        self.optimizer = torch.optim.Adam(self.params, lr=lr)
        self.lr, self.total_epochs, self.lr_floor = lr, total_epochs, lr_floor
        self.progress, self.desc = progress, desc
        self.epoch = 0
        self.history = {}

    def run(self, loss_fn, data, epochs, batch_size, generator=None):
        """Train for ``epochs`` more epochs.

        Parameters
        ----------
        loss_fn : callable
            ``batch (b, n) -> (loss tensor, dict of float terms)``; with a tuple
            of tensors as ``data``, it gets one batch of each as positional
            arguments.
        data : torch.Tensor, shape=[N, n], or tuple of torch.Tensor
            Tensors of a tuple share their first dimension and are batched
            together (e.g. points and their normals).
        epochs : int
        batch_size : int
            Batches per epoch: ``ceil(N / batch_size)`` (the last one may be short).
        generator : torch.Generator, optional
            Shuffling randomness.

        Returns
        -------
        dict
            :attr:`history`.

        Raises
        ------
        ImplicitGeomError
            If the loss becomes NaN or infinite (parameters are left at the last
            finite step).
        """
        tensors = tuple(data) if isinstance(data, (tuple, list)) else (data,)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("the tensors of data must share their first dimension")
        bar = tqdm(range(epochs), desc=self.desc, disable=not self.progress, leave=False)
        for _ in bar:
            lr = cosine_lr(self.lr, self.epoch, self.total_epochs, self.lr_floor)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            perm = torch.randperm(n, device=tensors[0].device, generator=generator)
            sums, count = {}, 0
            for start in range(0, n, batch_size):
                idx = perm[start:start + batch_size]
                loss, terms = loss_fn(*(t[idx] for t in tensors))
                if not torch.isfinite(loss):
                    raise ImplicitGeomError(
                        f"training diverged at epoch {self.epoch}: the loss is "
                        f"{float(loss.detach())}; lower the learning rate or the weights.")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                terms = {"loss": float(loss.detach()), **terms}
                for key, value in terms.items():
                    sums[key] = sums.get(key, 0.0) + value
                count += 1
            self.epoch += 1
            means = {key: value / count for key, value in sums.items()}
            means["lr"] = lr
            for key, value in means.items():
                self.history.setdefault(key, []).append(value)
            bar.set_postfix(loss=f"{means['loss']:.3g}")
        return self.history

    def state_dict(self):
        """Optimizer state, epoch counter and history, for checkpoints."""
        # Deep copy: the optimizer's state dict shares the live moment tensors.
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "epoch": self.epoch,
                "history": {k: list(v) for k, v in self.history.items()}}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` saved."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
