"""Tests for implicit_geom.metrics."""

import math

import numpy as np
import pytest
import torch

from implicit_geom.metrics import (
    DistanceStats,
    discretized_wasserstein,
    distance_to_manifold,
    paper_wasserstein,
)
from implicit_geom.datasets import true_density


def gaussian(n, d=2, seed=0):
    return torch.randn(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------
# discretized_wasserstein
# --------------------------------------------------------------------------


def test_wasserstein_of_identical_sets_is_exactly_zero():
    a = gaussian(3000, 3)
    assert discretized_wasserstein(a, a) == 0.0
    assert discretized_wasserstein(a, a.clone(), bins=7) == 0.0
    dens = torch.rand(3000, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert discretized_wasserstein(a, a, density_a=dens, density_b=dens) == 0.0
    # A permutation gives the same discretised measure up to summation order.
    assert discretized_wasserstein(a, a.flip(0)) < 1e-15


def test_wasserstein_is_monotone_in_shift():
    a = gaussian(2000, seed=0)
    b = gaussian(2000, seed=1)
    shifts = [0.0, 0.2, 0.5, 1.0, 2.0, 4.0]
    direction = torch.tensor([1.0, 0.5], dtype=torch.float64)
    values = [discretized_wasserstein(a, b + s * direction) for s in shifts]
    assert all(isinstance(v, float) for v in values)
    assert all(v2 > v1 for v1, v2 in zip(values, values[1:])), values
    # With fixed bounds and unnormalised cost, W2^2 of a pure shift is ~|shift|^2.
    fixed = [
        discretized_wasserstein(a, a + s * direction, bins=60, bounds=(-8.0, 8.0), normalize_cost=False)
        for s in (0.5, 1.0)
    ]
    for s, v in zip((0.5, 1.0), fixed):
        assert v == pytest.approx(s**2 * direction.square().sum().item(), rel=0.1)


def test_wasserstein_is_symmetric_and_accepts_numpy():
    a = gaussian(500, seed=2)
    b = gaussian(700, seed=3) * 1.5
    assert discretized_wasserstein(a, b) == pytest.approx(discretized_wasserstein(b, a), abs=1e-12)
    assert discretized_wasserstein(a.numpy(), b.numpy()) == pytest.approx(discretized_wasserstein(a, b), abs=1e-15)


def test_wasserstein_hand_computed_counts():
    # Two occupied bins at (0, 0) and (1, 0), so the normalised cost is [[0, 1], [1, 0]].
    a = torch.tensor([[0.0, 0.0]] * 3 + [[1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.0, 0.0]] + [[1.0, 0.0]] * 3, dtype=torch.float64)
    # Weights (3/4, 1/4) vs (1/4, 3/4): half of the mass moves at cost 1.
    assert discretized_wasserstein(a, b, bins=4) == pytest.approx(0.5, abs=1e-14)


def test_wasserstein_hand_computed_densities():
    pts = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    w = discretized_wasserstein(
        pts, pts, bins=4, density_a=torch.tensor([1.0, 3.0]), density_b=torch.tensor([3.0, 1.0])
    )
    assert w == pytest.approx(0.5, abs=1e-14)
    # Bins are weighted by mean density, not total: duplicating the points of a
    # bin must not change its weight.
    dup = torch.cat([pts, pts[:1]])
    w_dup = discretized_wasserstein(
        dup, pts, bins=4, density_a=torch.tensor([1.0, 3.0, 1.0]), density_b=torch.tensor([3.0, 1.0])
    )
    assert w_dup == pytest.approx(0.5, abs=1e-14)


def test_wasserstein_support_points_are_bin_centroids():
    a = gaussian(400, seed=4)
    b = gaussian(300, seed=5) + torch.tensor([0.3, -0.2], dtype=torch.float64)
    # With a single bin each set collapses to its mean.
    expected = (a.mean(0) - b.mean(0)).square().sum().item()
    w = discretized_wasserstein(a, b, bins=1, normalize_cost=False)
    assert w == pytest.approx(expected, rel=1e-12)
    assert discretized_wasserstein(a, b, bins=1) == pytest.approx(1.0, rel=1e-12)


def test_wasserstein_validates_inputs():
    a = gaussian(10)
    with pytest.raises(ValueError, match="dimension mismatch"):
        discretized_wasserstein(a, gaussian(10, d=3))
    with pytest.raises(ValueError, match="non-negative"):
        discretized_wasserstein(a, a, density_a=-torch.ones(10))
    with pytest.raises(ValueError, match="values for"):
        discretized_wasserstein(a, a, density_b=torch.ones(9))
    with pytest.raises(ValueError, match="NaN"):
        discretized_wasserstein(a, torch.full((3, 2), float("nan")))


def test_wasserstein_grid_options_hand_computed():
    # 1-d grid of 4 bins on [0, 4]: centres 0.5 ... 3.5, grid normaliser 3^2.
    a = torch.tensor([[0.2]], dtype=torch.float64)
    far, near = torch.tensor([[3.9]]), torch.tensor([[1.1]])
    kw = dict(bins=4, bounds=(0.0, 4.0), support="centre")
    assert discretized_wasserstein(a, far, cost_scale="grid", **kw) == pytest.approx(1.0)
    assert discretized_wasserstein(a, near, cost_scale="grid", **kw) == pytest.approx(1 / 9)
    # Normalised over the occupied supports only, any single move costs 1.
    assert discretized_wasserstein(a, near, cost_scale="support", **kw) == pytest.approx(1.0)
    # Centroid support: the mass sits at the points themselves.
    assert discretized_wasserstein(a, near, bins=4, bounds=(0.0, 4.0), normalize_cost=False) \
        == pytest.approx(0.9**2)


def test_wasserstein_grid_normaliser_bounds_centroid_support():
    # Catches the grid normaliser taken between the corner cells' centres while
    # centroid support puts the mass anywhere in the cells: points at 0 and 1
    # on a 2-bin grid over [0, 1] gave 4.0, not at most 1 as documented.
    a, b = torch.tensor([[0.0]]), torch.tensor([[1.0]])
    kw = dict(bins=2, bounds=(0.0, 1.0), cost_scale="grid")
    assert discretized_wasserstein(a, b, **kw) == pytest.approx(1.0)
    # The corner centres 0.25 and 0.75 still normalise the paper's centre support.
    assert discretized_wasserstein(a, b, support="centre", **kw) == pytest.approx(1.0)
    near = torch.tensor([[0.5]])
    assert discretized_wasserstein(a, near, **kw) == pytest.approx(0.25)
    # A point outside the bounds widens the box rather than exceed 1.
    assert discretized_wasserstein(torch.tensor([[-1.0]]), b, **kw) == pytest.approx(1.0)
    x, y = gaussian(200, seed=3), gaussian(200, seed=4) + 2.0
    for bin_b in (True, False):
        assert 0 < discretized_wasserstein(x, y, bins=5, bounds=(-1.0, 1.0), cost_scale="grid",
                                           bin_b=bin_b) <= 1.0


def test_wasserstein_unbinned_target_hand_computed():
    # Model mass in the bin centred at 0.5; raw data at 1 and 2 with equal weight.
    # The grid normaliser is the farthest (centre, point) pair: (3.5 - 1)^2.
    model = torch.tensor([[0.2], [0.4]], dtype=torch.float64)
    data = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    w = paper_wasserstein(model, torch.tensor([1.0, 3.0]), data, bins=4, bounds=(0.0, 4.0))
    assert w == pytest.approx((0.25 + 2.25) / 2 / 6.25)
    # Per-point target densities weight the raw points instead.
    w = discretized_wasserstein(model, data, bins=4, bounds=(0.0, 4.0), density_a=None,
                                density_b=torch.tensor([3.0, 1.0]), support="centre",
                                cost_scale="grid", bin_b=False)
    assert w == pytest.approx((0.75 * 0.25 + 0.25 * 2.25) / 6.25)


def test_paper_wasserstein_of_a_density_with_itself_and_shifted():
    box = ((-1.3, -1.3), (1.3, 1.3))
    points, density = true_density("circle")
    assert paper_wasserstein(points, density, points, density, bins=99, bounds=box) == 0.0
    # The model's covering points need not be the target's: a different, denser
    # lattice with the same density is still close to 0.
    theta = torch.atan2(points[:, 1], points[:, 0])
    fine = torch.linspace(-math.pi, math.pi, 10_001, dtype=torch.float64)[:-1]
    fine_pts = torch.stack([fine.cos(), fine.sin()], -1)
    same = paper_wasserstein(fine_pts, (2 * fine.cos()).exp(), points, density, bins=99,
                             bounds=box)
    assert same < 1e-5
    # Rotating the density away from the truth increases W monotonically.
    values = [paper_wasserstein(points, (2 * (theta - delta).cos()).exp(), points, density,
                                bins=99, bounds=box) for delta in (0.1, 0.3, 0.6, 1.2, 2.4)]
    assert values[0] > 10 * same
    assert all(b > a for a, b in zip(values, values[1:])), values
    # Against data drawn from the truth, the true density beats a uniform one.
    data = torch.tensor(np.random.default_rng(0).vonmises(0.0, 2.0, 2000))
    data = torch.stack([data.cos(), data.sin()], -1)
    w_true = paper_wasserstein(points, density, data, bins=99, bounds=box)
    w_uniform = paper_wasserstein(points, torch.ones_like(density), data, bins=99, bounds=box)
    assert w_true < 0.5 * w_uniform


def test_wasserstein_validates_options():
    a = gaussian(10)
    with pytest.raises(ValueError, match="support"):
        discretized_wasserstein(a, a, support="middle")
    with pytest.raises(ValueError, match="cost_scale"):
        discretized_wasserstein(a, a, cost_scale="max")


# --------------------------------------------------------------------------
# distance_to_manifold
# --------------------------------------------------------------------------


class UnitSphere:
    def projection(self, x):
        return x / x.norm(dim=-1, keepdim=True)


def test_distance_to_manifold_on_sphere():
    radii = torch.tensor([0.5, 1.0, 1.5, 3.0], dtype=torch.float64)
    directions = gaussian(4, d=3, seed=6)
    points = radii[:, None] * directions / directions.norm(dim=1, keepdim=True)
    stats = distance_to_manifold(points, UnitSphere())
    assert isinstance(stats, DistanceStats)
    assert torch.allclose(stats.distances, (radii - 1).abs(), atol=1e-15)
    assert stats.as_dict() == pytest.approx({"min": 0.0, "median": 0.5, "mean": 0.75, "max": 2.0}, abs=1e-15)
    assert set(stats.as_dict(include_distances=True)) == {"min", "median", "mean", "max", "distances"}


def test_distance_to_manifold_checks_projection_shape():
    class Bad:
        def projection(self, x):
            return x[:, :2]

    with pytest.raises(ValueError, match="projection returned shape"):
        distance_to_manifold(gaussian(5, d=3), Bad())


def test_distance_to_manifold_refuses_nan_instead_of_nan_statistics():
    # Catches NaN statistics returned without a word: a projection that is NaN
    # where it is undefined (geomstats' Hypersphere at the centre, as UnitSphere
    # here) or NaN input points made min/median/mean/max all NaN.
    from implicit_geom.exceptions import EmptyDataError, InvalidPointError, ProjectionError

    points = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 3.0, 0.0]],
                          dtype=torch.float64)
    with pytest.raises(ProjectionError, match="NaN or inf for 1 of 3 .*index 1") as info:
        distance_to_manifold(points, UnitSphere())
    assert info.value.failed.tolist() == [False, True, False]
    with pytest.raises(InvalidPointError, match="NaN"):
        distance_to_manifold(points.new_tensor([[float("nan"), 1.0, 0.0]]), UnitSphere())
    with pytest.raises(EmptyDataError):
        distance_to_manifold(torch.zeros(0, 3, dtype=torch.float64), UnitSphere())
    with pytest.raises(InvalidPointError, match=r"\(n, d\)"):
        distance_to_manifold(torch.ones(3, dtype=torch.float64), UnitSphere())


def test_distance_to_manifold_exact_on_the_torus():
    # Independent reference: distance to the torus of revolution (R, r) is
    # |sqrt((rho - R)^2 + z^2) - r| with rho the distance to the axis.
    from implicit_geom.manifolds.analytic import ImplicitTorus

    x = gaussian(50, d=3, seed=2) * 0.6 + torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    rho = x[:, :2].norm(dim=1)
    exact = ((rho - 2.0).square() + x[:, 2].square()).sqrt().sub(1.0).abs()
    stats = distance_to_manifold(x, ImplicitTorus(2.0, 1.0))
    assert torch.allclose(stats.distances, exact, atol=1e-9)
    assert stats.median == pytest.approx(float(np.median(exact.numpy())), abs=1e-9)


def test_wasserstein_bins_and_bounds_are_checked_not_cast():
    # Catches bins=2.7 silently binned as 2 (another grid than asked), and
    # numpy's broadcast/overflow messages for a bins list of the wrong length,
    # a grid too large for int64 cell ids (29 bins on 16 axes) or bad bounds;
    # bad point sets are named (InvalidPointError / EmptyDataError, ValueErrors).
    from implicit_geom.exceptions import EmptyDataError, InvalidPointError

    a, b = gaussian(30, seed=1), gaussian(30, seed=2)
    with pytest.raises(ValueError, match="integer"):
        discretized_wasserstein(a, b, bins=2.7)
    with pytest.raises(ValueError, match="one per axis"):
        discretized_wasserstein(a, b, bins=[3, 4, 5])
    assert discretized_wasserstein(a, b, bins=[3, 4]) == discretized_wasserstein(
        a, b, bins=np.array([3.0, 4.0]))
    with pytest.raises(ValueError, match="too many"):
        discretized_wasserstein(gaussian(5, d=16), gaussian(5, d=16, seed=1), bins=29)
    with pytest.raises(ValueError, match="bounds must be"):
        discretized_wasserstein(a, b, bounds=((0, 0), (1, 1), (2, 2)))
    with pytest.raises(ValueError, match="bounds must be finite"):
        discretized_wasserstein(a, b, bounds=(-np.inf, np.inf))
    with pytest.raises(InvalidPointError, match="dimension mismatch"):
        discretized_wasserstein(a, gaussian(3, d=3))
    with pytest.raises(EmptyDataError):
        discretized_wasserstein(a, b[:0])


def test_wasserstein_closed_forms():
    # Independent references: between two point masses the raw cost is their
    # squared distance (W2^2) and 1 once normalised; fine bins give the W2^2
    # of a translated sample (the shift squared, POT on the raw points).
    a = np.array([[0.0, 0.0]])
    b = np.array([[3.0, 4.0]])
    assert discretized_wasserstein(a, b, normalize_cost=False) == pytest.approx(25.0)
    assert discretized_wasserstein(b, a, normalize_cost=False) == pytest.approx(25.0)
    assert discretized_wasserstein(a, b) == pytest.approx(1.0)
    x = gaussian(400).numpy()
    shifted = discretized_wasserstein(x, x + [0.5, 0.0], bins=50, normalize_cost=False)
    assert shifted == pytest.approx(0.25, rel=0.03)
