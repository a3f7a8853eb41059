"""Pushforward EBM baseline: change of volume, fit, sampling, projection."""

import math

import pytest
import torch

from implicit_geom.datasets import von_mises_circle
from implicit_geom.exceptions import InvalidPointError, NotFittedError
from implicit_geom.models import Autoencoder, PushforwardEBM


@pytest.fixture(scope="module")
def fitted():
    X = von_mises_circle(1000, kappa=2.0, seed=0)
    model = PushforwardEBM(2, 1, hidden=(32, 32), ae_iter=600, n_iter=100, n_mcmc_steps=10,
                           step_size=0.3, buffer_size=200, seed=0).fit(X)
    return model, X


def test_half_log_det_matches_autograd_jacobian(fitted):
    model, _ = fitted
    z = torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None]
    expected = []
    for zi in z:
        jac = torch.autograd.functional.jacobian(model.autoencoder.decoder, zi)  # (n, m)
        expected.append(0.5 * torch.logdet(jac.T @ jac))
    assert torch.allclose(model.half_log_det(z), torch.stack(expected), atol=1e-10)


def test_fit_reconstructs_and_samples_near_the_circle(fitted):
    model, X = fitted
    assert model.history_["ae_loss"][-1] < 0.05
    samples = model.sample(500, n_steps=20)
    assert samples.shape == (500, 2)
    # Decoded samples stay near the unit circle (the decoder image approximates it).
    assert float((samples.norm(dim=-1) - 1).abs().median()) < 0.1
    lp = model.log_prob(X[:200])
    assert lp.shape == (200,) and torch.isfinite(lp).all()
    assert math.isfinite(model.nll(X[:200]))


def test_sample_from_given_latent_starts(fitted):
    # Fresh-noise chains (benchmarks/images.py): with zero steps the samples
    # are the decoded starts; with steps they move, stay in the latent box and
    # near the circle. Catches init codes used unstandardised (off the box).
    model, _ = fitted
    low, high = model.latent_box()
    z = low + (high - low) * torch.rand(300, 1, dtype=torch.float64)
    torch.testing.assert_close(model.sample(300, n_steps=0, init=z), model.decode(z))
    moved = model.sample(300, n_steps=30, init=z)
    assert not torch.allclose(moved, model.decode(z))
    assert float((moved.norm(dim=-1) - 1).abs().median()) < 0.1


def test_projection_onto_decoder_image(fitted):
    model, X = fitted
    pts = 1.2 * X[:50]
    proj = model.projection(pts)
    # The projection is no farther than the decoded encoding, and close to radius 1.
    naive = model.decode(model.encode(pts))
    assert bool(((proj - pts).norm(dim=-1) <= (naive - pts).norm(dim=-1) + 1e-9).all())


def test_density_on_manifold_is_the_decoded_lattice(fitted):
    model, X = fitted
    points, log_prob = model.density_on_manifold(resolution=300)
    assert points.shape == (300, 2) and log_prob.shape == (300,)
    lo, hi = model.latent_ebm.box_
    u = torch.linspace(float(lo[0]), float(hi[0]), 300, dtype=torch.float64)[:, None]
    z = u * model.latent_scale_ + model.latent_shift_
    assert torch.allclose(points, model.decode(z))
    # It is the density w.r.t. arc length of the decoded curve: integrated along
    # the lattice with chord lengths, it gives the latent normaliser.
    points, log_prob = model.density_on_manifold()
    chords = (points[1:] - points[:-1]).norm(dim=-1)
    integral = (0.5 * (log_prob[1:].exp() + log_prob[:-1].exp()) * chords).sum()
    log_z = model.latent_ebm.log_partition() + float(model.latent_scale_.log().sum())
    assert float(integral.log()) == pytest.approx(log_z, abs=1e-3)
    # The lattice spans the decoded image, which runs along the data (all but
    # the gap a one-chart model must leave somewhere on a circle).
    assert float(torch.cdist(X, points).amin(1).median()) < 0.05


def test_bad_input():
    with pytest.raises(ValueError):
        Autoencoder(2, 2)
    model = PushforwardEBM(2, 1, hidden=(4,), ae_iter=1, n_iter=1)
    with pytest.raises(InvalidPointError):
        model.fit(torch.full((5, 2), float("inf"), dtype=torch.float64))
    with pytest.raises(InvalidPointError):
        model.fit(torch.zeros(5, 3, dtype=torch.float64))


def test_unfitted_float32_and_empty_requests(fitted):
    # Catches score_samples before fit failing with a TypeError (None latent
    # shift) instead of NotFittedError, float32 points failing in the
    # encoder's float64 matmul (a RuntimeError) instead of being computed in
    # float64, and sample(0) / sample(-1) raising torch errors (an
    # EmptyDataError about "z", a negative-dimension RuntimeError).
    from implicit_geom.exceptions import NotFittedError

    new = PushforwardEBM(2, 1, hidden=(4,), ae_iter=1, n_iter=1)
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(NotFittedError, match="fit first"):
        new.score_samples(points)
    with pytest.raises(NotFittedError, match="fit first"):
        new.sample(3, init=torch.zeros(3, 1, dtype=torch.float64))
    model, _ = fitted
    single = model.score_samples(points.float())
    assert single.dtype == torch.float64
    assert torch.equal(single, model.score_samples(points.float().double()))
    assert model.encode(points.float()).dtype == torch.float64
    for n in (0, -1):
        with pytest.raises(ValueError, match="n_samples"):
            model.sample(n, n_steps=1)


def test_float32_data_is_fitted_in_float64():
    # Catches fit(float32 tensor) failing in the float64 autoencoder with a
    # RuntimeError (mat1 and mat2 must have the same dtype).
    X = torch.randn(30, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    X = X / X.norm(dim=-1, keepdim=True)

    def fit(data):
        with torch.random.fork_rng():
            return PushforwardEBM(2, 1, hidden=(4,), ae_iter=2, n_iter=2,
                                  buffer_size=10).fit(data, data)

    assert torch.equal(fit(X.float()).score_samples(X), fit(X.float().double()).score_samples(X))



def test_lattice_resolution_and_single_latent_are_checked(fitted):
    # Catches latent_lattice(0) / (1) returning an empty or one-point lattice
    # silently and a negative resolution raising torch's RuntimeError, and
    # half_log_det of one latent of shape (m,) failing in a torch expand.
    model, _ = fitted
    for bad in (0, 1, -3, 2.5):
        with pytest.raises(ValueError, match="resolution"):
            model.latent_lattice(bad)
    z = torch.tensor([0.3], dtype=torch.float64)
    assert torch.equal(model.half_log_det(z), model.half_log_det(z[None]))
    with pytest.raises(InvalidPointError):
        model.half_log_det(torch.zeros(3, 2, dtype=torch.float64))


def test_code_outside_the_latent_box_has_zero_density(fitted):
    # A point whose code falls outside the latent box has no mass under the
    # model (its latent density lives on the box): -inf, not a finite score.
    model, X = fitted
    low, high = model.latent_box()
    far = model.decode(high + 2 * (high - low))
    assert float(model.encode(far)) > float(high)  # the encoder sends it outside
    assert model.log_prob(far).tolist() == [-math.inf]
    assert torch.isfinite(model.log_prob(X[:50])).all()


def test_shared_autoencoder_is_not_retrained_and_mixes(fitted):
    # Latent EBMs on one fitted autoencoder share its decoder image, so a
    # mixture of their densities is a density on that image. Catches the
    # shared autoencoder being retrained (its weights would change).
    from implicit_geom.models import DensityMixture

    model, X = fitted
    ae = model.autoencoder
    before = {k: v.clone() for k, v in ae.state_dict().items()}
    exact = PushforwardEBM(2, 1, autoencoder=ae, method="mle", n_iter=100, lr=1e-2,
                           batch_size=500, seed=0).fit(X[:800], X[800:900])
    for k, v in ae.state_dict().items():
        assert torch.equal(v, before[k])
    assert exact.history_["ae_loss"] == []
    mix = DensityMixture([model, exact]).fit(X[800:900])
    lp = mix.score_samples(X[900:])
    assert torch.isfinite(lp).all()
    with pytest.raises(NotFittedError):
        PushforwardEBM(2, 1, autoencoder=Autoencoder(2, 1))
    with pytest.raises(ValueError, match="R\\^2"):
        PushforwardEBM(3, 1, autoencoder=ae)


def test_exact_latent_likelihood_reaches_the_true_density_on_the_circle():
    # With the exact latent likelihood the baseline gets within 0.05 nats of
    # the von Mises density's true NLL on the unit circle (its decoder image
    # is an arc covering all but a gap of the circle's data). Catches a
    # change-of-volume or latent standardisation term dropped from log_prob
    # (each moves the NLL by O(0.1-1) nats).
    X = von_mises_circle(2000, kappa=2.0, seed=1)
    X_test = von_mises_circle(1000, kappa=2.0, seed=2)
    model = PushforwardEBM(2, 1, hidden=(32, 32), ae_iter=1500, method="mle", n_iter=300,
                           lr=1e-2, batch_size=1000, seed=0).fit(X, X_test[:300])
    theta = torch.atan2(X_test[300:, 1], X_test[300:, 0])
    from scipy.special import i0
    true = -(2.0 * torch.cos(theta) - math.log(2 * math.pi * i0(2.0))).mean()
    nll = float(-model.score_samples(X_test[300:])[torch.isfinite(
        model.score_samples(X_test[300:]))].mean())
    assert nll == pytest.approx(float(true), abs=0.05)
