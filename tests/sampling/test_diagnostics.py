"""Monte Carlo error estimates from chains; SamplerInfo summary."""

import math

import pytest
import torch

from implicit_geom.manifolds import ImplicitSphere
from implicit_geom.sampling import ConstrainedMALA, monte_carlo_estimate


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
