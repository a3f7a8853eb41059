"""The one training loop of the library: Adam, a resumable cosine schedule, history.

Every model trains through :class:`Trainer`: the manifold-defining network
(epochs over shuffled mini-batches), the energy-based models (one batch drawn
with replacement per step, persistent contrastive divergence or exact maximum
likelihood, optional validation with early stopping) and the pushforward
autoencoder. The loop knows nothing about manifolds or densities: a model
hands it ``loss_fn(batch) -> (loss, terms)``.

Extension points for data-parallel training (e.g. ``torch.distributed``): a
subclass overrides :meth:`Trainer.batch_indices` (shard each epoch's batches
across ranks), :meth:`Trainer.sync_gradients` (all-reduce the gradients after
``backward``), :meth:`Trainer.reduce_terms` (average the reported terms),
:meth:`Trainer.loss_is_finite` (all ranks stop together) and
:attr:`Trainer.is_main` (only one rank reports progress); see
:mod:`implicit_geom.learning.distributed`.
"""

import copy
import math

import torch

from ..exceptions import TrainingDivergedError
from ..progress import Progress

__all__ = ["Trainer", "cosine_lr", "SAMPLING"]

#: How a run draws its batches: ``"shuffle"`` (an epoch is one pass over a
#: random permutation) or ``"replacement"`` (an epoch is one step on a batch
#: drawn with replacement).
SAMPLING = ("shuffle", "replacement")


def cosine_lr(base_lr, epoch, total_epochs, floor=0.01):
    """Learning rate at ``epoch``: cosine decay from ``base_lr`` to ``floor * base_lr``.

    Epochs past ``total_epochs`` (resumed training) stay at the floor.
    """
    frac = min(epoch / max(total_epochs, 1), 1.0)
    return base_lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * frac)))


class Trainer:
    """Adam (AdamW with weight decay) on a parameter list, epoch by epoch.

    Parameters
    ----------
    params : iterable of torch.nn.Parameter
    lr : float
        Initial learning rate.
    total_epochs : int
        Length of the cosine schedule.
    lr_floor : float
        Final learning rate as a fraction of ``lr`` (1 keeps it constant, 0
        decays to zero).
    weight_decay : float
        Decoupled weight decay (torch's ``AdamW``); 0 (the default) is plain
        Adam.
    grad_clip : float, optional
        Largest gradient norm (the norm before clipping is recorded as
        ``grad_norm``); None: no clipping.
    progress : bool
        Report progress (:class:`~implicit_geom.progress.Progress`: a bar on a
        terminal, periodic lines otherwise).
    desc : str
        Label of the progress report.

    Attributes
    ----------
    epoch : int
        Epochs completed so far (the schedule resumes from here).
    history : dict of list of float
        Per-epoch means of every term the loss reports, plus ``loss`` and ``lr``
        (and ``grad_norm`` with clipping).
    validation_history : dict of list
        ``epoch`` (epochs completed when measured) and ``loss`` of every
        validation.
    best_epoch : int or None
        Epochs completed at the best validation loss so far.
    stopped_early : bool
        Whether the last :meth:`run` ended by early stopping.
    """

    def __init__(self, params, lr=1e-2, total_epochs=100, lr_floor=0.01, weight_decay=0.0,
                 grad_clip=None, progress=True, desc="training"):
        self.params = list(params)
        if not self.params:
            raise ValueError("the trainer needs at least one parameter")
        if not 0 <= lr_floor <= 1:
            raise ValueError(f"lr_floor must be in [0, 1], got {lr_floor}")
        if not weight_decay >= 0:  # NaN too
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        # The fused kernel updates all parameters in one call: on the small
        # networks here the per-tensor Python of the default Adam costs more
        # than the arithmetic (a third of a millisecond per step).
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                    for p in self.params)
        if weight_decay > 0:
            self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=weight_decay,
                                               fused=fused or None)
        else:
            self.optimizer = torch.optim.Adam(self.params, lr=lr, fused=fused or None)
        self.lr, self.total_epochs, self.lr_floor = float(lr), int(total_epochs), float(lr_floor)
        self.grad_clip = None if grad_clip is None else float(grad_clip)
        self.progress, self.desc = bool(progress), desc
        self.epoch = 0
        self.history = {}
        self.validation_history = {"epoch": [], "loss": []}
        self.best_epoch = None
        self.stopped_early = False
        self._best_loss = math.inf
        self._best_state = None

    # ------------------------------------------------------------ extension points
    @property
    def is_main(self):
        """Whether this process reports progress (rank 0 of a distributed run)."""
        return True

    def batch_indices(self, n, batch_size, sampling, generator, device):
        """Row indices of the batches of one epoch (a list of index tensors on ``device``).

        ``"shuffle"``: consecutive slices of a random permutation, the last one
        possibly short. ``"replacement"``: one batch of ``min(batch_size, n)``
        rows drawn uniformly with replacement.
        """
        gen_device = generator.device if generator is not None else device
        if sampling == "replacement":
            rows = torch.randint(n, (min(batch_size, n),), generator=generator, device=gen_device)
            return [rows.to(device)]
        perm = torch.randperm(n, generator=generator, device=gen_device).to(device)
        return [perm[start:start + batch_size] for start in range(0, n, batch_size)]

    def loss_is_finite(self, loss):
        """Whether training may go on (a DDP subclass asks every rank, so that all
        stop together)."""
        return bool(torch.isfinite(loss))

    def sync_gradients(self):
        """Called after ``backward`` and before clipping: all-reduce point of a DDP subclass."""

    def reduce_terms(self, terms):
        """The reported terms of a step (averaged over ranks by a DDP subclass)."""
        return terms

    # ------------------------------------------------------------------- loop
    def run(self, loss_fn, data, epochs, batch_size, generator=None, *, sampling="shuffle",
            validation=None, val_every=1, patience=None, min_delta=0.0, restore_best=True):
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
        generator : torch.Generator, optional
            Batch randomness (drawn on its own device, moved to the data's).
        sampling : {"shuffle", "replacement"}
            See :data:`SAMPLING`.
        validation : callable, optional
            ``() -> float``, lower is better (e.g. a held-out negative
            log-likelihood), evaluated after every ``val_every`` epochs and
            after the last one.
        val_every : int
        patience : int, optional
            Stop after this many validations in a row without an improvement
            of more than ``min_delta`` (None: never stop early).
        min_delta : float
        restore_best : bool
            With ``validation``: end with the parameters of the best
            validation (else those of the last step).

        Returns
        -------
        dict
            :attr:`history`.

        Raises
        ------
        TrainingDivergedError
            If the loss becomes NaN or infinite (parameters are left at the last
            finite step).
        """
        if sampling not in SAMPLING:
            raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
        if int(batch_size) < 1 or int(epochs) < 0 or int(val_every) < 1:
            raise ValueError("batch_size and val_every must be >= 1 and epochs >= 0")
        if patience is not None and int(patience) < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        tensors = tuple(data) if isinstance(data, (tuple, list)) else (data,)
        n = tensors[0].shape[0]
        if any(t.shape[0] != n for t in tensors):
            raise ValueError("the tensors of data must share their first dimension")
        if n < 1:
            raise ValueError("no data to train on")
        self.stopped_early = False
        stale = 0
        with Progress(epochs, self.desc, enabled=self.progress and self.is_main) as bar:
            for step in range(int(epochs)):
                self._epoch(loss_fn, tensors, int(batch_size), sampling, generator)
                last = step == int(epochs) - 1
                if validation is not None and (self.epoch % int(val_every) == 0 or last):
                    improved = self._validate(validation, min_delta)
                    stale = 0 if improved else stale + 1
                    if patience is not None and stale >= int(patience):
                        self.stopped_early = True
                bar.update(**{k: self.history[k][-1] for k in ("loss", "lr")},
                           **({"val": self.validation_history["loss"][-1]}
                              if self.validation_history["loss"] else {}))
                if self.stopped_early:
                    break
        if validation is not None and restore_best and self._best_state is not None:
            with torch.no_grad():
                for p, best in zip(self.params, self._best_state):
                    p.copy_(best)
        return self.history

    def _epoch(self, loss_fn, tensors, batch_size, sampling, generator):
        lr = cosine_lr(self.lr, self.epoch, self.total_epochs, self.lr_floor)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        sums, count = {}, 0
        for idx in self.batch_indices(tensors[0].shape[0], batch_size, sampling, generator,
                                      tensors[0].device):
            loss, terms = loss_fn(*(t[idx] for t in tensors))
            if not self.loss_is_finite(loss):
                raise TrainingDivergedError(
                    f"training diverged at epoch {self.epoch}: the loss is "
                    f"{float(loss.detach())}; lower the learning rate or the weights.")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.sync_gradients()
            terms = {"loss": float(loss.detach()), **terms}
            if self.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
                terms["grad_norm"] = float(norm)
            self.optimizer.step()
            for key, value in self.reduce_terms(terms).items():
                sums[key] = sums.get(key, 0.0) + value
            count += 1
        self.epoch += 1
        for key, value in sums.items():
            self.history.setdefault(key, []).append(value / count)
        self.history.setdefault("lr", []).append(lr)

    def _validate(self, validation, min_delta):
        with torch.no_grad():
            loss = float(validation())
        self.validation_history["epoch"].append(self.epoch)
        self.validation_history["loss"].append(loss)
        if not math.isfinite(loss) or loss >= self._best_loss - min_delta:
            return False
        self._best_loss, self.best_epoch = loss, self.epoch
        self._best_state = [p.detach().clone() for p in self.params]
        return True

    # ------------------------------------------------------------ checkpoints
    def state_dict(self):
        """Optimizer state, epoch counter, histories and best validation, for checkpoints."""
        # Deep copy: the optimizer's state dict shares the live moment tensors.
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict()), "epoch": self.epoch,
                "history": {k: list(v) for k, v in self.history.items()},
                "validation_history": {k: list(v) for k, v in self.validation_history.items()},
                "best_epoch": self.best_epoch, "best_loss": self._best_loss}

    def load_state_dict(self, state):
        """Restore what :meth:`state_dict` saved (older states without validation too)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch = int(state["epoch"])
        self.history = {k: [float(x) for x in v] for k, v in state["history"].items()}
        val = state.get("validation_history", {"epoch": [], "loss": []})
        self.validation_history = {"epoch": [int(e) for e in val["epoch"]],
                                   "loss": [float(x) for x in val["loss"]]}
        self.best_epoch = state.get("best_epoch")
        self._best_loss = float(state.get("best_loss", math.inf))
