"""The one unconstrained Langevin sampler: overdamped dynamics in a box of R^n.

``x <- clamp(x - a grad E(x) + b xi)`` with ``xi ~ N(0, I)``, clamped to the
box ``[low, high]`` (as in the paper's reference code). It serves the ambient
EBM baseline (:class:`~implicit_geom.models.AmbientEBM` and the pushforward
model's latent EBM: ``a = h^2 / 2``, ``b = h``, the constrained samplers' step
convention) and the negatives of manifold learning
(:class:`~implicit_geom.learning.negatives.LangevinNegativeSampler`:
``a = eps``, ``b = sqrt(2 eps T)``). Unadjusted, its law is biased by the
step; with ``adjusted=True`` each move is a Metropolis-Hastings proposal
(MALA; a proposal outside the box is rejected, not clamped), exact for the
density restricted to the box, as the constrained samplers are on M.
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
    adjusted : bool
        Accept or reject each move by Metropolis-Hastings (MALA) instead of
        clamping it; :attr:`acceptance_rate` is that of the last :meth:`run`.
    """

    def __init__(self, energy, low, high, drift, noise, generator=None, grad=None,
                 adjusted=False):
        if not callable(energy):
            raise TypeError("energy must be callable (B, n) -> (B,)")
        if not drift >= 0 or not noise >= 0:
            raise ValueError(f"drift and noise must be >= 0, got {drift}, {noise}")
        self.energy = energy
        self.low, self.high = low, high
        self.drift, self.noise = float(drift), float(noise)
        self.generator = generator
        self.grad = grad
        self.adjusted = bool(adjusted)
        if self.adjusted and not (self.drift > 0 and self.noise > 0):
            raise ValueError("an adjusted (MALA) chain needs drift > 0 and noise > 0")
        self.acceptance_rate = None

    @classmethod
    def from_step(cls, energy, low, high, step_size, generator=None, adjusted=False):
        """The constrained samplers' convention: ``a = h^2 / 2``, ``b = h``."""
        h = float(step_size)
        return cls(energy, low, high, 0.5 * h * h, h, generator, adjusted=adjusted)

    @classmethod
    def from_temperature(cls, energy, low, high, eps, temperature, generator=None):
        """``a = eps``, ``b = sqrt(2 eps T)``: Langevin at temperature ``T``."""
        return cls(energy, low, high, eps, math.sqrt(2 * eps * temperature), generator)

    def _draw(self, draw, shape, x):
        # On the generator's device, then moved to the chains'.
        device = self.generator.device if self.generator is not None else x.device
        return draw(shape, generator=self.generator, dtype=x.dtype, device=device).to(x.device)

    def _gaussian(self, x):
        return self._draw(torch.randn, x.shape, x)

    def _energy_and_grad(self, x):
        """``E(x)`` (B,) and its gradient (B, n); E only where needed (adjusted chains)."""
        if self.grad is not None:
            if not self.adjusted:
                return None, self.grad(x)
            with torch.no_grad():
                energy = self.energy(x)
            return (energy.sum(-1) if energy.ndim > 1 else energy), self.grad(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            energy = self.energy(xg)
            energy = energy.sum(-1) if energy.ndim > 1 else energy
            # (a constant energy has no graph: zero gradient)
            grad = (torch.autograd.grad(energy.sum(), xg)[0] if energy.requires_grad
                    else torch.zeros_like(xg))
        return energy.detach(), grad

    def run(self, x, n_steps):
        """Advance the chains ``x`` (B, n) by ``n_steps`` steps; returns new (detached) states."""
        x = x.detach().clone()
        if not self.adjusted:
            for _ in range(int(n_steps)):
                _, grad = self._energy_and_grad(x)
                with torch.no_grad():
                    x = torch.minimum(torch.maximum(
                        x - self.drift * grad + self.noise * self._gaussian(x), self.low),
                        self.high)
            return x.detach()
        energy, grad = self._energy_and_grad(x)
        accepted = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        var = self.noise ** 2
        for _ in range(int(n_steps)):
            y = x - self.drift * grad + self.noise * self._gaussian(x)
            inside = ((y >= self.low) & (y <= self.high)).all(-1)
            e_y, g_y = self._energy_and_grad(torch.where(inside[:, None], y, x))
            with torch.no_grad():
                # log q(x | y) - log q(y | x) of the Gaussian proposals.
                back = (x - y + self.drift * g_y).square().sum(-1)
                forth = (y - x + self.drift * grad).square().sum(-1)
                log_alpha = energy - e_y + (forth - back) / (2 * var)
                u = self._draw(torch.rand, (x.shape[0],), x)
                take = inside & (u.log() < log_alpha)
                x = torch.where(take[:, None], y, x)
                energy = torch.where(take, e_y, energy)
                grad = torch.where(take[:, None], g_y, grad)
                accepted += take.to(x.dtype)
        self.acceptance_rate = accepted / max(int(n_steps), 1)
        return x.detach()
