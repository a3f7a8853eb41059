"""geomstats' own test cases on implicit spaces: the comparison against
``Hypersphere`` (``RiemannianMetricComparisonTestCase``) and the property tests
of ``LevelSetTestCase`` and ``RiemannianMetricTestCase``, on the implicit sphere
(closed form, torch callable, sympy with |grad F| = 3) and the torus.

geomstats' parametrizer module needs nbconvert, so the test methods are driven
here with pytest's own parametrisation: each geomstats method (a random-data
test with ``n_points``/``n_times``/``n_reps``) runs as one of our tests.
"""

import inspect

import pytest
import sympy
import torch
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.test.random import RandomDataGenerator
from geomstats.test_cases.geometry.base import LevelSetTestCase
from geomstats.test_cases.geometry.riemannian_metric import (
    RiemannianMetricComparisonTestCase,
    RiemannianMetricTestCase,
)

import implicit_geom as ig

X, Y, Z = sympy.symbols("x y z")


class Generator(RandomDataGenerator):
    def __init__(self, space, amplitude=2.0, seed=0):
        super().__init__(space, amplitude)
        self.gen = torch.Generator().manual_seed(seed)

    def point_to_project(self, n_points=1):
        """Ambient points near M (a random point pushed off by up to 20%)."""
        pts = self.random_point(n_points)
        scale = 1 + 0.4 * (torch.rand(pts.shape[:-1], generator=self.gen,
                                      dtype=torch.float64) - 0.5)
        return pts * scale[..., None]


class CapGenerator(Generator):
    """Random points in a cap of angular radius 1 around the north pole: pairs
    stay far from the cut locus (where log is not unique on either space)."""

    def random_point(self, n_points=1):
        ang = torch.rand(n_points, generator=self.gen, dtype=torch.float64)
        phi = torch.rand(n_points, generator=self.gen, dtype=torch.float64) * 6.283
        pts = torch.stack([ang.sin() * phi.cos(), ang.sin() * phi.sin(), ang.cos()], -1)
        return pts[0] if n_points == 1 else pts

    def random_tangent_vec(self, base_point):
        vec = torch.randn(base_point.shape, generator=self.gen, dtype=torch.float64)
        return Hypersphere(2).to_tangent(vec, base_point) / self.amplitude


class TorusPatchGenerator(Generator):
    """Points of a patch of the torus (angles within 0.5 of (0, 0))."""

    def random_point(self, n_points=1):
        th, ph = (torch.rand(2, n_points, generator=self.gen, dtype=torch.float64) - 0.5)
        rho = 2.0 + th.cos()
        pts = torch.stack([rho * ph.cos(), rho * ph.sin(), th.sin()], -1)
        return pts[0] if n_points == 1 else pts

    def random_tangent_vec(self, base_point):
        vec = torch.randn(base_point.shape, generator=self.gen, dtype=torch.float64)
        return self.space.to_tangent(vec, base_point) / self.amplitude


SPHERES = {
    "closed_form": lambda: ig.ImplicitSphere(2),
    "callable": lambda: ig.ImplicitManifold(
        lambda x: ((x * x).sum(-1, keepdim=True) - 1) / 2, 3, 1,
        bounds=([-1.5] * 3, [1.5] * 3)),
    # |grad F| = 3 on M: catches a geometry that assumes a unit gradient.
    "sympy_scaled": lambda: ig.from_sympy([1.5 * (X**2 + Y**2 + Z**2 - 1)], [X, Y, Z],
                                          bounds=([-1.5] * 3, [1.5] * 3)),
}


def random_tests(cls, skip=()):
    """geomstats' random-data test methods of ``cls``: (name, kwargs) pairs."""
    values = {"n_points": 3, "n_times": 4, "n_reps": 2, "atol": 1e-7}
    out = []
    for name in sorted(dir(cls)):
        if not name.startswith("test_") or name in skip:
            continue
        args = inspect.getfullargspec(getattr(cls, name)).args[1:]
        if set(args) <= set(values):
            out.append((name, {a: values[a] for a in args}))
    return out


# Coordinate-dependent tensors: Hypersphere gives them in its intrinsic
# (spherical) chart, we in redundant ambient coordinates, so entries differ
# while the geometry agrees; the coordinate-free versions (curvature(a, b, c),
# sectional and scalar curvature, transport) are compared instead.
# inner_product_derivative_matrix raises CurvatureError by design.
# Hypersphere's scalar_curvature goes through its spherical-chart Christoffel
# symbols and raises for extrinsic points (ours is checked against m(m-1)/r^2
# in test_curvature.py); the injectivity radius is not implemented here
# (NotImplementedError, not a wrong number).
COORDINATE_TENSORS = {
    "test_scalar_curvature_random", "test_injectivity_radius_random",
    "test_christoffels_random", "test_metric_matrix_random", "test_cometric_matrix_random",
    "test_inner_product_derivative_matrix_random", "test_riemann_tensor_random",
    "test_covariant_riemann_tensor_random", "test_ricci_tensor_random",
    "test_inner_coproduct_random",
}
COMPARISON = random_tests(RiemannianMetricComparisonTestCase, COORDINATE_TENSORS)
PROPERTIES = random_tests(RiemannianMetricTestCase) + random_tests(LevelSetTestCase)


def make_case(cls, space, other=None, generator=CapGenerator):
    case = cls()
    case.space = space
    if other is not None:
        case.other_space = other
    case.data_generator = generator(space)
    case.setup_method()
    return case


@pytest.mark.parametrize("kind", sorted(SPHERES))
@pytest.mark.parametrize("name, kwargs", COMPARISON, ids=[n for n, _ in COMPARISON])
def test_against_hypersphere(kind, name, kwargs):
    # Each comparison catches the method answering for a flat or wrong space
    # (sectional curvature 0, straight-line transport, chord distances, a
    # geodesic of the wrong speed, an unscaled 1/|grad F|^2).
    case = make_case(RiemannianMetricComparisonTestCase, SPHERES[kind](), Hypersphere(2))
    getattr(case, name)(**kwargs)


@pytest.mark.parametrize("kind", ["closed_form", "torus"])
@pytest.mark.parametrize("name, kwargs", PROPERTIES, ids=[n for n, _ in PROPERTIES])
def test_geomstats_properties(kind, name, kwargs):
    # geomstats' generic LevelSet/RiemannianMetric invariants (belongs False on
    # wrong shapes, exp/log inverse, symmetries of the Riemann tensor, Bianchi
    # identity, transport preserving norms, ...).
    if kind == "torus":
        case = make_case(RiemannianMetricTestCase if name in dict(random_tests(
            RiemannianMetricTestCase)) else LevelSetTestCase, ig.ImplicitTorus(2.0, 1.0),
            generator=TorusPatchGenerator)
    else:
        case = make_case(RiemannianMetricTestCase if name in dict(random_tests(
            RiemannianMetricTestCase)) else LevelSetTestCase, SPHERES[kind]())
    getattr(case, name)(**kwargs)
