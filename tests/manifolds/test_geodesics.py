"""Global log / dist (GeodesicLogSolver): far pairs where shooting misses, the cut
locus, distance matrices, and every manifold kind (callable, sympy, learned,
product, intersection, union, intrinsic dimension 1 and 3)."""

import math

import pytest
import sympy
import torch
from geomstats.geometry.hypersphere import Hypersphere
from scipy.special import ellipe

import implicit_geom as ig
from implicit_geom.datasets import torus_embed
from implicit_geom.exceptions import DisconnectedError, GeodesicError, InvalidPointError
from implicit_geom.manifolds.geodesics import (
    GeodesicLogSolver,
    ProductLogSolver,
    ShootingLogSolver,
)


def unit(n, d, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64),
                                         dim=-1)


def shooting_fails_or_is_longer(space, a, b, true_length):
    """Shooting from the circular-arc guess either misses or lands on a
    longer (non-minimising) geodesic."""
    try:
        d = ShootingLogSolver(space).dist(a, b)
    except GeodesicError:
        return True
    return bool(d > true_length * (1 + 1e-3))


def shooting_misses(space, a, b, true_length, max_iter=10):
    """As above with a capped number of shooting iterations (a miss then is
    the shooting's, not a lack of time: it stalls well before the cap)."""
    v, hit = space.metric._shoot(a[None], b[None], max_iter=max_iter, report=True)
    return not bool(hit[0]) or bool(v.norm() > true_length * (1 + 1e-3))


def test_torus_far_pair_old_guess_misses_new_succeeds():
    # Two glycine-like residues on the torus R=3, r=1 (angles phi, theta). The
    # reference length is the minimum over winding classes of intrinsic
    # boundary-value problems (benchmarks/torus_reference.py, scipy solve_bvp
    # in (phi, theta)), an independent method. Catches a log that shoots from
    # a local guess (misses or finds the 9.29 geodesic of the same class) or
    # a graph guess that is not refined (the graph length is ~1% off).
    torus = ig.ImplicitTorus(3.0, 1.0)
    a = torus_embed(torch.tensor(1.5), torch.tensor(-0.89), 3.0, 1.0)
    b = torus_embed(torch.tensor(-1.08), torch.tensor(-0.88), 3.0, 1.0)
    ref = 7.566912997220399
    assert shooting_misses(torus, a, b, ref)
    d = torus.metric.dist(a, b)
    assert abs(float(d) - ref) <= 1e-6 * ref
    v = torus.metric.log(b, a)
    assert abs(float(v.norm()) - ref) <= 1e-6 * ref
    # exp(log) hits the target: the answer is a geodesic, checked independently.
    assert float((torus.metric.exp(v, a) - b).norm()) <= 1e-7


def test_ellipsoid_far_pair_and_cut_locus():
    # Opposite vertices of the ellipsoid x^2 + y^2/4 + z^2/0.25 = 1: the two
    # halves of the x-z principal ellipse (over +z and -z) are minimising,
    # length = half its perimeter = 2 E(m = 0.75). The circular-arc guess is
    # zero here (the chord is normal to M), so shooting cannot start. Catches
    # a log through the long x-y ellipse (4.84) and a missing cut-locus flag.
    x, y, z = sympy.symbols("x y z")
    ell = ig.from_sympy([(x**2 + y**2 / 4 + z**2 / 0.25 - 1) / 2], [x, y, z],
                        bounds=([-1.2, -2.2, -0.7], [1.2, 2.2, 0.7]))
    a = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    b = -a
    ref = 2 * float(ellipe(0.75))
    assert shooting_misses(ell, a, b, ref)
    res = ell.metric.log_solver.solve(b, a)
    assert bool(res.converged.all())
    assert abs(float(res.length[0]) - ref) <= 1e-6 * ref
    assert bool(res.ambiguous[0]) and float(res.gap[0]) <= 1e-6
    # A far pair without symmetry: the answer is a geodesic (exp hits it) and
    # the same length is found from either end (a non-minimising geodesic from
    # one side would break the symmetry).
    p = ell.projection(torch.tensor([[0.6, 1.2, 0.3], [-0.7, -1.1, -0.2]], dtype=torch.float64))
    v = ell.metric.log(p[1], p[0])
    assert float((ell.metric.exp(v, p[0]) - p[1]).norm()) <= 1e-7
    d_ab, d_ba = ell.metric.dist(p[0], p[1]), ell.metric.dist(p[1], p[0])
    assert abs(float(d_ab - d_ba)) <= 1e-6 * float(d_ab)


@pytest.fixture(scope="module")
def learned_surface():
    """A torus learned from 1000 points (a learned surface of varying curvature)."""
    gen = torch.Generator().manual_seed(0)
    angles = 2 * math.pi * torch.rand(1000, 2, generator=gen, dtype=torch.float64)
    pts = torus_embed(angles[:, 0], angles[:, 1], 3.0, 1.0)
    model = ig.NeuralImplicitManifold(3, 1, hidden=(64, 64, 64), epochs=150, seed=0,
                                      progress=False).fit(pts)
    return model, model.projection(pts[:40])


def test_learned_surface_far_pair_old_guess_misses_new_succeeds(learned_surface):
    # Far points of a learned torus. No closed form: the checks are that the
    # path is a checked geodesic, the same length is found from either end (a
    # non-minimising geodesic from one side breaks the symmetry), and the
    # length is below that of curves on M from a to b (the projected analytic
    # geodesic, and the projected chord).
    model, _ = learned_surface
    ends = torus_embed(torch.tensor([1.5, -1.08]), torch.tensor([-0.89, -0.88]), 3.0, 1.0)
    a, b = model.projection(ends)
    res = model.metric.log_solver.solve(torch.stack([b, a]), torch.stack([a, b]))
    assert bool(res.converged.all())
    length = float(res.length[0])
    assert abs(float(res.length[1]) - length) <= 1e-6 * length
    assert shooting_misses(model, a, b, length)
    torus = ig.ImplicitTorus(3.0, 1.0)
    for curve in (torus.metric.geodesic(initial_point=ends[0], end_point=ends[1])(
            torch.linspace(0, 1, 400)), torch.stack([a + t * (b - a) for t in
                                                      torch.linspace(0, 1, 400)])):
        landed = model.solve_projection(curve, closest=False)
        assert bool(landed.converged.all())
        curve = landed.x
        curve[0], curve[-1] = a, b
        assert length <= float((curve[1:] - curve[:-1]).norm(dim=-1).sum()) + 1e-9
    assert float(model.metric.dist(a, b)) == pytest.approx(length, rel=1e-9)


def test_cache_is_rebuilt_when_the_manifold_changes(learned_surface):
    # Catches a graph kept after the weights changed (distances of the old M).
    model, pts = learned_surface
    solver = GeodesicLogSolver(model, n_graph_nodes=800)
    g1 = solver.graph(pts)
    assert solver.graph(pts) is g1  # unchanged manifold: cached
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        with torch.no_grad():
            next(model.parameters()).mul_(1.01)
        assert solver.graph(pts) is not g1
    finally:
        model.load_state_dict(saved)
    torus = ig.ImplicitTorus(3.0, 1.0)
    s2 = GeodesicLogSolver(torus, n_graph_nodes=800)
    g2 = s2.graph()
    with torch.no_grad():
        torus.minor_radius.fill_(0.9)  # a closed-form parameter (a buffer), changed in place
    assert s2.graph() is not g2


def test_sphere_pairwise_matches_hypersphere_and_flags_antipodes():
    # A plain torch callable (autograd derivatives). Catches a pairwise matrix
    # that differs from per-pair dist, is not symmetric, or misses antipodes.
    sphere = ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - 1) / 2, 3, 1,
                                 bounds=([-1.5] * 3, [1.5] * 3))
    pole = unit(1, 3, seed=5)
    pts = torch.cat([unit(12, 3), pole, -pole])  # the last two are antipodal
    res = sphere.metric.log_solver.pairwise(pts)
    ref = Hypersphere(2).metric.dist_pairwise(pts)
    assert float((res.dist - ref).abs().max()) <= 1e-7
    assert torch.equal(res.dist, res.dist.T) and float(res.dist.diagonal().abs().max()) == 0
    assert bool(res.ambiguous[12, 13]) and abs(float(res.dist[12, 13]) - math.pi) <= 1e-7
    assert int(torch.triu(res.ambiguous, 1).sum()) == 1
    d = sphere.metric.dist(pts[:5], pts[5:10])
    assert float((d - res.dist[torch.arange(5), torch.arange(5, 10)]).abs().max()) <= 1e-9
    assert float((sphere.metric.dist_pairwise(pts) - res.dist).abs().max()) == 0


def test_union_is_infinitely_far_across_components():
    # Catches a graph edge or route bridging two disjoint spheres.
    union = ig.union(ig.ImplicitSphere(2, 1.0), ig.ImplicitSphere(2, 1.0, center=[3.0, 0, 0]))
    pts = torch.cat([unit(4, 3), unit(4, 3, seed=1) + torch.tensor([3.0, 0, 0])])
    dist = union.metric.dist_pairwise(pts)
    assert bool(torch.isinf(dist[:4, 4:]).all())
    assert float((dist[:4, :4] - Hypersphere(2).metric.dist_pairwise(pts[:4])).abs().max()) <= 1e-7
    with pytest.raises(DisconnectedError):
        union.metric.log(pts[5], pts[0])


def test_union_of_a_large_and_a_small_piece_solves_on_each_piece():
    # Catches one sample graph over the union's box: it spread its nodes by
    # area, so the small sphere (radius 0.2 beside radius 5) got a few
    # disconnected nodes, and two points ON it came out +inf apart (dist,
    # dist_pairwise) and "on different components" (log: DisconnectedError).
    small_c = torch.tensor([8.0, 0.0, 0.0], dtype=torch.float64)
    union = ig.union(ig.ImplicitSphere(2, radius=5.0), ig.ImplicitSphere(2, radius=0.2,
                                                                         center=small_c))
    u = unit(6, 3)
    w = torch.nn.functional.normalize(-u + 0.3 * unit(6, 3, seed=3), dim=-1)
    x, y = small_c + 0.2 * u, small_c + 0.2 * w
    ref = 0.2 * Hypersphere(2).metric.dist(u, w)
    assert float((union.metric.dist(x, y) - ref).abs().max()) <= 1e-9
    assert float((union.metric.log(y, x).norm(dim=-1) - ref).abs().max()) <= 1e-9
    big = 5.0 * unit(2, 3, seed=2)
    pts = torch.cat([x, y, big])
    dist = union.metric.dist_pairwise(pts)
    assert float((dist[range(6), range(6, 12)] - ref).abs().max()) <= 1e-9
    assert bool(torch.isinf(dist[:12, 12:]).all())
    assert abs(float(dist[12, 13]) - 5.0 * float(Hypersphere(2).metric.dist(
        big[0] / 5, big[1] / 5))) <= 1e-9
    with pytest.raises(DisconnectedError) as info:
        union.metric.log(big[:2], x[:2])
    assert info.value.mask.tolist() == [True, True]
    path = union.metric.geodesic(initial_point=x[:2], end_point=y[:2])(
        torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert path.shape == (2, 3, 3)
    torch.testing.assert_close(path[:, -1], y[:2], rtol=0, atol=1e-8)
    assert float(((path - small_c).norm(dim=-1) - 0.2).abs().max()) <= 1e-9


def test_product_intersection_and_higher_dimension():
    # Product: factor by factor (sqrt of the sum of squared factor distances).
    prod = ig.product(ig.ImplicitTorus(3.0, 1.0), ig.ImplicitSphere(2))
    assert isinstance(prod.metric.log_solver, ProductLogSolver)
    torus = ig.ImplicitTorus(3.0, 1.0)
    a, b = torus.random_point(4), unit(4, 3)
    dist = prod.metric.dist_pairwise(torch.cat([a, b], -1))
    ref = (torus.metric.dist_pairwise(a) ** 2 + Hypersphere(2).metric.dist_pairwise(b) ** 2).sqrt()
    assert float((dist - ref).abs().max()) <= 1e-7
    # Intersection sphere ∩ plane: a circle (intrinsic dimension 1), arcs in
    # closed form; catches the long arc being returned.
    plane = ig.ImplicitManifold(lambda x: x[..., 2:3] - 0.3, 3, 1, bounds=([-1.5] * 3, [1.5] * 3))
    circle = ig.intersection(ig.ImplicitSphere(2), plane)
    ang = torch.tensor([0.1, 1.9, 3.5, 5.0], dtype=torch.float64)
    rad = math.sqrt(1 - 0.09)
    pts = torch.stack([rad * ang.cos(), rad * ang.sin(), torch.full_like(ang, 0.3)], -1)
    gap = (ang[:, None] - ang[None]).abs()
    assert float((circle.metric.dist_pairwise(pts) - rad * torch.minimum(gap, 2 * math.pi - gap))
                 .abs().max()) <= 1e-7
    # S^3 in R^4 (intrinsic dimension 3: graph initialisation, no mesh).
    s3 = ig.ImplicitSphere(3)
    s3.equip_with_metric(ig.ImplicitMetric,
                         log_solver=lambda space: GeodesicLogSolver(space, n_graph_nodes=3000))
    pts = unit(5, 4)
    assert float((s3.metric.dist_pairwise(pts) - Hypersphere(3).metric.dist_pairwise(pts))
                 .abs().max()) <= 1e-7


def test_geodesic_bvp_and_bad_input():
    torus = ig.ImplicitTorus(3.0, 1.0)
    a = torus_embed(torch.tensor(0.3), torch.tensor(2.0), 3.0, 1.0)
    b = torus_embed(torch.tensor(-2.5), torch.tensor(-1.0), 3.0, 1.0)
    path = torus.metric.geodesic(initial_point=a, end_point=b)(torch.linspace(0, 1, 7))
    assert bool(torus.belongs(path, atol=1e-8).all())
    assert float((path[0] - a).norm()) <= 1e-8 and float((path[-1] - b).norm()) <= 1e-8
    # The path is the minimiser: its polygon is no longer than the distance.
    assert float((path[1:] - path[:-1]).norm(dim=-1).sum()) <= float(torus.metric.dist(a, b))
    with pytest.raises(InvalidPointError):
        torus.metric.dist(a, 1.1 * b)  # off M
    with pytest.raises(ValueError):
        torus.equip_with_metric(ig.ImplicitMetric, log_solver="bogus")


def test_exp_and_transport_reject_base_points_off_the_manifold():
    # Catches exp / geodesic / parallel_transport answering silently from a base
    # point off M (exp([0, .5, 0], [2, 0, 0]) gave (0.9689, 0.2474, 0)) while
    # log and dist raise: InvalidPointError, with the tolerance log uses.
    metric = ig.ImplicitSphere(2).metric
    off = torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
    v = torch.tensor([0.0, 0.5, 0.0], dtype=torch.float64)
    w = torch.tensor([0.0, 0.0, 0.5], dtype=torch.float64)
    for call in (lambda: metric.exp(v, off), lambda: metric.exp(v.requires_grad_(), off),
                 lambda: metric.geodesic(off, initial_tangent_vec=v)(torch.tensor([0.5])),
                 lambda: metric.parallel_transport(w, off, direction=v)):
        with pytest.raises(InvalidPointError, match="not on .*project them first"):
            call()
    v = v.detach()
    # Points on M to within the tolerance still go through.
    near = torch.tensor([1.0 + 1e-9, 0.0, 0.0], dtype=torch.float64)
    assert float(metric.exp(v, near).norm()) == pytest.approx(1.0, abs=1e-9)


# ----------------------------------------------------- shooting certificates
def _shoot_vs_graph(space, pts, **kw):
    shot = GeodesicLogSolver(space, shoot=True, **kw)
    res = shot.pairwise(pts)
    ref = GeodesicLogSolver(space, shoot=False, **kw).pairwise(pts)
    return res, ref, shot.stats


def test_certified_shots_equal_the_graph_solution_on_the_torus():
    # Distance matrices shoot every pair first and keep a shot geodesic only
    # when it is certified minimising. Catches a certificate that accepts a
    # shot that is not the minimiser (a longer geodesic of another winding,
    # past the injectivity radius): the shot-first matrix must equal the one
    # from the graph and path straightening alone, and each certificate (near,
    # injectivity, graph corridor) must have been used.
    torus = ig.ImplicitTorus(3.0, 1.0)
    gen = torch.Generator().manual_seed(4)
    ang = 2 * math.pi * torch.rand(14, 2, generator=gen, dtype=torch.float64)
    pts = torus_embed(ang[:, 0], ang[:, 1], 3.0, 1.0)
    pts = torch.cat([pts, torus.projection(pts[:2] + 0.05)])  # two near pairs
    res, ref, stats = _shoot_vs_graph(torus, pts)
    assert not bool(res.failed.any())
    assert float(((res.dist - ref.dist).abs() / ref.dist.clamp_min(1e-12)).max()) <= 1e-7
    assert stats["certified_near"] > 0 and stats["certified_injectivity"] > 0
    assert stats["far"] > 0


def test_certified_shots_on_a_learned_surface(learned_surface):
    # No closed-form curvature bound: the injectivity radius comes from the
    # curvature sampled on the graph, over the ball B(x, L) inside the box.
    # Catches a sampled bound that is too small (accepting shots past the
    # injectivity radius) through the same comparison as above.
    # Points moved by ~0.7 (beyond the near radius) give pairs for the
    # injectivity certificate.
    model, pts = learned_surface
    pts = pts[1:7]
    pts = torch.cat([pts, model.projection(pts[:3] + torch.tensor([0.5, 0.5, 0.0]))])
    res, ref, stats = _shoot_vs_graph(model, pts)
    assert not bool(res.failed.any())
    assert float(((res.dist - ref.dist).abs() / ref.dist.clamp_min(1e-12)).max()) <= 1e-7
    assert stats["certified_injectivity"] > 0, stats


def test_curvature_bounds_match_the_principal_curvatures():
    # The injectivity certificate needs kappa >= |II(u, u)| on all of M.
    # Torus R=1.5, r=1: the largest principal curvature is 1/(R - r) = 2 on
    # the inner equator (not 1/r); catches a bound that misses it. The
    # sampled bound on a sphere of radius 2 whose F has |grad F| = 2 on M
    # must be 1/2 at every node: catches a missing division by |grad F|.
    torus = ig.ImplicitTorus(1.5, 1.0)
    assert torus._curvature_bound() == pytest.approx(2.0)
    kappa = GeodesicLogSolver(torus, n_graph_nodes=1500).graph().curvature()
    assert float(kappa.max()) <= 2.0 * (1 + 1e-9) and float(kappa.max()) >= 1.9
    sphere = ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - 4) / 2, 3, 1,
                                 bounds=([-2.5] * 3, [2.5] * 3))
    kappa = GeodesicLogSolver(sphere, n_graph_nodes=300).graph().curvature()
    assert float(abs(kappa - 0.5).max()) <= 1e-8
    assert ig.ImplicitSphere(2, 2.0)._curvature_bound() == pytest.approx(0.5)


def test_cluster_counts_match_connected_components():
    # The batched cluster search (all level sets of all pairs in one graph)
    # against scipy on each masked subgraph separately. Catches edges leaking
    # between the copies of different sets, or a wrong best node per cluster.
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    from implicit_geom.manifolds.geodesics import _cluster_tops, _count_clusters

    rng = np.random.default_rng(0)
    n, deg = 60, 3
    table = rng.integers(0, n, size=(n, deg))
    table[rng.random((n, deg)) < 0.3] = -1
    src, dst = np.repeat(np.arange(n), deg), table.reshape(-1)
    keep = dst >= 0
    adj = coo_matrix((np.ones(keep.sum()), (src[keep], dst[keep])), shape=(n, n)).tocsr()
    adj = adj.maximum(adj.T)
    # The batched search reads the (symmetric) neighbour table of the graph.
    rows = [adj.indices[adj.indptr[i]:adj.indptr[i + 1]] for i in range(n)]
    table = np.full((n, max(len(r) for r in rows)), -1)
    for i, r in enumerate(rows):
        table[i, :len(r)] = r
    masks = rng.random((9, n)) < 0.4
    masks[0] = False  # an empty set
    totals = rng.random((9, n))
    pts = rng.random((n, 3))
    counts = _count_clusters(table, masks, chunk=4)
    tops = _cluster_tops(table, pts, masks, totals, reach=0.0)
    for k in range(9):
        members = np.flatnonzero(masks[k])
        if members.size == 0:
            assert counts[k] == 0 and tops[k] == []
            continue
        n_comp, labels = connected_components(adj[members][:, members], directed=False)
        assert counts[k] == n_comp
        best = {int(members[labels == c][np.argmin(totals[k, members[labels == c]])])
                for c in range(n_comp)}
        assert set(tops[k]) == best


# ------------------------------------------------------------ worker processes
@pytest.mark.parametrize("shoot", [False, True])
def test_distance_matrix_in_worker_processes_equals_one_process(record_forks, shoot):
    # n_jobs splits the far pairs among this process and forked children.
    # Catches a part's results written to the wrong pairs or lost (they come
    # back from the children), certificates counted in one part only, and an
    # n_jobs that is ignored (the parts must run in distinct processes).
    import os

    from implicit_geom.manifolds import geodesics

    pids = record_forks(geodesics)
    torus = ig.ImplicitTorus(3.0, 1.0)
    gen = torch.Generator().manual_seed(2)
    ang = 2 * math.pi * torch.rand(24, 2, generator=gen, dtype=torch.float64)
    pts = torus_embed(ang[:, 0], ang[:, 1], 3.0, 1.0)
    one = GeodesicLogSolver(torus, n_graph_nodes=800, shoot=shoot)
    ref = one.pairwise(pts)
    assert not pids  # n_jobs=1 never forks
    two = GeodesicLogSolver(torus, n_graph_nodes=800, shoot=shoot, n_jobs=2)
    res = two.pairwise(pts)
    assert len(pids) == 2 and len(set(pids)) == 2 and pids[0] == os.getpid()
    assert not bool(res.failed.any())
    # Batches of other sizes round differently: equal to well below rtol (1e-6).
    assert float(((res.dist - ref.dist).abs() / ref.dist.clamp_min(1e-12)).max()) <= 1e-8
    assert torch.equal(res.ambiguous, ref.ambiguous)
    assert two.stats == one.stats and one.stats["far"] >= 128
    if shoot:
        assert one.stats["certified_graph"] > 0
    # The metric's dist_pairwise takes n_jobs per call (geomstats' signature).
    pids.clear()
    torus.equip_with_metric(ig.ImplicitMetric, log_solver=lambda space: GeodesicLogSolver(
        space, n_graph_nodes=800, shoot=shoot))
    d = torus.metric.dist_pairwise(pts, n_jobs=2)
    assert len(pids) == 2
    assert float(((d - ref.dist).abs() / ref.dist.clamp_min(1e-12)).max()) <= 1e-8


def test_distance_matrix_shows_progress_of_the_straightening(monkeypatch):
    # Catches a bar that never reaches its total (routes that settle, fail or
    # are pruned left uncounted, or counted twice) and a progress flag that is
    # ignored; below PROGRESS_MIN_ROUTES a call stays silent.
    from implicit_geom.manifolds import geodesics

    bars = []

    class Recorder:
        def __init__(self, total, desc, enabled=True):
            self.total, self.enabled, self.count = total, enabled, 0
            bars.append(self)

        def update(self, n=1, **postfix):
            assert n >= 0
            self.count += n

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(geodesics, "Progress", Recorder)
    torus = ig.ImplicitTorus(3.0, 1.0)
    gen = torch.Generator().manual_seed(2)
    ang = 2 * math.pi * torch.rand(24, 2, generator=gen, dtype=torch.float64)
    pts = torus_embed(ang[:, 0], ang[:, 1], 3.0, 1.0)
    solver = GeodesicLogSolver(torus, n_graph_nodes=800, shoot=False)
    monkeypatch.setattr(solver, "PROGRESS_MIN_ROUTES", 64)
    solver.pairwise(pts)
    shown = [b for b in bars if b.enabled]
    assert len(shown) == 1 and shown[0].total >= 64
    assert shown[0].count == shown[0].total
    bars.clear()
    GeodesicLogSolver(torus, n_graph_nodes=800, shoot=False, progress=False).pairwise(pts)
    assert bars and not any(b.enabled for b in bars)


def test_n_jobs_is_checked():
    torus = ig.ImplicitTorus(3.0, 1.0)
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="n_jobs"):
            GeodesicLogSolver(torus, n_jobs=bad)
    with pytest.raises(ValueError, match="n_jobs"):
        GeodesicLogSolver(torus).pairwise(torus.random_point(3), n_jobs=0)


def test_same_component_pair_not_joined_in_the_graph_raises():
    # Catches a silent +inf: a solver box that cuts the torus (one component)
    # into two pieces left its sample graph disconnected, and dist returned
    # +inf for two points of the one component. Now: a GeodesicError saying why.
    torus = ig.ImplicitTorus()
    solver = GeodesicLogSolver(torus, n_graph_nodes=400,
                               bounds=([-3.2, -0.6, -1.2], [3.2, 0.6, 1.2]))
    a = torch.tensor([[2.0, 0.0, 1.0]], dtype=torch.float64)
    b = torch.tensor([[-2.0, 0.0, 1.0]], dtype=torch.float64)
    with pytest.raises(GeodesicError, match="not joined in the geodesic sample graph"):
        solver.dist(a, b)
    res = solver.pairwise(torch.cat([a, b]))
    assert bool(res.failed[0, 1]) and not math.isinf(float(res.dist[0, 1]))


def test_n_neighbors_is_checked_and_one_edge_per_query_works():
    # Catches GeodesicLogSolver(n_neighbors=1) crashing with an IndexError
    # (np.atleast_2d turned the 1-D k=1 query into one row, not one column)
    # and n_neighbors=0 silently taking the default: below 2 it is refused,
    # since nearest neighbours alone leave the graph in pieces.
    circle = ig.ImplicitSphere(1)
    for bad in (0, 1, 1.5, True):
        with pytest.raises(ValueError, match="n_neighbors"):
            GeodesicLogSolver(circle, n_neighbors=bad)
    # n_graph_nodes=0 silently took the default and 1.5 was truncated to 1;
    # fewer nodes than neighbours cannot make the graph.
    for bad in (0, 1.5, 3):
        with pytest.raises(ValueError, match="n_graph_nodes"):
            GeodesicLogSolver(circle, n_graph_nodes=bad)
    graph = GeodesicLogSolver(circle, n_graph_nodes=200,
                              bounds=([-1.5, -1.5], [1.5, 1.5])).graph()
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.6, 0.8]], dtype=torch.float64)
    rows, cols, _ = graph._edges(x, graph.points, 1)
    assert rows.tolist() == [0, 1, 2]
    assert torch.allclose(graph.points[cols], x, atol=0.05)


def _unit_level(x):
    return ((x * x).sum(-1, keepdim=True) - 1.0) / 2


def _torus_level(x):
    q = (x[..., :2] ** 2).sum(-1).sqrt() - 2.0
    return ((q * q + x[..., 2] ** 2 - 1.0) / 2).unsqueeze(-1)


def test_two_neighbours_graph_is_joined_on_a_connected_manifold():
    # Catches a k-NN graph with n_neighbors=2 left in pieces (a circle split
    # into two arcs, a sphere into 4, a torus into 3): half the circle's
    # distances went the long way round (3.28 for an arc of 3), and the
    # torus's chains of nodes had graph routes twice the geodesic, which
    # straightened onto longer geodesics. Its pieces are bridged (and the
    # zigzags shortcut) by checked edges now.
    circle = ig.ImplicitManifold(_unit_level, 2, 1, bounds=([-1.5] * 2, [1.5] * 2))
    solver = GeodesicLogSolver(circle, n_neighbors=2, n_graph_nodes=200)
    ang = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.5], dtype=torch.float64)
    x = torch.stack([ang.cos(), ang.sin()], -1)
    d = solver.dist(torch.tensor([[1.0, 0.0]], dtype=torch.float64).expand(5, 2), x)
    torch.testing.assert_close(d, torch.minimum(ang, 2 * math.pi - ang), rtol=0, atol=1e-6)
    assert solver.graph().n_components == 1

    sphere = ig.ImplicitManifold(_unit_level, 3, 1, bounds=([-1.5] * 3, [1.5] * 3))
    solver = GeodesicLogSolver(sphere, n_neighbors=2, n_graph_nodes=1000)
    p = unit(6, 3, seed=1)
    q = torch.nn.functional.normalize(-p + 0.3 * unit(6, 3, seed=2), dim=-1)  # near antipodes
    torch.testing.assert_close(solver.dist(p, q), torch.arccos((p * q).sum(-1).clamp(-1, 1)),
                               rtol=0, atol=1e-6)
    assert solver.graph().n_components == 1

    torus = ig.ImplicitManifold(_torus_level, 3, 1, bounds=([-3.5] * 3, [3.5] * 3))
    gen = torch.Generator().manual_seed(1)
    u, v = torch.rand(2, 12, generator=gen, dtype=torch.float64) * 2 * math.pi
    pts = torch.stack([(2 + v.cos()) * u.cos(), (2 + v.cos()) * u.sin(), v.sin()], -1)
    solver = GeodesicLogSolver(torus, n_neighbors=2, n_graph_nodes=2000)
    res = solver.pairwise(pts)
    assert solver.graph().n_components == 1 and not bool(res.failed.any())
    # The analytic torus's own solver (default neighbours) as the reference.
    ref = GeodesicLogSolver(ig.ImplicitTorus(2.0, 1.0), n_graph_nodes=2000).pairwise(pts)
    torch.testing.assert_close(res.dist, ref.dist, rtol=1e-6, atol=1e-6)


def test_two_neighbours_graph_keeps_close_circles_apart():
    # Bridging the pieces of the graph uses the checked edges only: two circles
    # 0.1 apart (closer than the graph's reach) stay two pieces, and log across
    # them names why.
    centres = torch.tensor([[-1.05, 0.0], [1.05, 0.0]], dtype=torch.float64)

    def f(x):
        sq = ((x[..., None, :] - centres) ** 2).sum(-1) - 1.0
        return (sq[..., 0] * sq[..., 1]).unsqueeze(-1)

    curves = ig.ImplicitManifold(f, 2, 1, bounds=([-3.0, -1.5], [3.0, 1.5]))
    solver = GeodesicLogSolver(curves, n_neighbors=2, n_graph_nodes=300)
    graph = solver.graph()
    graph.matrix  # noqa: B018
    side = graph.points[:, 0] > 0
    assert graph.n_components == 2
    assert len(set(graph.labels[side.numpy()])) == 1 and len(set(graph.labels[~side.numpy()])) == 1
    a = torch.tensor([[-0.05, 0.0]], dtype=torch.float64)
    b = torch.tensor([[0.05, 0.0]], dtype=torch.float64)
    assert math.isinf(float(solver.dist(a, b)))
    with pytest.raises(DisconnectedError, match="not joined in its sample graph"):
        solver.log(b, a)


@pytest.mark.parametrize("name", ["torus", "ellipsoid"])
def test_distances_at_large_length_scale_are_the_unit_ones_scaled(name):
    # Catches path straightening at large coordinates: its first landing of
    # the graph's chords (off M by a fraction of the path length, hundreds of
    # units at scale 1e4) used the damped Newton alone, whose mu = |F|^2 stalls
    # there: every path failed (GeodesicError) on the torus and ellipsoid at 1e4.
    x, y, z = sympy.symbols("x y z")

    def build(s):
        if name == "torus":
            return ig.ImplicitTorus(2.0 * s, 1.0 * s)
        return ig.from_sympy([(x**2 / 9 + y**2 / 4 + z**2 - s**2) / (2 * s)], [x, y, z],
                             bounds=([-4.5 * s, -3 * s, -1.5 * s], [4.5 * s, 3 * s, 1.5 * s]))

    raw = torch.tensor([[3.0, 0, 0], [0, 1.0, 1.0], [-3.0, 0.0, 0.0]],
                       dtype=torch.float64) + 0.01
    out = {}
    for s in (1.0, 1e4):
        space = build(s)
        p = space.projection(raw * s)
        out[s] = space.metric.dist(p[0], p[1:]) / s
        v = space.metric.log(p[2], p[0])
        assert torch.allclose(space.metric.exp(v, p[0]), p[2], rtol=0, atol=1e-9 * s)
        assert bool(space.belongs(space.random_point(10)).all())
    assert torch.allclose(out[1e4], out[1.0], rtol=1e-7, atol=0)


def test_distances_at_small_length_scale_are_the_unit_ones_scaled():
    # Catches absolute tolerances (integrator atol, Newton tol, shooting's
    # log_tol * (1 + |y|)) on a torus of size 1e-3: distances 4e-9 off the
    # unit ones scaled, exp(log) 5e-8 of the size off the target. They now
    # scale with the box (ImplicitManifold.tol_scale).
    raw = torch.tensor([[3.0, 0, 0], [0, 1.0, 1.0], [-3.0, 0.0, 0.0]],
                       dtype=torch.float64) + 0.01
    out = {}
    for s in (1.0, 1e-3):
        space = ig.ImplicitTorus(2.0 * s, 1.0 * s)
        p = space.projection(raw * s)
        out[s] = space.metric.dist(p[0], p[1:]) / s
        v = space.metric.log(p[2], p[0])
        assert torch.allclose(space.metric.exp(v, p[0]), p[2], rtol=0, atol=2e-8 * s)
    assert torch.allclose(out[1e-3], out[1.0], rtol=1e-9, atol=0)


def test_log_polishes_at_coordinates_around_1e6():
    # Catches shooting's normal-miss bound 10 * on_manifold_atol (absolute):
    # the integrator drifts ~rtol |x| off M (3e-4 at 3e6), so on the
    # ellipsoid at scale 1e6 every shot "missed" and log fell back to the
    # unpolished velocity: exp(log) 4e-7 of the size off the target.
    x, y, z = sympy.symbols("x y z")
    s = 1e6
    space = ig.from_sympy([(x**2 / 9 + y**2 / 4 + z**2 - s**2) / (2 * s)], [x, y, z],
                          bounds=([-4.5 * s, -3 * s, -1.5 * s], [4.5 * s, 3 * s, 1.5 * s]))
    raw = torch.tensor([[3.0, 0, 0], [-3.0, 0.0, 0.0]], dtype=torch.float64) + 0.01
    p = space.projection(raw * s)
    v = space.metric.log(p[1], p[0])
    assert space.metric.log_solver.stats["unpolished"] == 0
    assert torch.allclose(space.metric.exp(v, p[0]), p[1], rtol=0, atol=1e-11 * s)
