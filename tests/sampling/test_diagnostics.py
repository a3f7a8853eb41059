"""Effective sample sizes and Monte Carlo error estimates from chains; SamplerInfo summary."""

import math

import numpy as np
import pytest
import torch
from scipy.signal import lfilter

from implicit_geom.manifolds import ImplicitSphere
from implicit_geom.sampling import ConstrainedMALA, effective_sample_size, monte_carlo_estimate
from implicit_geom.sampling.diagnostics import _autocovariance


def test_standard_error_of_iid_draws():
    gen = torch.Generator().manual_seed(0)
    values = torch.randn(400, 50, generator=gen, dtype=torch.float64)
    mean, se, ess = monte_carlo_estimate(values)
    assert ess == pytest.approx(20000, rel=0.15)
    assert se == pytest.approx(1 / math.sqrt(20000), rel=0.1)


def test_standard_error_of_autocorrelated_chains():
    # AR(1) with coefficient a: the variance of the mean is inflated by (1 + a) / (1 - a).
    a, n, m = 0.8, 2000, 40
    gen = torch.Generator().manual_seed(1)
    noise = torch.randn(n, m, generator=gen, dtype=torch.float64)
    x = torch.empty(n, m, dtype=torch.float64)
    x[0] = noise[0] / math.sqrt(1 - a * a)
    for t in range(1, n):
        x[t] = a * x[t - 1] + noise[t]
    mean, se, ess = monte_carlo_estimate(x)
    exact_se = math.sqrt((1 + a) / (1 - a) / (n * m) / (1 - a * a))
    assert se == pytest.approx(exact_se, rel=0.15)
    assert abs(mean) < 4 * exact_se


def test_bad_shape():
    with pytest.raises(ValueError):
        monte_carlo_estimate(torch.zeros(10))


def test_summary_is_plain_and_consistent():
    sphere = ImplicitSphere(2)
    torch.manual_seed(0)
    samples, info = ConstrainedMALA(sphere, None, step_size=0.5, seed=0).sample(
        sphere.random_point(30), n_steps=8)
    s = info.summary()
    assert s["n_chains"] == 30 and s["n_steps"] == 8
    assert s["n_projection_failures"] == int(info.n_projection_failures.sum())
    assert 0 <= s["acceptance_rate"] <= 1
    assert all(isinstance(v, (int, float)) or v is None for v in s.values())


# --------------------------------------------------------------------------
# effective_sample_size
# --------------------------------------------------------------------------


def ar1_chains(rhos, n_steps, n_chains, seed=0):
    """Stationary AR(1) chains x_t = rho x_{t-1} + eps_t, one rho per dimension."""
    rhos = np.asarray(rhos)
    eps = np.random.default_rng(seed).standard_normal((n_steps, n_chains, len(rhos)))
    eps[0] /= np.sqrt(1 - rhos**2)  # start in the stationary distribution
    x = np.stack([lfilter([1.0], [1.0, -r], eps[..., j], axis=0) for j, r in enumerate(rhos)], axis=-1)
    return torch.from_numpy(x)


def test_ess_of_ar1_matches_theory():
    rhos = np.array([0.0, 0.5, 0.9, -0.5])
    n_steps, n_chains = 50000, 4
    ess = effective_sample_size(ar1_chains(rhos, n_steps, n_chains))
    assert ess.shape == (4,) and ess.dtype == torch.float64
    expected = n_steps * n_chains * (1 - rhos) / (1 + rhos)
    np.testing.assert_allclose(ess.numpy(), expected, rtol=0.15)


def test_ess_detects_chains_that_do_not_mix():
    x = ar1_chains([0.0], 2000, 4, seed=1)
    x[:, 1] += 3.0  # one chain stuck in a different mode
    assert effective_sample_size(x)[0] < 0.05 * 2000 * 4


def test_ess_single_chain_and_constant_dimension():
    x = ar1_chains([0.5], 20000, 1, seed=2)
    ess_1d = effective_sample_size(x[:, 0, 0])
    assert ess_1d.shape == (1,)
    assert ess_1d[0].item() == pytest.approx(20000 / 3, rel=0.15)
    with_const = torch.cat([x, torch.ones_like(x)], dim=-1)
    ess = effective_sample_size(with_const)
    # The same chain alone or beside a constant coordinate (batched FFTs may
    # sum in another order: equal to rounding).
    assert ess[0].item() == pytest.approx(ess_1d[0].item(), rel=1e-12)
    assert torch.isnan(ess[1])


def test_ess_validates_shape():
    with pytest.raises(ValueError, match="n_steps, n_chains, d"):
        effective_sample_size(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="at least 4"):
        effective_sample_size(torch.zeros(3, 1, 1))


def test_fft_autocovariance_matches_direct_sum():
    x = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    c = x - x.mean(0)
    direct = torch.stack([(c[: 50 - t] * c[t:]).sum(0) / 50 for t in range(50)])
    assert torch.allclose(_autocovariance(x), direct, atol=1e-13)
