"""Connected components: known by construction (closed forms, unions, products),
found by sampling (callables, learned); dist is +inf across components, log raises."""

import math

import pytest
import torch
from geomstats.learning.frechet_mean import FrechetMean
from geomstats.learning.kernel_density_estimation_classifier import (
    KernelDensityEstimationClassifier,
)
from geomstats.learning.kmeans import RiemannianKMeans
from geomstats.learning.knn import KNearestNeighborsClassifier

import implicit_geom as ig
from implicit_geom.exceptions import ComponentError, DisconnectedError

LEFT, RIGHT = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 0.0])


def two_circles():
    return ig.union(ig.ImplicitSphere(1, center=LEFT), ig.ImplicitSphere(1, center=RIGHT))


def on_circle(center, angles):
    angles = torch.as_tensor(angles, dtype=torch.float64)
    return center.double() + torch.stack([angles.cos(), angles.sin()], -1)


def test_closed_forms_know_their_components():
    # Catches a default of "one component" for O(3) = {X^T X = I} (two sheets).
    assert ig.ImplicitSphere(2).n_components == 1 and ig.ImplicitTorus().n_components == 1
    from geomstats.geometry.special_orthogonal import SpecialOrthogonal

    o3 = ig.as_implicit(SpecialOrthogonal(3))  # X^T X = I: both signs of det
    flip = torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    pts = torch.stack([torch.eye(3, dtype=torch.float64), flip]).reshape(2, 9)
    assert o3.n_components == 2 and o3.component_of(pts).tolist() == [0, 1]


def test_union_components_by_construction():
    # Catches a union that numbers its pieces but forgets pieces with several
    # components (labels must be offset by each piece's count).
    union = two_circles()
    pts = torch.cat([on_circle(LEFT, [0.1, 2.0]), on_circle(RIGHT, [0.5, 4.0])])
    assert union.n_components == 2
    assert union.component_of(pts).tolist() == [0, 0, 1, 1]
    far = torch.tensor([8.0, 0.0])
    three = ig.union(ig.ImplicitSphere(1, center=far), union)
    assert three.n_components == 3
    x = torch.cat([on_circle(RIGHT, [1.0]), on_circle(far, [1.0]), on_circle(LEFT, [1.0])])
    assert three.component_of(x).tolist() == [2, 0, 1]


def test_product_components_multiply():
    # (two circles) x (two circles): four tori; label = mixed radix of the factors'.
    prod = ig.product(two_circles(), two_circles())
    assert prod.n_components == 4
    a, b = on_circle(LEFT, [0.3]), on_circle(RIGHT, [0.3])
    pts = torch.cat([torch.cat([a, a], -1), torch.cat([a, b], -1), torch.cat([b, a], -1),
                     torch.cat([b, b], -1)])
    assert prod.component_of(pts).tolist() == [0, 1, 2, 3]


def test_union_distances_within_and_across_components():
    # What the issue asks: arc length within a component, +inf across, and log
    # across raises the named error (before: GeodesicError from a failed shot).
    union = two_circles()
    a = on_circle(LEFT, [0.0, 0.0])
    b = torch.cat([on_circle(LEFT, [1.3]), on_circle(RIGHT, [2.0])])
    d = union.metric.dist(a, b)
    assert float(d[0]) == pytest.approx(1.3, abs=1e-8) and math.isinf(float(d[1]))
    assert math.isinf(float(union.metric.squared_dist(a[1], b[1])))
    with pytest.raises(DisconnectedError, match="different connected components") as info:
        union.metric.log(b, a)
    assert info.value.mask.tolist() == [False, True]
    torch.testing.assert_close(union.metric.log(b[0], a[0]).norm(),
                               torch.tensor(1.3, dtype=torch.float64))


def union_data(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ang = 0.6 * torch.randn(2, n, generator=gen, dtype=torch.float64)
    return torch.cat([on_circle(LEFT, ang[0]), on_circle(RIGHT, math.pi + ang[1])])


def test_kmeans_separates_the_circles():
    # Before: RiemannianKMeans failed with GeodesicError on cross-component dist.
    union, X = two_circles(), union_data()
    init = torch.stack([X[0], X[-1]])
    km = RiemannianKMeans(union, n_clusters=2, init=init, max_iter=10).fit(X)
    labels = km.labels_
    assert labels[:12].unique().numel() == 1 and labels[12:].unique().numel() == 1
    assert labels[0] != labels[-1]
    assert union.belongs(km.cluster_centers_, atol=1e-9).all()


def test_frechet_mean_knn_and_kernel_density_on_a_union():
    union, X = two_circles(), union_data()
    mean = FrechetMean(union).fit(X[:12]).estimate_
    assert int(union.component_of(mean)) == 0 and union.belongs(mean, atol=1e-9)
    y = torch.cat([torch.zeros(12), torch.ones(12)]).long()
    test = union_data(4, seed=1)
    truth = [0] * 4 + [1] * 4
    knn = KNearestNeighborsClassifier(union, n_neighbors=3).fit(X, y)
    assert knn.predict(test).tolist() == truth
    kde = KernelDensityEstimationClassifier(union, bandwidth=0.5).fit(X, y)
    assert kde.predict(test).tolist() == truth


def two_circles_callable(bounds=True):
    centres = torch.stack([LEFT, RIGHT]).double()

    def f(x):  # product of the circle equations: zero set is their union
        sq = ((x[..., None, :] - centres) ** 2).sum(-1) - 1.0
        return (sq[..., 0] * sq[..., 1]).unsqueeze(-1)

    box = ([-3.5, -1.5], [3.5, 1.5]) if bounds else None
    return ig.ImplicitManifold(f, 2, 1, bounds=box)


def test_sampled_components_of_a_callable():
    # No construction to go by: components come from sampling the box. Catches
    # a label lookup that is not consistent with the sampled components.
    manifold = two_circles_callable()
    assert manifold.n_components == 2
    pts = torch.cat([on_circle(LEFT, torch.linspace(0, 6, 7)),
                     on_circle(RIGHT, torch.linspace(0, 6, 7))])
    labels = manifold.component_of(pts)
    assert labels[:7].unique().numel() == 1 and labels[7:].unique().numel() == 1
    assert labels[0] != labels[-1] and set(labels.tolist()) == {0, 1}
    assert math.isinf(float(manifold.metric.dist(pts[0], pts[-1])))
    # Far from every sample: unknown (-1), not a guess.
    assert int(manifold.component_of(torch.tensor([0.0, 0.0]))) == -1
    with pytest.raises(ComponentError, match="no box"):
        two_circles_callable(bounds=False).n_components


def test_a_sample_without_any_component_raises_component_error():
    # Catches a sampled component map with no component of min_size samples
    # (a sphere of radius 6371 in its 1.5-radius box: 4 of 3000 draws land):
    # it reported n_components == 0 for a non-empty M, and dist/log/component_of
    # died with an unnamed IndexError from the empty lookup table.
    # Box draws at that scale land now (capped damping, see the test below);
    # a Newton cap of 8 iterations lands 6 of them, as few.
    r = 6371.0
    big = ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - r * r) / (2 * r),
                              3, 1, bounds=([-1.5 * r] * 3, [1.5 * r] * 3), max_iter=8)
    with pytest.raises(ComponentError, match="no component"):
        big.n_components
    a = torch.tensor([r, 0.0, 0.0], dtype=torch.float64)
    with pytest.raises(ComponentError):
        big.metric.dist(a, torch.tensor([0.0, r, 0.0], dtype=torch.float64))


def test_components_of_a_sphere_at_large_length_scale_are_sampled():
    # Catches the box draws landed by the damped Newton alone: mu = |F|^2 is in
    # units of F squared, so draws thousands of units off a sphere of radius
    # 6371 stalled and 4 of 3000 landed (ComponentError for a sphere).
    r = 6371.0
    big = ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - r * r) / (2 * r),
                              3, 1, bounds=([-1.5 * r] * 3, [1.5 * r] * 3))
    assert big.n_components == 1
    a, b = torch.tensor([[r, 0.0, 0.0], [0.0, r, 0.0]], dtype=torch.float64)
    assert int(big.component_of(a)) == int(big.component_of(b)) == 0
    assert float(big.metric.dist(a, b)) == pytest.approx(math.pi / 2 * r, rel=1e-8)


def test_close_pieces_are_told_apart_by_checking_the_links():
    # Catches two circles 0.1 apart (closer than the linking radius, 3% of the
    # box diagonal = 0.2) merged into one sampled component: component_of gave
    # both one label while dist across them was +inf. A link whose midpoint is
    # off M (it crosses the gap) is dropped now.
    left, right = torch.tensor([-1.05, 0.0]), torch.tensor([1.05, 0.0])
    centres = torch.stack([left, right]).double()

    def f(x):
        sq = ((x[..., None, :] - centres) ** 2).sum(-1) - 1.0
        return (sq[..., 0] * sq[..., 1]).unsqueeze(-1)

    manifold = ig.ImplicitManifold(f, 2, 1, bounds=([-3.0, -1.5], [3.0, 1.5]))
    assert manifold.sampled_components().radius > 0.1
    assert manifold.n_components == 2
    pts = torch.cat([on_circle(left, [math.pi, 0.3]), on_circle(right, [0.0, 2.8])])
    labels = manifold.component_of(pts).tolist()
    assert labels[0] == labels[1] != labels[2] == labels[3]
    d = manifold.metric.dist(pts[0], pts[1:])
    assert math.isfinite(float(d[0])) and math.isinf(float(d[1])) and math.isinf(float(d[2]))


def test_slanted_links_between_close_sheets_are_dropped():
    # Catches concentric circles 0.01 apart (radii 1 and 1.01; linking radius
    # 0.13) counted as one component: a slanted link of length 0.12 from one
    # to the other has its midpoint 0.005 from the inner circle, within the
    # midpoint check's 0.2 x length. The normals at its ends face each other
    # (F has one sign in the gap), which a link along one circle never does.
    def f(x):
        r2 = (x * x).sum(-1)
        return ((r2 - 1.0) * (r2 - 1.01 ** 2)).unsqueeze(-1)

    manifold = ig.ImplicitManifold(f, 2, 1, bounds=([-1.5, -1.5], [1.5, 1.5]))
    components = manifold.sampled_components()
    assert components.radius > 0.1 and manifold.n_components == 2
    pts = torch.cat([on_circle(torch.zeros(2), [0.0, 2.0]),
                     1.01 * on_circle(torch.zeros(2), [0.1, 3.0])])
    labels = manifold.component_of(pts).tolist()
    assert labels[0] == labels[1] != labels[2] == labels[3]
