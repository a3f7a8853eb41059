"""Component counting on analytic zero sets with known topology."""

import pytest
import torch

from implicit_geom import ImplicitManifold, ImplicitSphere
from implicit_geom.learning import count_components

CENTRES = torch.tensor([[-1.8, 0.0], [1.8, 0.0]], dtype=torch.float64)


def two_circles_f(x):
    # Product of the two circle equations: its zero set is their (disjoint) union.
    sq = ((x[..., None, :] - CENTRES) ** 2).sum(-1) - 1.0
    return (sq[..., 0] * sq[..., 1]).unsqueeze(-1)


def two_circles():
    return ImplicitManifold(two_circles_f, 2, 1, bounds=([-3.2, -1.4], [3.2, 1.4]))


def test_two_disjoint_circles_give_two_components():
    report = count_components(two_circles(), n_samples=1500)
    assert report.n_components == 2
    assert report.n_spurious == 0  # no data given: nothing is called spurious
    assert report.n_open == 0
    assert abs(report.sizes[0] - report.sizes[1]) < 0.3 * report.sizes[0]
    on_m = two_circles_f(report.points).abs().squeeze(-1)
    assert float(on_m.max()) < 1e-8


def test_component_far_from_data_is_spurious():
    angles = torch.linspace(0, 6.0, 50, dtype=torch.float64)
    data = torch.stack([angles.cos() - 1.8, angles.sin()], -1)  # left circle only
    report = count_components(two_circles(), data=data, n_samples=1500)
    assert report.n_components == 2 and report.n_spurious == 1


def test_sphere_is_one_component_in_3d():
    sphere = ImplicitSphere(dim=2)
    report = count_components(sphere, n_samples=1500, bounds=([-1.2] * 3, [1.2] * 3))
    assert report.n_components == 1 and report.n_small == 0


def test_needs_a_box():
    # Catches a plain ValueError: a manifold without a box gets the library's
    # ComponentError, an unfitted learned one NotFittedError (its convention).
    from implicit_geom.exceptions import ComponentError, NotFittedError
    from implicit_geom.learning import NeuralImplicitManifold

    with pytest.raises(ComponentError, match="box"):
        count_components(ImplicitManifold(two_circles_f, 2, 1), n_samples=100)
    with pytest.raises(NotFittedError, match="call fit first"):
        count_components(NeuralImplicitManifold(2), n_samples=100)


def test_curve_leaving_the_box_is_open():
    line_and_circle = ImplicitManifold(
        lambda x: (x[..., :1] - 2.5) * (x.square().sum(-1, keepdim=True) - 1.0), 2, 1,
        bounds=([-2.0, -2.0], [3.0, 2.0]))
    report = count_components(line_and_circle, n_samples=1500)
    assert report.n_components == 2 and report.n_open == 1
