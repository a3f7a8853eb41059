"""Energy networks: EnergyMLP, PolynomialEnergy and AnchoredVMFEnergy (shapes, dtype, seeding, sums)."""

import math

import pytest
import torch

from implicit_geom.models import EnergyMLP


def test_shapes_dtype_and_seeded_init():
    net = EnergyMLP(3, hidden=(16, 8), seed=1)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    assert net(x).shape == (5, 4)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    same = EnergyMLP(3, hidden=(16, 8), seed=1)
    other = EnergyMLP(3, hidden=(16, 8), seed=2)
    assert torch.equal(net(x), same(x))
    assert not torch.equal(net(x), other(x))
    assert net.config() == {"dim": 3, "hidden": [16, 8], "activation": "silu"}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        EnergyMLP(0)
    with pytest.raises(ValueError):
        EnergyMLP(2, activation="relu6")


def test_fourier_feature_cache_is_exact_and_never_stale():
    # Large fixed inputs (quadrature nodes) get their features cached.
    # Catches a cache that returns stale features after the input is edited
    # in place or the frequencies change (loaded state), or that swallows the
    # graph of an input that needs gradients (samplers differentiate in x).
    from implicit_geom.models.energy_nets import FourierFeatures

    feats = FourierFeatures(3, 16, max_frequency=4.0, seed=0)
    x = torch.randn(FourierFeatures.CACHE_MIN_ROWS, 3, dtype=torch.float64)

    def fresh(x, freq):
        proj = x @ freq.T
        return torch.cat([x, proj.sin(), proj.cos()], -1)

    first = feats(x)
    assert feats(x) is first  # cached
    assert feats(x[:]) is first  # a view of the same data hits too
    torch.testing.assert_close(first, fresh(x, feats.frequencies), rtol=0, atol=0)
    x[0, 0] += 1.0  # in place: a new version
    torch.testing.assert_close(feats(x), fresh(x, feats.frequencies), rtol=0, atol=0)
    other = FourierFeatures(3, 16, max_frequency=4.0, seed=1)
    feats.load_state_dict(other.state_dict())  # new frequencies, copied in place
    torch.testing.assert_close(feats(x), fresh(x, other.frequencies), rtol=0, atol=0)
    xg = x.clone().requires_grad_(True)
    feats(xg).sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    small = x[:10]
    assert feats(small) is not feats(small)  # small batches are not cached


def test_kernel_concentrations_are_capped_at_repeated_points():
    # Repeated points put k-NN distances at the floor, and leave-one-out
    # likelihood then drives their concentrations up without bound (volcano:
    # NaN loss after 512 steps). Catches a missing cap: at c = e^20 the
    # uncapped kernels (kappa ~ 5e16) give non-finite gradients.
    import math

    from implicit_geom.datasets import vmf_sphere
    from implicit_geom.models.energy_nets import KAPPA_MAX, AnchoredVMFEnergy

    X = vmf_sphere(40, [0.0, 0.0, 1.0], 6.0, seed=1)
    X = torch.cat([X, X[:10]])
    energy = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0, adapt_kernels=True, k=1)
    energy.set_anchors(X, init=False)
    with torch.no_grad():
        energy.log_c.fill_(20.0)
    assert float(energy._kappa().detach().max()) == pytest.approx(KAPPA_MAX)
    loss = energy.loo_energy(X, torch.arange(50)).mean() + energy.log_partition()
    loss.backward()
    assert math.isfinite(float(loss.detach()))
    assert all(torch.isfinite(p.grad).all() for p in energy.parameters() if p.grad is not None)


def test_sparse_kernel_sums_match_the_dense_ones():
    # The sparse path (kernels within reach of each point, found by k-d trees
    # grouped by reach) against the dense sum: catches kernels that are left
    # out although they matter (wrong reach or group radius), a wrong
    # leave-one-out exclusion, broad kernels (reaching everywhere) dropped,
    # points beyond every kernel (only the floor left), and gradients that
    # do not flow to the concentrations or to the points.
    from implicit_geom.datasets import vmf_sphere
    from implicit_geom.models.energy_nets import AnchoredVMFEnergy
    from implicit_geom.models.normalization import sphere_quadrature

    X = vmf_sphere(600, [0.0, 0.0, 1.0], 20.0, seed=3)
    X = torch.cat([X, X[:40]])  # repeated points: kernels at the distance floor
    energy = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0, adapt_kernels=True)
    energy.set_anchors(X, init=False)
    with torch.no_grad():
        energy.log_c.fill_(1.0)
        shift = 3.0 * torch.randn(640, generator=torch.Generator().manual_seed(1),
                                  dtype=torch.float64)
        shift[:25] = -25.0  # broad kernels: kappa << 1
        energy.log_kappa_shift.copy_(shift)
        energy.floor_logit.fill_(-8.0)
    assert int((energy._kappa() < 0.1).sum()) >= 20
    pts, _ = energy._nodes(4, 4)
    south = torch.tensor([[0.0, 0.0, -1.0]], dtype=torch.float64)  # beyond the sharp kernels
    queries = torch.cat([pts.detach()[::7], sphere_quadrature(20, 40).points, south]).requires_grad_()
    dense = energy._log_q(queries, sparse=False)
    sparse = energy._log_q(queries, sparse=True)
    assert torch.allclose(sparse, dense, rtol=0, atol=1e-9)
    grads = [torch.autograd.grad(v.sum(), [queries, energy.log_c, energy.log_kappa_shift])
             for v in (dense, sparse)]
    for g_dense, g_sparse in zip(*grads):
        assert torch.allclose(g_sparse, g_dense, rtol=1e-7, atol=1e-9)
    idx = torch.arange(0, 640, 3)
    loo = [energy._log_q(X[idx], exclude=idx, sparse=s) for s in (False, True)]
    assert torch.allclose(loo[1], loo[0], rtol=0, atol=1e-9)
    with torch.no_grad():  # no broad kernel left: points far from all see the floor only
        energy.log_kappa_shift[:25] = 3.0
    assert torch.allclose(energy._log_q(south, sparse=True), energy._log_q(south, sparse=False),
                          rtol=0, atol=1e-12)
    # An anchor beyond every other kernel's reach: its leave-one-out row is
    # empty (catches a NaN gradient from log 0).
    lone = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0, adapt_kernels=True)
    lone.set_anchors(torch.cat([X, south]), init=False)
    with torch.no_grad():
        lone.log_c.fill_(1.0)
        lone.log_kappa_shift.fill_(3.0)
    own = torch.tensor([640])
    values = [lone._log_q(south, exclude=own, sparse=s) for s in (False, True)]
    assert torch.allclose(values[1], values[0], rtol=0, atol=1e-12)
    grad = torch.autograd.grad(values[1].sum(), [lone.log_c, lone.log_kappa_shift])
    assert all(torch.isfinite(g).all() for g in grad)


def test_polynomial_features_are_every_monomial_once():
    # Catches a missing or repeated monomial (the family would not be all
    # polynomials of the degree) and non-finite gradients at zero coordinates
    # (a pow-based feature map gives 0 * inf there).
    import itertools

    from implicit_geom.models import PolynomialEnergy

    net = PolynomialEnergy(3, 3, center=[0.5, 0.0, -1.0], scale=2.0)
    assert net.n_features == math.comb(3 + 3, 3) - 1
    x = torch.randn(7, 3, dtype=torch.float64)
    u = (x - torch.tensor([0.5, 0.0, -1.0], dtype=torch.float64)) / 2.0
    exps = [a for a in itertools.product(range(4), repeat=3) if 1 <= sum(a) <= 3]
    ref = torch.stack([(u ** torch.tensor(a)).prod(-1) for a in exps], -1)
    feats = net.features(x)
    assert torch.allclose(feats.sort(-1).values, ref.sort(-1).values, atol=1e-14)
    # Each reference monomial is matched by exactly one feature column.
    match = (feats[:, :, None] - ref[:, None, :]).abs().amax(0) < 1e-12
    assert bool((match.sum(0) == 1).all()) and bool((match.sum(1) == 1).all())
    assert net(torch.randn(4, 5, 3, dtype=torch.float64)).shape == (4, 5)
    torch.nn.init.normal_(net.coef, generator=torch.Generator().manual_seed(0))
    z = torch.tensor([[0.5, 0.0, -1.0]], dtype=torch.float64, requires_grad=True)
    net(z).sum().backward()
    assert bool(torch.isfinite(z.grad).all())
    with pytest.raises(ValueError):
        PolynomialEnergy(3, 0)
    with pytest.raises(ValueError):
        PolynomialEnergy(3, 2, scale=0.0)
    with pytest.raises(ValueError):
        net(torch.zeros(2, 2, dtype=torch.float64))


def test_degree_one_polynomial_mle_is_the_closed_form_vmf_fit(tmp_path):
    # Exact maximum likelihood of the degree-1 energy on S^2 is the vMF MLE,
    # whose closed form solves coth(kappa) - 1/kappa = |mean(x)| along
    # mean(x). Catches a wrong sign or normalisation of the polynomial energy
    # in the likelihood, and a save/load that loses its settings.
    from implicit_geom.datasets import vmf_sphere
    from implicit_geom.manifolds import ImplicitSphere
    from implicit_geom.models import ConstrainedEBM, PolynomialEnergy

    X = vmf_sphere(3000, [0.0, 0.6, 0.8], 3.0, seed=0)
    model = ConstrainedEBM(ImplicitSphere(2), PolynomialEnergy(3, 1), method="mle",
                           n_iter=1500, lr=1e-2, batch_size=2048, seed=0).fit(X)
    mean = X.mean(0)
    rbar, kappa = float(mean.norm()), 3.0
    for _ in range(50):  # Newton on coth(k) - 1/k = rbar
        kappa -= ((1 / math.tanh(kappa) - 1 / kappa - rbar)
                  / (1 / kappa ** 2 - 1 / math.sinh(kappa) ** 2))
    closed = kappa * mean / rbar
    assert torch.allclose(-model.energy_net.coef.detach(), closed, rtol=0, atol=0.02 * kappa)
    model.save(tmp_path / "poly.pt")
    back = ConstrainedEBM.load(tmp_path / "poly.pt", ImplicitSphere(2))
    assert isinstance(back.energy_net, PolynomialEnergy) and back.energy_net.degree == 1
    assert torch.equal(back.log_prob(X[:10]), model.log_prob(X[:10]))


def test_anchored_energy_loads_a_state_of_another_size():
    # The kernel buffers are sized by the anchoring data: a fresh energy must
    # take the saved size in load_state_dict. Catches a size mismatch error,
    # or kernels left at the fresh energy's (empty) size.
    from implicit_geom.models import AnchoredVMFEnergy

    x = torch.randn(40, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x / x.norm(dim=-1, keepdim=True)
    fitted = AnchoredVMFEnergy(k=3, hidden=(8,), seed=0, adapt_kernels=True)
    fitted.set_anchors(x[:30])
    with torch.no_grad():
        fitted.log_kappa_shift.normal_(generator=torch.Generator().manual_seed(1))
    fresh = AnchoredVMFEnergy(k=3, hidden=(8,), seed=0, adapt_kernels=True)
    fresh.load_state_dict(fitted.state_dict())
    assert fresh.anchors.shape == (30, 3) and fresh.log_kappa_shift.requires_grad
    assert torch.equal(fresh(x), fitted(x))


def test_anchored_kernels_carry_their_exact_mass():
    # The bare kernel mixture (g = 0) has Z = 1 exactly. Catches the adapted
    # rule's per-kernel nodes missing mass (4 Legendre nodes at kappa 3-7 lost
    # up to 3.4% of a kernel; this set's log Z read -0.00275 with an error
    # estimate of 4e-5). With a non-zero g, the default rule must agree with a
    # fine one within its own error estimate.
    import torch

    from implicit_geom.models.energy_nets import AnchoredVMFEnergy

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 3, generator=gen, dtype=torch.float64)
    energy = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0)
    energy.set_anchors(x / x.norm(dim=-1, keepdim=True))
    kappa = energy._kappa().detach()
    assert float(kappa.min()) < 3 and float(kappa.max()) > 5  # the band at issue
    with torch.no_grad():
        assert abs(float(energy.log_partition())) < 1e-12
        assert abs(float(energy.log_partition(coarse=True))) < 1e-12
        for p in energy.net.parameters():  # a non-trivial g
            p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        value = float(energy.log_partition().detach())
        error = abs(value - float(energy.log_partition(coarse=True).detach()))
        energy.n_u = energy.n_phi = 32
        fine = float(energy.log_partition().detach())
    assert abs(value - fine) <= max(error, 1e-10)
