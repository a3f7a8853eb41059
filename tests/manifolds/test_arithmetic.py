"""Intersections and unions of implicit manifolds (mixing analytic and geomstats spaces)."""

import math
import re

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

import implicit_geom as ig
from implicit_geom.exceptions import ComponentError, SingularJacobianError


def two_sphere_circle():
    """Unit sphere at 0 and at (1, 0, 0): they meet in the circle x = 1/2, rho = sqrt(3)/2."""
    return ig.intersection(Hypersphere(2), ig.ImplicitSphere(2, center=[1.0, 0.0, 0.0]))


def circle_point(angle):
    rho = math.sqrt(3) / 2
    return torch.tensor([0.5, rho * math.cos(angle), rho * math.sin(angle)], dtype=torch.float64)


def test_intersection_is_a_codim_two_circle():
    circle = two_sphere_circle()
    assert (circle.codim, circle.dim) == (2, 1)
    pts = circle.projection(torch.randn(200, 3, dtype=torch.float64) + torch.tensor([0.5, 0, 0]))
    torch.testing.assert_close(pts[:, 0], torch.full((200,), 0.5, dtype=torch.float64),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(pts[:, 1:].norm(dim=-1),
                               torch.full((200,), math.sqrt(3) / 2, dtype=torch.float64),
                               rtol=0, atol=1e-10)


def test_intersection_geodesic_distances_are_arc_lengths():
    circle = two_sphere_circle()
    angles = torch.linspace(0.1, 2.9, 8)
    a = torch.stack([circle_point(0.0)] * 8)
    b = torch.stack([circle_point(float(t)) for t in angles])
    expected = math.sqrt(3) / 2 * angles.double()
    torch.testing.assert_close(circle.metric.dist(a, b), expected, rtol=1e-8, atol=0)
    v = circle.metric.log(b, a)
    torch.testing.assert_close(circle.metric.exp(v, a), b, rtol=0, atol=1e-9)


def test_tangent_intersection_is_singular():
    # Spheres touching at one point: no transversal intersection there.
    touching = ig.intersection(ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[2.0, 0, 0]))
    with pytest.raises(SingularJacobianError):
        touching.to_tangent(torch.ones(3, dtype=torch.float64),
                            torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))


def test_union_membership_projection_and_product_form():
    left = ig.ImplicitSphere(2, center=[-1.5, 0, 0])
    right = Hypersphere(2)  # geomstats space, centred at 0
    both = ig.union(left, right)
    on_left = torch.tensor([-2.5, 0.0, 0.0], dtype=torch.float64)
    on_right = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    off = torch.tensor([3.0, 3.0, 3.0], dtype=torch.float64)
    assert both.belongs(torch.stack([on_left, on_right, off]), atol=1e-9).tolist() == [True, True, False]
    # Projection goes to the nearer component.
    pts = torch.tensor([[-2.9, 0.1, 0.0], [0.2, 0.0, 1.3]], dtype=torch.float64)
    proj = both.projection(pts)
    torch.testing.assert_close((proj[0] - torch.tensor([-1.5, 0, 0])).norm(),
                               torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(proj[1].norm(), torch.tensor(1.0, dtype=torch.float64))
    # The paper's product form vanishes exactly on the union.
    prod = both.product_submersion(torch.stack([on_left, on_right, off]))
    assert prod[:2].abs().max() < 1e-12 and prod[2].abs() > 1


def test_union_tangent_space_and_meeting_set():
    left = ig.ImplicitSphere(2, center=[-0.5, 0, 0])
    right = ig.ImplicitSphere(2, center=[0.5, 0, 0])
    both = ig.union(left, right)
    p = torch.tensor([-1.5, 0.0, 0.0], dtype=torch.float64)
    tan = both.to_tangent(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), p)
    torch.testing.assert_close(tan, torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64))
    meet = torch.tensor([0.0, math.sqrt(0.75), 0.0], dtype=torch.float64)
    assert bool(both.on_meeting_set(meet))
    with pytest.raises(SingularJacobianError, match="components of the union meet"):
        both.to_tangent(torch.ones(3, dtype=torch.float64), meet)


def test_tangential_intersection_geodesics_raise_the_named_error():
    # Catches dist/log on a sphere ∩ its tangent plane failing with torch's
    # _LinAlgError (singular Gram matrix in the curve's acceleration) instead
    # of SingularJacobianError.
    plane = ig.ImplicitManifold(lambda x: x[..., 2:3] - 1.0, ambient_dim=3, codim=1)
    touching = ig.intersection(ig.ImplicitSphere(2), plane)
    top = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    with pytest.raises(SingularJacobianError):
        touching.metric.dist(top, top)


def test_union_geodesics_where_pieces_meet_raise():
    # Catches exp/log/dist/dist_pairwise on a union answering silently on
    # its first piece where pieces meet (a union of a sphere with itself:
    # finite distances on a "2-component" union; the meeting circle of two
    # overlapping spheres), where to_tangent raises SingularJacobianError.
    twice = ig.union(ig.ImplicitSphere(2), ig.ImplicitSphere(2))
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    for call in (lambda: twice.metric.dist(x[0], x[1]), lambda: twice.metric.log(x[1], x[0]),
                 lambda: twice.metric.exp(torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64), x[0]),
                 lambda: twice.metric.dist_pairwise(x)):
        with pytest.raises(SingularJacobianError, match="components of the union meet"):
            call()
    circles = ig.union(ig.ImplicitSphere(1), ig.ImplicitSphere(1, center=[1.0, 0.0]))
    meet = torch.tensor([0.5, math.sqrt(0.75)], dtype=torch.float64)
    with pytest.raises(SingularJacobianError, match="components of the union meet"):
        circles.metric.dist(meet, torch.tensor([-1.0, 0.0], dtype=torch.float64))
    # Away from the meeting points each piece still answers (arc length pi/2).
    far = circles.metric.dist(torch.tensor([-1.0, 0.0], dtype=torch.float64),
                              torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(far) == pytest.approx(math.pi / 2, abs=1e-9)


def test_union_of_overlapping_pieces_raises_component_error():
    # Catches a union double counting a part its pieces share (union(S, S):
    # n_components 2 and quadrature volume 8 pi; a circle and a curve sharing
    # its upper half): ComponentError, while crossing or tangent pieces count.
    from implicit_geom.models.normalization import manifold_quadrature

    def half_circle_half_ellipse(x):  # C^1 closed curve: upper unit semicircle
        y = torch.where(x[:, 1:2] >= 0, x[:, 1:2], 2 * x[:, 1:2])
        return x[:, :1] ** 2 + y ** 2 - 1

    shared = ig.ImplicitManifold(half_circle_half_ellipse, 2, bounds=([-2, -2], [2, 2]))
    for overlapping in (ig.union(ig.ImplicitSphere(2), ig.ImplicitSphere(2)),
                        ig.union(ig.ImplicitSphere(1), shared)):
        with pytest.raises(ComponentError, match="share a part of positive measure"):
            overlapping.n_components
        with pytest.raises(ComponentError, match="share a part of positive measure"):
            manifold_quadrature(overlapping, 32)
    nested = ig.union(ig.ImplicitSphere(1), ig.union(ig.ImplicitSphere(1),
                                                    ig.ImplicitSphere(1, center=[3.0, 0.0])))
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        nested.component_of(torch.tensor([1.0, 0.0], dtype=torch.float64))
    crossing = ig.union(ig.ImplicitSphere(1), ig.ImplicitSphere(1, center=[1.0, 0.0]))
    tangent = ig.union(ig.ImplicitSphere(2), ig.ImplicitSphere(2, 0.5, center=[0.5, 0.0, 0.0]))
    assert crossing.n_components == tangent.n_components == 2
    assert float(manifold_quadrature(crossing, 64).weights.sum()) == pytest.approx(4 * math.pi)


def test_union_rejects_mismatched_components():
    with pytest.raises(ValueError):
        ig.union(ig.ImplicitSphere(2), ig.ImplicitSphere(3))
    with pytest.raises(ValueError):
        ig.intersection(ig.ImplicitSphere(2))


def test_product_of_geomstats_spaces_as_implicit():
    from geomstats.geometry.product_manifold import ProductManifold

    space = ig.as_implicit(ProductManifold([ig.ImplicitTorus(2.0, 1.0), Hypersphere(2)]))
    assert (space.ambient_dim, space.codim, space.dim) == (6, 2, 4)
    pts = space.random_point(10)
    assert space.belongs(pts, atol=1e-10).all()
    torch.testing.assert_close(pts[:, 3:].norm(dim=-1), torch.ones(10, dtype=torch.float64))
    vec = 0.3 * space.random_tangent_vec(pts)
    end = space.metric.exp(vec, pts)
    # Geodesics of a product are products of geodesics.
    torch.testing.assert_close(end[:, 3:], Hypersphere(2).metric.exp(vec[:, 3:], pts[:, 3:]),
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(end[:, :3], ig.ImplicitTorus(2.0, 1.0).metric.exp(vec[:, :3], pts[:, :3]),
                               rtol=0, atol=1e-9)


def test_union_overlap_check_reruns_when_a_piece_changes_in_place():
    # Catches the cached overlap check going stale: a piece refitted
    # (weights stepped in place) or loaded onto another piece after the
    # union was checked kept n_components 2 for a doubled sphere.
    a, b = ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[4.0, 0, 0])
    both = ig.union(a, b)
    assert both.n_components == 2
    b.load_state_dict({"center": torch.zeros(3, dtype=torch.float64),
                       "radius": torch.tensor(1.0, dtype=torch.float64)})
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        both.n_components
    net = torch.nn.Linear(3, 1).double()
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.0, 0.0, 1.0]]))
        net.bias.fill_(-3.0)
    box = ([-2.0] * 3, [2.0] * 3)
    planes = ig.union(ig.ImplicitManifold(lambda x: x[:, 2:3], 3, bounds=box),
                      ig.ImplicitManifold(net, 3, bounds=box))
    planes.check_pieces_disjoint()
    with torch.no_grad():
        net.bias.zero_()  # an optimiser step: the plane z = 3 moves onto z = 0
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        planes.check_pieces_disjoint()


def near_tangent_spheres(gap):
    """Unit spheres with centres 2 - gap apart and the radius of their circle."""
    d = 2.0 - gap
    both = ig.intersection(ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[d, 0.0, 0.0]))
    return both, d, math.sqrt(1.0 - (d / 2) ** 2)


def test_nearly_tangential_intersection_warns_or_raises():
    # Catches intersections of spheres crossing at a tiny angle answering
    # silently: projected points off their closed-form circle by kappa * tol
    # (7e-8 at kappa 707, tol 1e-10) and exp off by a relative 4e-3 at
    # kappa 7e6 (centres 2 - 1e-14 apart), with no warning or error.
    import warnings

    from implicit_geom.exceptions import ConditioningWarning

    clean, d, rho = near_tangent_spheres(0.1)  # kappa 2.3: silent and accurate
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pts = clean.projection(torch.tensor([[d / 2, 0.3, 0.4]], dtype=torch.float64))
    assert float(pts[0, 1:].norm() - rho) == pytest.approx(0.0, abs=1e-9)
    shallow, d, rho = near_tangent_spheres(1e-4)  # kappa 71: correct to kappa * tol, warned
    assert float(shallow.crossing_condition(
        torch.tensor([d / 2, rho, 0.0], dtype=torch.float64))) == pytest.approx(70.7, rel=1e-2)
    with pytest.warns(ConditioningWarning, match="small angle"):
        pts = shallow.projection(torch.tensor([[d / 2, 0.01, 0.0]], dtype=torch.float64))
    assert abs(float(pts[0, 1:].norm()) - rho) < 100 * 1e-10
    a = torch.tensor([d / 2, rho, 0.0], dtype=torch.float64)
    b = torch.tensor([d / 2, 0.0, rho], dtype=torch.float64)
    with pytest.warns(ConditioningWarning, match="small angle"):
        assert float(shallow.metric.dist(a, b)) == pytest.approx(rho * math.pi / 2, rel=1e-9)
    grazing, d, rho = near_tangent_spheres(1e-14)  # kappa 7e6: no accurate answer
    a = torch.tensor([d / 2, rho, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 0.0, rho], dtype=torch.float64)
    for call in (lambda: grazing.metric.exp(v, a), lambda: grazing.metric.dist(a, a),
                 lambda: grazing.to_tangent(v, a)):
        with pytest.raises(SingularJacobianError, match="nearly tangentially"):
            call()


@pytest.mark.parametrize("gap", [2e-8, 1e-8])
def test_a_failed_intersection_projection_reports_the_crossing_condition(gap):
    # Catches a near-tangential crossing below the raise threshold (kappa 5e3
    # and 7e3 < eps**-0.25 = 8e3) failing projection with a plain
    # ProjectionError that never mentions the crossing: the user could not
    # tell why Newton failed.
    import warnings

    from implicit_geom.exceptions import ProjectionError

    both, d, _ = near_tangent_spheres(gap)
    gen = torch.Generator().manual_seed(0)
    x = torch.tensor([d / 2, 0.0, 0.0], dtype=torch.float64) + 0.3 * torch.randn(
        60, 3, dtype=torch.float64, generator=gen)
    with warnings.catch_warnings(), pytest.raises(ProjectionError) as info:
        warnings.simplefilter("ignore")
        both.projection(x)
    import re

    reported = re.search(r"cross nearly tangentially .*condition number up to (\S+);",
                         str(info.value))
    assert reported, str(info.value)
    # The circle's kappa, 1 / sqrt(2 gap), where Newton stopped (on M).
    assert float(reported[1]) == pytest.approx(1 / math.sqrt(2 * gap), rel=0.02)
    assert info.value.points is not None  # the last Newton iterates, as every projection
    assert info.value.failed.any() and not info.value.failed.all()


def test_union_overlap_check_finds_a_small_shared_cap():
    # Catches a shared cap of 0.5% of a sphere passing the overlap check
    # (128 samples per piece found shared parts of ~2% and more only).
    h = 1 - 2 * 0.005  # the cap z >= h is 0.5% of the unit sphere

    def capped(x):  # the unit sphere above z = h, a flattened surface below
        z = x[:, 2:3]
        g = torch.where(z >= h, z, h + 2 * (z - h))
        return x[:, :1] ** 2 + x[:, 1:2] ** 2 + g ** 2 - 1

    shared = ig.ImplicitManifold(capped, 3, bounds=([-1.5] * 3, [1.5] * 3))
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        ig.union(ig.ImplicitSphere(2), shared).check_pieces_disjoint()
    touching = ig.union(ig.ImplicitSphere(1), ig.ImplicitSphere(1, 0.5, center=[0.5, 0.0]))
    for seed in range(5):  # internally tangent circles: hits cluster at the contact
        touching.check_pieces_disjoint(seed=seed)


def test_intersection_sampler_start_and_random_point_failures_report_the_crossing():
    # Catches sampler starts and random_point on an intersection failing with
    # a plain ProjectionError (projection's names the crossing condition):
    # two unit spheres 2.1 apart do not meet, and Newton stalls between them
    # where their normals are (nearly) parallel.
    import warnings

    from implicit_geom.exceptions import ProjectionError
    from implicit_geom.sampling import ConstrainedLangevin

    apart = ig.intersection(ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[2.1, 0.0, 0.0]))
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.05, 0.0, 0.0], dtype=torch.float64) + 0.3 * torch.randn(
        8, 3, dtype=torch.float64, generator=gen)
    note = r"where Newton stopped \(crossing condition number"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ProjectionError, match="starting point") as info:
            ConstrainedLangevin(apart, None, seed=0).sample(x0, 2)
        assert re.search(note, str(info.value)), str(info.value)
        assert info.value.points.shape == (8, 3) and info.value.failed.all()
        with pytest.raises(ProjectionError, match="draws could not be projected") as info:
            apart.random_point(4, max_rounds=2)
        assert re.search(note, str(info.value)), str(info.value)
    # Other manifolds add no note.
    with pytest.raises(ProjectionError) as info:
        ConstrainedLangevin(ig.ImplicitManifold(lambda x: x.square().sum(-1, keepdim=True) + 1,
                                                3), None).sample(x0, 2)
    assert "crossing" not in str(info.value)


def test_intersection_projection_checks_the_crossing_with_the_solves_jacobian():
    # Catches the projection's crossing check evaluating J again at the
    # closest points the Newton solve had just evaluated it at: the check
    # takes the solve's Jacobian and gives the same crossing condition.
    shallow, d, rho = near_tangent_spheres(1e-4)  # kappa 71: warned
    x = torch.tensor([[d / 2, 0.01, 0.0], [d / 2, 0.0, 0.3]], dtype=torch.float64)
    with pytest.warns(ig.exceptions.ConditioningWarning) as record:
        reference = shallow.projection(x)
    expected = float(shallow.crossing_condition(reference).max())

    def refuse(point):
        raise AssertionError("crossing_condition evaluated the Jacobian again")

    shallow.crossing_condition = refuse
    with pytest.warns(ig.exceptions.ConditioningWarning, match="small angle") as again:
        pts = shallow.projection(x)
    assert torch.equal(pts, reference)
    assert str(again[0].message) == str(record[0].message)
    assert f"condition number {expected:.3g})" in str(again[0].message)
    res = shallow.solve_projection(x)
    torch.testing.assert_close(res.jac, shallow._value_and_jacobian(res.x)[1], rtol=0, atol=0)


def test_union_overlap_check_sees_the_pieces_bounds():
    # Catches the overlap check's cache ignoring the pieces' boxes (bounds
    # are non-persistent buffers, outside the state dict): a piece re-boxed
    # onto the part it shares kept the earlier pass.
    def bent(x):  # z = 0 for x <= 1, rising beyond: shares z = 0 with the plane
        return x[:, 2:3] - torch.relu(x[:, 0:1] - 1)

    far = ([2.0, -1.0, -1.0], [4.0, 1.0, 1.0])  # where the pieces are apart
    plane = ig.ImplicitManifold(lambda x: x[:, 2:3], 3, bounds=far)
    both = ig.union(plane, ig.ImplicitManifold(bent, 3, bounds=([2.0, -1.0, 0.5],
                                                                  [4.0, 1.0, 3.5])))
    both.check_pieces_disjoint()
    plane.bounds = ([-1.0] * 3, [1.0] * 3)  # now sampled where it lies on the other piece
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        both.check_pieces_disjoint()


def test_union_overlap_check_hashes_the_pieces_only_when_they_may_have_changed(monkeypatch):
    # Catches the overlap check hashing every piece's whole state on every
    # call (a device sync per check on a GPU), and the cheap key missing
    # in-place edits, reloads and edits through .data (announced by
    # invalidate_caches).
    from implicit_geom.manifolds import state

    hashed, checked = [], []
    real_hash, real_samples = state._state_fingerprint, ig.UnionManifold._piece_samples
    monkeypatch.setattr(state, "_state_fingerprint",
                        lambda space: hashed.append(1) or real_hash(space))
    monkeypatch.setattr(ig.UnionManifold, "_piece_samples",
                        lambda self, *a: checked.append(1) or real_samples(self, *a))
    a, b = ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[4.0, 0, 0])
    both = ig.union(a, b)

    def counts():
        out = (len(hashed), len(checked))
        hashed.clear(), checked.clear()
        return out

    both.check_pieces_disjoint()
    assert counts() == (1, 2)
    import pickle

    pickle.loads(pickle.dumps(both)).check_pieces_disjoint()  # a copy checks afresh
    assert counts() == (1, 2)
    for _ in range(3):
        both.check_pieces_disjoint()
    assert counts() == (0, 0)  # nothing moved: neither hashed nor checked
    b.load_state_dict(b.state_dict())  # the same values again: hashed, not checked
    both.check_pieces_disjoint()
    assert counts() == (1, 0)
    with torch.no_grad():
        b.center.copy_(torch.tensor([0.5, 0.0, 0.0]))  # in place: version counter
    both.check_pieces_disjoint()  # overlapping spheres only cross: no error
    assert counts() == (1, 2)
    b.center.data.copy_(torch.zeros(3))  # .data: no version bump
    both.check_pieces_disjoint()
    assert counts() == (0, 0)  # unseen until announced
    b.invalidate_caches()
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        both.check_pieces_disjoint()
    assert counts() == (1, 2)
    with pytest.raises(ComponentError):  # a failed check is not cached
        both.check_pieces_disjoint()


@pytest.mark.parametrize("form", ["intersection", "plain"])
def test_tiny_circle_with_constraints_in_different_units_against_closed_form(form):
    # The circle of radius 1e-6 as [|x|^2 - r^2, z]: rows of J of norm 2e-6
    # and 1. Newton's and belongs' tolerance factor from |J|_F (~1) let the
    # small row's residual through: projections 4e-4 of the radius off, and
    # belongs accepted points 1% and 5% off. sigma_min(J) sees the small row.
    r = 1e-6

    def ball(x):
        return x.square().sum(-1, keepdim=True) - r * r

    if form == "intersection":
        space = ig.intersection(ig.ImplicitManifold(ball, 3, 1),
                                ig.ImplicitManifold(lambda x: x[..., 2:], 3, 1))
    else:
        space = ig.ImplicitManifold(lambda x: torch.cat([ball(x), x[..., 2:]], -1), 3, 2)
    gen = torch.Generator().manual_seed(0)
    x0 = r * torch.randn(20, 3, generator=gen, dtype=torch.float64)
    foot = torch.cat([r * torch.nn.functional.normalize(x0[:, :2], dim=-1),
                      torch.zeros(20, 1, dtype=torch.float64)], -1)
    y = space.projection(x0)
    assert float((y - foot).norm(dim=-1).max()) < 1e-8 * r
    theta = torch.linspace(0, 6, 5, dtype=torch.float64)
    on = torch.stack([r * theta.cos(), r * theta.sin(), 0 * theta], -1)
    assert bool(space.belongs(on).all())
    for off in (1.01, 1.05):
        assert not bool(space.belongs(on * off).any())
