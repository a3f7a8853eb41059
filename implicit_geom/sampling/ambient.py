"""The one unconstrained Langevin sampler: overdamped dynamics in a box of R^n.

``x <- clamp(x - a grad E(x) + b xi)`` with ``xi ~ N(0, I)``, clamped to the
box ``[low, high]`` (as in the paper's reference code). It serves the ambient
EBM baseline (:class:`~implicit_geom.models.AmbientEBM` and the pushforward
model's latent EBM: ``a = h^2 / 2``, ``b = h``, the constrained samplers' step
convention) and the negatives of manifold learning
(:class:`~implicit_geom.learning.negatives.LangevinNegativeSampler`:
``a = eps``, ``b = sqrt(2 eps T)``). Being unadjusted, its law is biased by the
step; the constrained samplers of this package are the exact ones on M.
"""

import math

import torch

__all__ = ["BoxLangevin"]


class BoxLangevin:
    """Unadjusted Langevin chains clamped to a box.

    Parameters
    ----------
    energy : callable
        ``(B, n) -> (B,)`` or ``(B, k)`` (summed over the last axis for the
        gradient); differentiated with respect to the points only.
    low, high : torch.Tensor, shape (n,)
    drift : float
        ``a``: the gradient step.
    noise : float
        ``b``: the noise scale.
    generator : torch.Generator, optional
        Source of the noise; it draws on its own device and the noise is moved
        to the chains' device.
    grad : callable, optional
        ``x (B, n) -> grad E (B, n)`` without autograd (e.g. from a network's
        graph-free Jacobian); default: autograd through ``energy``.
    """

    def __init__(self, energy, low, high, drift, noise, generator=None, grad=None):
        if not callable(energy):
            raise TypeError("energy must be callable (B, n) -> (B,)")
        if not drift >= 0 or not noise >= 0:
            raise ValueError(f"drift and noise must be >= 0, got {drift}, {noise}")
        self.energy = energy
        self.low, self.high = low, high
        self.drift, self.noise = float(drift), float(noise)
        self.generator = generator
        self.grad = grad

    @classmethod
    def from_step(cls, energy, low, high, step_size, generator=None):
        """The constrained samplers' convention: ``a = h^2 / 2``, ``b = h``."""
        h = float(step_size)
        return cls(energy, low, high, 0.5 * h * h, h, generator)

    @classmethod
    def from_temperature(cls, energy, low, high, eps, temperature, generator=None):
        """``a = eps``, ``b = sqrt(2 eps T)``: Langevin at temperature ``T``."""
        return cls(energy, low, high, eps, math.sqrt(2 * eps * temperature), generator)

    def _gaussian(self, x):
        device = self.generator.device if self.generator is not None else x.device
        return torch.randn(x.shape, generator=self.generator, dtype=x.dtype,
                           device=device).to(x.device)

    def run(self, x, n_steps):
        """Advance the chains ``x`` (B, n) by ``n_steps`` steps; returns new (detached) states."""
        x = x.detach().clone()
        for _ in range(int(n_steps)):
            if self.grad is not None:
                grad = self.grad(x)
            else:
                with torch.enable_grad():
                    xg = x.requires_grad_(True)
                    energy = self.energy(xg)
                    # (a constant energy has no graph: zero gradient)
                    grad = (torch.autograd.grad(energy.sum(), xg)[0] if energy.requires_grad
                            else torch.zeros_like(xg))
            with torch.no_grad():
                x = torch.minimum(torch.maximum(
                    x - self.drift * grad + self.noise * self._gaussian(x), self.low), self.high)
        return x.detach()
