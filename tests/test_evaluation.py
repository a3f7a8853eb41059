"""The evaluation module: splits, ddof=1, NLL and both W protocols on models with known answers."""

import math

import pytest
import torch

from implicit_geom import ImplicitSphere, union
from implicit_geom.datasets import true_density, two_circles
from implicit_geom.evaluation import (
    OUR_BOXES,
    REFERENCE_PROTOCOL,
    evaluate_model,
    held_out_nll,
    mean_std,
    model_mass,
    random_split,
    w_mass,
    w_reference,
)
from implicit_geom.exceptions import EmptyDataError
from implicit_geom.models import ConstrainedEBM, ManifoldKDE, manifold_quadrature


def test_split_and_summary():
    train, val, test = random_split(1000, seed=3)
    assert (len(train), len(val), len(test)) == (800, 100, 100)
    assert len(set(torch.cat([train, val, test]).tolist())) == 1000
    again = random_split(1000, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(again, (train, val, test)))
    mean, std = mean_std([1.0, 2.0, 3.0])
    assert (mean, std) == (2.0, 1.0)  # ddof = 1, not 0.816
    assert math.isnan(mean_std([4.0])[1])


def test_split_parts_are_never_empty_nor_silently_truncated():
    # Catches a split whose rounding gave val and test one point each and left
    # an empty training part (n=4, fractions 0.2/0.4/0.4), and n or seed
    # silently truncated by int() (10.5 points, seed 1.7: another split).
    with pytest.raises(EmptyDataError, match="no training points"):
        random_split(4, seed=0, fractions=(0.2, 0.4, 0.4))
    with pytest.raises(EmptyDataError, match="at least 3"):
        random_split(2, seed=0)
    for bad in (dict(n=10.5, seed=0), dict(n=10, seed=1.7)):
        with pytest.raises(ValueError, match="must be an integer"):
            random_split(**bad)
    for n in (3, 4, 5, 11):
        parts = random_split(n, seed=1)
        assert min(len(p) for p in parts) >= 1
        assert sorted(torch.cat(parts).tolist()) == list(range(n))


@pytest.fixture(scope="module")
def circles_model():
    circles = union(ImplicitSphere(1, center=[-1.8, 0.0]), ImplicitSphere(1, center=[1.8, 0.0]))
    X = two_circles(2000, seed=0)
    X = torch.cat([X[X[:, 0] < 0][:400], X[X[:, 0] > 0][:600]])  # shares 0.4 / 0.6
    return ConstrainedEBM(circles, hidden=(16,), n_iter=100, lr=1e-2, seed=0).fit(X)


def test_w_sees_the_mass_of_each_component(circles_model):
    # The model puts 0.4 / 0.6 on the circles, the truth 0.5 / 0.5: under both
    # protocols W must exceed that of the same model re-weighted to 0.5 / 0.5
    # (which an evaluation that rescaled pieces to the truth would report).
    # Catches any normalisation of the model by the truth or the data.
    truth_points, truth_density = true_density("two_circles")
    weights = torch.full((truth_points.shape[0],), 2 * math.pi / 4000, dtype=torch.float64)
    ours = OUR_BOXES["two_circles"]
    points, mass = model_mass(circles_model)
    assert float(mass.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(mass[points[:, 0] < 0].sum()) == pytest.approx(400.5 / 1001, abs=1e-6)
    w = w_mass((points, mass), truth_points, truth_density * weights, grid=ours)
    fixed = mass.clone()
    left = points[:, 0] < 0
    fixed[left] *= 0.5 / float(mass[left].sum())
    fixed[~left] *= 0.5 / float(mass[~left].sum())
    w_fixed = w_mass((points, fixed), truth_points, truth_density * weights, grid=ours)
    assert w > w_fixed + 1e-3
    ref = REFERENCE_PROTOCOL["two_circles"]
    assert w_reference(circles_model, truth_points, truth_density, grid=ref) > 1e-3


def test_nll_is_the_models_own(circles_model):
    X = two_circles(500, seed=5)
    assert held_out_nll(circles_model, X) == pytest.approx(circles_model.nll(X), abs=1e-12)
    kde = ManifoldKDE(circles_model.manifold).fit(two_circles(300, seed=1), X)
    assert held_out_nll(kde, X) == pytest.approx(kde.validation_nll_, abs=1e-9)


def test_evaluation_above_three_dimensions():
    # 16-D points on a (principal) 2-plane: no grid can be binned, so W is the
    # exact OT distance between clouds; distances to M come from checked
    # projections. Catches a 29^16-bin grid (memory blow-up) and distances
    # computed from unconverged projections.
    import numpy as np
    import ot

    from implicit_geom.manifolds.neural import NetworkImplicitManifold
    from implicit_geom.manifolds.residual import ResidualMDFNetwork

    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(16, 2, generator=gen, dtype=torch.float64))[0].T
    train = torch.randn(300, 2, generator=gen, dtype=torch.float64) @ basis
    test = torch.randn(50, 2, generator=gen, dtype=torch.float64) @ basis \
        + 0.1 * torch.randn(50, 16, generator=gen, dtype=torch.float64)
    net = ResidualMDFNetwork(16, 14, hidden=(8,), init_gain=0.0).init_from_data(train)
    manifold = NetworkImplicitManifold(net.requires_grad_(False), 16, 14)
    model = ConstrainedEBM(manifold, n_iter=2, n_mcmc_steps=2, buffer_size=64, batch_size=32,
                           step_size=0.1, seed=0).fit(train)
    samples = model.sample(40, n_steps=3)
    metrics = evaluate_model(model, test, samples=samples)
    assert metrics["test_dist_failed"] == 0 and metrics["max_abs_F_samples"] < 1e-9
    # M is the plane: the distance is the norm of the out-of-plane part.
    off = test - test @ basis.T @ basis
    assert metrics["test_dist_median"] == pytest.approx(float(np.median(off.norm(dim=-1))),
                                                        rel=1e-8)
    cost = torch.cdist(samples, test).square().numpy()
    ref = ot.emd2(np.full(40, 1 / 40), np.full(50, 1 / 50), cost) ** 0.5
    assert metrics["W_samples"] == pytest.approx(ref, rel=1e-10)
