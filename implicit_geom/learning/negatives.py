"""Negative samples for MDF training: Langevin dynamics on |F| with a replay buffer.

Chains descend the energy ``E(x) = |F(x)|``, so they collect where the current
zero set lies; where that is away from the data, the objective's negative term
lifts F and removes the spurious piece. The buffer makes the chains persistent
(each training step continues a few of them for a few steps) and a small
re-initialisation probability keeps exploring the whole box around the data.
"""

import math

import torch

from ..exceptions import CheckpointError
from ..sampling.ambient import BoxLangevin
from .mdf import constraint_norm


def _norm_gradient(values, norm):
    """Gradient of :func:`constraint_norm` with respect to ``F``, shape ``(B, k)``.

    The same as autograd's: ``F / |F|`` (0 at F = 0) for l2, ``sign F`` for l1,
    ``2 F`` for the squared norm.
    """
    if norm == "l2":
        size = torch.linalg.vector_norm(values, dim=-1, keepdim=True)
        return torch.where(size > 0, values / size, torch.zeros_like(values))
    if norm == "l1":
        return values.sign()
    if norm == "l2_squared":
        return 2.0 * values
    raise ValueError(f"unknown norm {norm!r}")


class LangevinNegativeSampler:
    """Persistent unconstrained Langevin chains on ``|F|`` inside a box.

    Parameters
    ----------
    low, high : torch.Tensor, shape=[n]
        Corners of the box; chains are clamped to it and restarted uniformly in it.
    n_negatives : int
        Chains advanced (and returned) per call.
    buffer_size : int
        Number of persistent chains.
    steps : int
        Langevin steps per call.
    step_size : float
        Gradient step ``eps`` as a fraction of ``scale``.
    temperature : float
        Noise level as a fraction of ``scale``: the update is
        ``x - eps grad E + sqrt(2 eps T) xi``.
    reinit_prob : float
        Probability that a drawn chain restarts from a uniform point of the box.
    scale : float
        Length scale of the data (the step and temperature are relative to it).
    norm : str
        Norm of F defining the energy (see :func:`constraint_norm`).
    generator : torch.Generator
        Source of all randomness (shared with the trainer for reproducibility).
    """

    def __init__(self, low, high, *, n_negatives=128, buffer_size=1000, steps=5,
                 step_size=0.01, temperature=0.01, reinit_prob=0.05, scale=1.0,
                 norm="l2", generator=None):
        if n_negatives < 1 or buffer_size < n_negatives or steps < 0:
            raise ValueError(
                f"need 1 <= n_negatives <= buffer_size and steps >= 0, got "
                f"n_negatives={n_negatives}, buffer_size={buffer_size}, steps={steps}")
        if not 0.0 <= reinit_prob <= 1.0:
            raise ValueError(f"reinit_prob must be in [0, 1], got {reinit_prob}")
        self.low, self.high = low, high
        self.n_negatives, self.buffer_size, self.steps = n_negatives, buffer_size, steps
        self.scale = scale
        self.eps = step_size * scale
        self.noise = math.sqrt(2 * self.eps * temperature * scale)
        self.reinit_prob = reinit_prob
        self.norm = norm
        self.generator = generator
        self.buffer = self.uniform(buffer_size)

    def uniform(self, count):
        """``count`` uniform points of the box, shape ``(count, n)``."""
        u = torch.rand(count, self.low.shape[-1], dtype=self.low.dtype,
                       device=self.low.device, generator=self.generator)
        return self.low + (self.high - self.low) * u

    def sample(self, f, value_and_jacobian=None):
        """Advance ``n_negatives`` buffer chains and return their new states.

        Parameters
        ----------
        f : callable, (B, n) -> (B, k)
        value_and_jacobian : callable, optional
            ``x (B, n) -> (F (B, k), J (B, k, n))`` without autograd (e.g. a
            manifold's graph-free hook): the energy gradient ``J^T dN/dF`` is
            then formed from it, several times cheaper than a backward pass on
            these small batches. Default: autograd through ``f``.

        Returns
        -------
        torch.Tensor, shape=[n_negatives, n]
            Detached negatives (also written back to the buffer).
        """
        idx = torch.randperm(self.buffer_size, device=self.low.device,
                             generator=self.generator)[: self.n_negatives]
        x = self.buffer[idx]
        restart = torch.rand(self.n_negatives, dtype=x.dtype, device=x.device,
                             generator=self.generator) < self.reinit_prob
        x = torch.where(restart[:, None], self.uniform(self.n_negatives), x)
        energy = lambda y: constraint_norm(f(y), self.norm)  # noqa: E731
        grad = None
        if value_and_jacobian is not None:
            def grad(y):
                value, jac = value_and_jacobian(y)
                if value.shape[-1] == 1 and self.norm != "l2_squared":
                    # One constraint: d|F|/dF = sign F for both norms (two ops).
                    return jac[:, 0, :] * value.sign()
                return (jac * _norm_gradient(value, self.norm).unsqueeze(-1)).sum(-2)
        chains = BoxLangevin(energy, self.low, self.high, self.eps, self.noise, self.generator,
                             grad=grad)
        x = chains.run(x, self.steps)
        self.buffer[idx] = x
        return x

    def state_dict(self):
        """Buffer contents, for checkpoints."""
        return {"buffer": self.buffer.clone()}

    def load_state_dict(self, state):
        """Restore the buffer saved by :meth:`state_dict`."""
        buffer = state.get("buffer") if isinstance(state, dict) else None
        if not torch.is_tensor(buffer) or buffer.shape != self.buffer.shape:
            raise CheckpointError(
                "negative-sample buffer in the checkpoint is missing or has shape "
                f"{None if buffer is None else tuple(buffer.shape)}; expected "
                f"{tuple(self.buffer.shape)}.")
        self.buffer = buffer.to(self.buffer)
