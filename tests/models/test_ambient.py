"""Ambient EBM baseline."""

import math

import pytest
import torch

from implicit_geom.models import AmbientEBM, EnergyMLP


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


def test_exact_maximum_likelihood_beats_pcd_on_a_gaussian():
    # method="mle" trains on the exact NLL (grid log Z over the box): on a
    # 2-D Gaussian its held-out NLL is within 0.02 nats of the true one
    # (PCD's test above allows 0.15). Catches a wrong log Z in the loss
    # (e.g. the rule's weights dropped: NLL off by log(cell area)).
    gen = torch.Generator().manual_seed(2)
    X = 0.5 * torch.randn(3000, 2, dtype=torch.float64, generator=gen)
    X_test = 0.5 * torch.randn(3000, 2, dtype=torch.float64, generator=gen)
    model = AmbientEBM(2, hidden=(32, 32), method="mle", n_iter=300, lr=1e-2,
                       batch_size=1000, pad=0.5, seed=0).fit(X, X_test[:500])
    assert model.buffer_ is None  # no chains were run
    assert model.log_partition_error() < 1e-3  # a smooth energy: the grid resolves it
    nll = float(-model.score_samples(X_test[500:]).mean())
    assert nll == pytest.approx(math.log(2 * math.pi * 0.25) + 1, abs=0.02)
    samples = model.sample(500, n_steps=400, step_size=0.2)
    assert samples.std(0).numpy() == pytest.approx([0.5, 0.5], rel=0.2)
    # With no replay buffer chains start from exact draws of the gridded
    # density: without steps they already have its spread (chains from
    # uniform noise in the padded box had std ~1.4 and stayed there for
    # hundreds of steps).
    draws = model.sample(2000, n_steps=0)
    assert draws.std(0).numpy() == pytest.approx([0.5, 0.5], rel=0.08)
    assert draws.mean(0).numpy() == pytest.approx([0.0, 0.0], abs=0.05)


def test_density_is_zero_outside_the_box():
    # The density lives on the box (log Z sums over it, chains are clamped
    # to it): a point outside had a finite log density the model does not
    # have. Catches the box being ignored when scoring.
    X = torch.rand(200, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = AmbientEBM(2, hidden=(8,), method="mle", n_iter=5, pad=0.1).fit(X)
    lo, hi = model.box_
    inside = (lo + hi) / 2
    out = model.score_samples(torch.stack([inside, hi + 0.01, lo - 1.0]))
    assert math.isfinite(float(out[0])) and out[1:].tolist() == [-math.inf, -math.inf]
    assert model.log_prob(hi + 0.01) == -math.inf  # unnormalised too


def test_mle_settings_are_checked():
    with pytest.raises(ValueError, match="method"):
        AmbientEBM(2, method="exact")
    with pytest.raises(ValueError, match="dimension <= 3"):
        AmbientEBM(4, method="mle")
    with pytest.raises(ValueError, match="pad"):
        AmbientEBM(2, pad=float("nan"))


def test_a_sharp_energy_cannot_hide_mass_between_grid_nodes():
    # Exact MLE with a fixed coarse grid let a Fourier energy put its mass
    # between the nodes (log Z off by ~330 nats on a finer grid, held-out
    # NLL ~2300 against 0.43); the training grid is shifted at random each
    # step, an unbiased estimate of Z that no energy can exploit.
    gen = torch.Generator().manual_seed(0)
    X = 0.3 * torch.randn(2000, 2, dtype=torch.float64, generator=gen)
    X_val = 0.3 * torch.randn(500, 2, dtype=torch.float64, generator=gen)
    net = EnergyMLP(2, hidden=(64, 64), fourier=64, max_frequency=16.0, seed=0)
    model = AmbientEBM(2, net, method="mle", quadrature_resolution=16, n_iter=300, lr=1e-2,
                       batch_size=1000, pad=0.5, seed=0).fit(X)
    assert model.log_partition_error() < 0.01
    assert float(-model.score_samples(X_val).mean()) < 1.5
