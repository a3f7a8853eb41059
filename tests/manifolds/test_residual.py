"""ResidualMDFNetwork: the large-codimension defining function (principal normals + MLP)
and Newton projection onto its zero set at codimension 56."""

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from implicit_geom.manifolds.neural import NetworkImplicitManifold
from implicit_geom.manifolds.residual import ResidualMDFNetwork
from implicit_geom.numerics import autodiff


def _data(n_points=300, ambient=12, seed=0):
    """Anisotropic Gaussian data in R^ambient (distinct variances per axis), rotated."""
    gen = torch.Generator().manual_seed(seed)
    std = torch.linspace(2.0, 0.1, ambient, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(ambient, ambient, generator=gen, dtype=torch.float64))
    return (torch.randn(n_points, ambient, generator=gen, dtype=torch.float64) * std) @ q.T + 3.0


def test_exact_jacobian_matches_autograd():
    # Catches a Jacobian that forgets the linear part, the 1/scale of the input
    # standardisation, or the slope of init_from_data.
    x = _data()
    net = ResidualMDFNetwork(12, 9, hidden=(16, 16), init_gain=1.0).init_from_data(x, slope=2.5)
    value, jac = net.value_and_jacobian(x[:20])
    ref_value, ref_jac = autodiff.jacobian(net, x[:20])
    torch.testing.assert_close(value, ref_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jac, ref_jac, rtol=1e-10, atol=1e-12)


def test_initial_zero_set_is_the_principal_subspace():
    # With g = 0 the zero set must be PCA's affine subspace: projecting a point
    # gives its PCA reconstruction (scikit-learn as the independent reference).
    # Catches normals taken from the largest instead of the smallest singular
    # values, or a wrong shift.
    x = _data()
    m = 3
    net = ResidualMDFNetwork(12, 12 - m, hidden=(8,), init_gain=0.0).init_from_data(x, slope=4.0)
    manifold = NetworkImplicitManifold(net, 12, 12 - m)
    pca = PCA(m).fit(x.numpy())
    test = _data(50, seed=1)
    ref = pca.inverse_transform(pca.transform(test.numpy()))
    np.testing.assert_allclose(manifold.projection(test).detach().numpy(), ref, atol=1e-8)
    # Every singular value of J equals the slope (in the units of x).
    np.testing.assert_allclose(manifold.singular_values(test).detach().numpy(), 4.0, rtol=1e-10)


def test_newton_projection_at_codimension_56():
    # 64-dimensional points onto an 8-dimensional zero set of a curved residual
    # network: every point converges, lands on M, and is the closest point
    # (the displacement is normal: orthogonal to the kernel of J). Catches a
    # Newton step that assumes one constraint, or a closest-point refinement
    # that stops at the foot of the Newton path.
    gen = torch.Generator().manual_seed(0)
    basis = torch.randn(8, 64, generator=gen, dtype=torch.float64)
    coords = torch.rand(400, 8, generator=gen, dtype=torch.float64)
    x = torch.sin(3 * coords) @ basis + 0.05 * torch.randn(400, 64, generator=gen,
                                                           dtype=torch.float64)
    torch.manual_seed(0)
    net = ResidualMDFNetwork(64, 56, hidden=(64, 64), init_gain=0.5).init_from_data(x)
    manifold = NetworkImplicitManifold(net, 64, 56, tol=1e-10, max_iter=100)
    res = manifold.solve_projection(x[:100])
    assert bool(res.converged.all())
    assert float(manifold.submersion(res.x).norm(dim=-1).max()) <= 1e-10
    jac = manifold.jacobian(res.x)
    disp = (x[:100] - res.x).unsqueeze(-1)
    normal_part = jac.transpose(-1, -2) @ torch.linalg.lstsq(jac.transpose(-1, -2), disp).solution
    tangential = (disp - normal_part).squeeze(-1).norm(dim=-1)
    assert float(tangential.max()) <= 1e-8
    # The projection moved points by a non-trivial amount (the test is not vacuous).
    assert float((x[:100] - res.x).norm(dim=-1).median()) > 1e-2


def test_init_from_data_checks_the_data():
    # Catches one point giving a NaN scale (std of one sample) silently, and
    # data of another width failing in a torch broadcast (RuntimeError).
    from implicit_geom.exceptions import EmptyDataError, InvalidPointError

    x = _data()
    net = ResidualMDFNetwork(12, 9, hidden=(8,))
    with pytest.raises(EmptyDataError):
        net.init_from_data(x[:1])
    with pytest.raises(InvalidPointError):
        net.init_from_data(x[:, :5])
    assert torch.isfinite(net.scale) and torch.isfinite(net.normals).all()


def test_bad_arguments():
    with pytest.raises(ValueError):
        ResidualMDFNetwork(4, 4)
    with pytest.raises(ValueError):
        ResidualMDFNetwork(4, 2, activation="relu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_residual_manifold_on_gpu():
    # Everything stays on the GPU: projection at codimension 56 and a chord-
    # solved constrained Langevin run (a CPU tensor inside either would raise
    # a device-mismatch error).
    from implicit_geom.sampling import ConstrainedLangevin

    gen = torch.Generator().manual_seed(0)
    x = torch.sin(3 * torch.rand(200, 8, generator=gen, dtype=torch.float64)) @ \
        torch.randn(8, 64, generator=gen, dtype=torch.float64)
    net = ResidualMDFNetwork(64, 56, hidden=(32,), init_gain=0.5).init_from_data(x)
    manifold = NetworkImplicitManifold(net.requires_grad_(False), 64, 56).to("cuda")
    points = manifold.projection(x[:50].cuda())
    assert points.device.type == "cuda"
    samples, info = ConstrainedLangevin(manifold, None, step_size=0.05, seed=0).run(points, 5)
    assert samples.device.type == "cuda" and info.max_abs_F <= 1e-9
