"""Ambient EBM baseline and the box-clamped Langevin sampler."""

import math

import pytest
import torch

from implicit_geom.models import AmbientEBM, box_langevin


def test_box_langevin_samples_a_gaussian():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4000, 2, dtype=torch.float64)
    lo, hi = torch.full((2,), -10.0, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64)
    scale = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x = box_langevin(lambda z: 0.5 * (z / scale).square().sum(-1), x0, 300, 0.2, lo, hi, gen)
    assert x.mean(0).abs().max() < 0.05
    # ULA with h = 0.2 is biased by O(h^2) only.
    assert x.std(0).numpy() == pytest.approx(scale.numpy(), rel=0.05)
    clamped = box_langevin(lambda z: -5 * z.sum(-1), x0, 50, 0.5, lo * 0 - 1, hi * 0 + 1, gen)
    assert float(clamped.abs().max()) <= 1.0


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
