"""Manifolds are torch modules: .to(device, dtype), state_dict, dtype preserved,
no tensor created on the CPU inside a computation, geomstats' belongs convention."""

import copy

import pytest
import torch

import implicit_geom as ig
from implicit_geom.manifolds import MDFNetwork, NetworkImplicitManifold


def callable_sphere():
    return ig.ImplicitManifold(lambda x: ((x * x).sum(-1, keepdim=True) - 1) / 2, 3, 1,
                               bounds=([-1.5] * 3, [1.5] * 3))


def network_manifold():
    torch.manual_seed(0)
    net = MDFNetwork(3, 1, hidden=(8, 8), radial=1.0)
    return NetworkImplicitManifold(net, 3, 1, bounds=([-2.0] * 3, [2.0] * 3))


KINDS = {
    "closed_form": lambda: ig.ImplicitSphere(2),
    "callable": callable_sphere,
    "torus": lambda: ig.ImplicitTorus(2.0, 1.0),
    "union": lambda: ig.union(ig.ImplicitSphere(2), ig.ImplicitSphere(2, center=[4.0, 0, 0])),
    "network": network_manifold,
    # A curve: distances come from its arc-length table.
    "curve": lambda: ig.ImplicitManifold(
        lambda x: (x[..., :1] / 2) ** 2 + x[..., 1:] ** 2 - 1, 2, 1,
        bounds=([-2.5, -1.5], [2.5, 1.5])),
}


def start_points(manifold, n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return manifold.projection(manifold.random_point(n) + 0.01 * torch.randn(
        n, manifold.ambient_dim, generator=gen, dtype=torch.float64))


def test_state_dict_holds_closed_form_parameters_and_weights():
    # Catches parameters kept as plain attributes (not saved, not moved by .to).
    assert set(ig.ImplicitSphere(2).state_dict()) == {"center", "radius"}
    assert set(ig.ImplicitTorus().state_dict()) == {"major_radius", "minor_radius"}
    union = KINDS["union"]()
    assert set(union.state_dict()) == {f"components.{i}.{k}" for i in (0, 1)
                                       for k in ("center", "radius")}
    keys = set(network_manifold().state_dict())
    assert {"net.shift", "net.scale", "net.net.0.weight", "net.net.4.bias"} <= keys


def test_load_state_dict_changes_the_geometry():
    # Catches a state_dict that is saved but not used by the computations.
    target = ig.ImplicitSphere(2, radius=2.0, center=[1.0, 0.0, 0.0])
    sphere = ig.ImplicitSphere(2)
    sphere.load_state_dict(target.state_dict())
    x = torch.tensor([[4.0, 0.0, 0.0], [1.0, 5.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(sphere.projection(x), target.projection(x))
    torch.testing.assert_close(sphere.projection(x)[1], torch.tensor(
        [1.0, 2.0, 0.0], dtype=torch.float64))
    net = network_manifold()
    other = network_manifold()
    with torch.no_grad():
        other.net.net[0].weight.mul_(1.5)
    net.load_state_dict(other.state_dict())
    torch.testing.assert_close(net.submersion(x), other.submersion(x))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_float32_in_gives_float32_out(kind):
    # Catches results silently promoted to float64 (geomstats' convention is
    # that a method returns the dtype it was given).
    manifold = KINDS[kind]()
    p64 = start_points(manifold)
    p = p64.float()
    v = 0.2 * manifold.to_tangent(torch.randn(6, manifold.ambient_dim).float(), p)
    q = manifold.metric.exp(v, p)
    outs = {
        "submersion": manifold.submersion(p), "projection": manifold.projection(p * 1.01),
        "to_tangent": v, "exp": q, "log": manifold.metric.log(q, p),
        "dist": manifold.metric.dist(p, q), "retraction": manifold.retraction(v, p),
        "jacobian": manifold.jacobian(p),
    }
    assert {k: o.dtype for k, o in outs.items()} == {k: torch.float32 for k in outs}
    # Computed in the manifold's float64: accurate to float32 rounding.
    torch.testing.assert_close(outs["log"], v, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["closed_form", "network", "union"])
def test_moved_to_float32_computes_in_float32(kind):
    # Catches buffers left in float64 after .to(float32), and float64-only
    # tolerances (1e-10) that a float32 Newton can never reach.
    manifold = KINDS[kind]()
    p64 = start_points(manifold)
    manifold = manifold.to(torch.float32)
    assert manifold.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in manifold.state_dict().values())
    p = manifold.projection(p64.float() * 1.05)
    assert p.dtype == torch.float32
    assert float(manifold.submersion(p).abs().max()) <= manifold.tol_for() <= 1e-5
    v = 0.3 * manifold.to_tangent(torch.randn(6, p.shape[-1], dtype=torch.float32), p)
    q = manifold.metric.exp(v, p)
    torch.testing.assert_close(manifold.metric.log(q, p), v, rtol=0, atol=1e-4)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_tensor_is_created_on_the_default_device_inside_computations(kind):
    # With torch's default device set to "meta", any tensor a computation
    # creates without an explicit device (torch.eye(n), torch.ones(k), ...)
    # is a meta tensor and mixing it with the real inputs raises: the CPU
    # stand-in for "no tensor created on the CPU while the data is on the GPU".
    manifold = KINDS[kind]()
    p = start_points(manifold)
    v = 0.3 * manifold.to_tangent(torch.randn(6, p.shape[-1], dtype=torch.float64), p)
    q = manifold.metric.exp(v, p)
    with torch.device("meta"):
        manifold.projection(p * 1.02)
        manifold.to_tangent(v, p)
        manifold.metric.exp(v, p)
        manifold.metric.log(q, p)
        manifold.metric.dist(p, q)
        manifold.metric.metric_matrix(p)
        manifold.retraction(v, p)
        manifold.random_point(4)
        manifold.component_of(p)
        manifold.belongs(p)


def test_a_module_defining_function_sets_the_working_dtype():
    # A float32 network: computations run in float32 (tolerances floored at
    # what float32 resolves) instead of mixing float64 inputs with its weights.
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).float()
    with torch.no_grad():
        net[2].bias.fill_(-0.3)
    manifold = ig.ImplicitManifold(net, 3, 1)
    assert manifold.dtype == torch.float32
    y = manifold.projection(torch.randn(5, 3, dtype=torch.float64))
    assert y.dtype == torch.float64
    assert float(manifold.submersion(y).abs().max()) <= manifold.tol_for()


def test_belongs_is_false_for_wrong_shapes():
    # geomstats' LevelSetTestCase expects False (per batch entry), not an exception.
    sphere = ig.ImplicitSphere(2)
    assert sphere.belongs(torch.zeros(4)).shape == ()
    assert not bool(sphere.belongs(torch.zeros(4)))
    out = sphere.belongs(torch.ones(5, 2))
    assert out.shape == (5,) and not out.any()
    assert not sphere.is_tangent(torch.ones(2), torch.tensor([0.0, 0.0, 1.0])).any()
    assert bool(sphere.belongs(torch.tensor([0.0, 0.0, 1.0])))


def test_forward_is_the_differentiable_defining_function():
    # Catches a forward() that detaches: F must be trainable through the module.
    manifold = network_manifold()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    out = manifold(x)
    out.sum().backward()
    assert x.grad is not None and manifold.net.net[0].weight.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cuda_geometry_matches_cpu(kind):
    manifold = KINDS[kind]()
    p = start_points(manifold)
    v = 0.3 * manifold.to_tangent(torch.randn(6, p.shape[-1], dtype=torch.float64), p)
    ref = {"exp": manifold.metric.exp(v, p), "proj": manifold.projection(p * 1.02)}
    ref["log"] = manifold.metric.log(ref["exp"], p)
    ref["labels"] = manifold.component_of(p)
    gpu = manifold.to("cuda")
    pc, vc = p.cuda(), v.cuda()
    out = {"exp": gpu.metric.exp(vc, pc), "proj": gpu.projection(pc * 1.02)}
    out["log"] = gpu.metric.log(out["exp"], pc)
    out["labels"] = gpu.component_of(pc)
    for key in ref:
        assert out[key].device.type == "cuda"
        torch.testing.assert_close(out[key].cpu(), ref[key], rtol=0, atol=1e-8)


def test_a_curve_moved_to_float32_keeps_its_arc_lengths():
    # Catches the curve tables' float64-only tolerances (1e-12 integration,
    # 1e-10 checks, 1e-8 point matching): a network curve moved to float32
    # failed to trace (GeodesicError) or read one closed curve as two
    # (DisconnectedError) instead of giving its arc length.
    torch.manual_seed(0)
    net = MDFNetwork(2, 1, hidden=(8,), radial=1.0)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.1)
    curve64 = NetworkImplicitManifold(net, 2, 1, bounds=([-2.0] * 2, [2.0] * 2))
    curve32 = NetworkImplicitManifold(copy.deepcopy(net), 2, 1,
                                      bounds=([-2.0] * 2, [2.0] * 2)).to(torch.float32)
    x = torch.tensor([[1.0, 0.1], [0.0, 1.2]], dtype=torch.float64)
    p64, p32 = curve64.projection(x), curve32.projection(x.float())
    d64 = curve64.metric.dist(p64[:1], p64[1:])
    d32 = curve32.metric.dist(p32[:1], p32[1:])
    assert d32.dtype == torch.float32
    torch.testing.assert_close(d32.double(), d64, rtol=1e-4, atol=0)
