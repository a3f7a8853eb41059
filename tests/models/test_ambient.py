"""Ambient EBM baseline."""

import math

import pytest
import torch

from implicit_geom.models import AmbientEBM


def test_ambient_ebm_fits_a_gaussian_and_normalises():
    gen = torch.Generator().manual_seed(1)
    X = 0.5 * torch.randn(2000, 2, dtype=torch.float64, generator=gen) + 1.0
    model = AmbientEBM(2, hidden=(32, 32), n_iter=300, n_mcmc_steps=10, step_size=0.2,
                       buffer_size=500, pad=0.5, seed=0).fit(X)
    samples = model.sample(2000, n_steps=50)
    assert samples.mean(0).numpy() == pytest.approx([1.0, 1.0], abs=0.1)
    assert samples.std(0).numpy() == pytest.approx([0.5, 0.5], rel=0.2)
    # Normalised density: exact Gaussian NLL is log(2 pi 0.25) + 1.
    nll = float(-model.log_prob(X, normalized=True).mean())
    assert nll == pytest.approx(math.log(2 * math.pi * 0.25) + 1, abs=0.15)


def test_ambient_ebm_errors():
    model = AmbientEBM(2, hidden=(4,), n_iter=1)
    with pytest.raises(RuntimeError):
        model.sample(3)
    with pytest.raises(ValueError):
        AmbientEBM(2, n_iter=0)
    with pytest.raises(TypeError):
        AmbientEBM(2, energy_net=lambda x: x.sum(-1))


def test_sample_rejects_empty_and_negative_requests():
    # Catches sample(0) returning an empty array and sample(-1) raising torch's
    # negative-dimension RuntimeError, where every other model raises ValueError.
    X = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = AmbientEBM(2, hidden=(4,), n_iter=1, buffer_size=10).fit(X)
    for n in (0, -1, 2.5):  # 2.5: drew 2 (int() truncated the count)
        with pytest.raises(ValueError, match="n_samples"):
            model.sample(n, n_steps=1)
