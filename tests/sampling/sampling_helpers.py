"""Targets with known moments and Monte Carlo assertions shared by the sampling tests."""

import math

import torch

from implicit_geom.sampling import EMIT_TOL, monte_carlo_estimate

KAPPA = 5.0
#: E[z] of the von Mises-Fisher distribution on S^2 with mean direction e_z.
VMF_MEAN_Z = 1.0 / math.tanh(KAPPA) - 1.0 / KAPPA


def vmf_energy(x):
    """``E(x) = -kappa * mu . x`` with ``mu = e_z``."""
    return -KAPPA * x[..., 2]


def assert_on_manifold(manifold, samples):
    """Every sample has ``|F| <= EMIT_TOL``, evaluated independently of the sampler."""
    flat = samples.reshape(-1, samples.shape[-1])
    assert torch.isfinite(flat).all()
    residual = manifold.submersion(flat).norm(dim=-1)
    assert float(residual.max()) <= EMIT_TOL


def assert_mean(values, exact, slack=2e-3):
    """``|mean - exact| < 4 se + slack`` with the ESS-based Monte Carlo error."""
    mean, se, ess = monte_carlo_estimate(values)
    assert ess > 500, f"too few effective samples ({ess:.0f}) for a meaningful test"
    assert se < 0.01, f"Monte Carlo error {se:.3g} too large for the test to have power"
    assert abs(mean - exact) < 4 * se + slack, (mean, exact, se)
    return mean, se
