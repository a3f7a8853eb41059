"""ConstrainedEBM: vMF recovery on S^2, samples on M, W, errors, persistence."""

import math

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere
from scipy.optimize import brentq

from implicit_geom import ImplicitManifold, ImplicitSphere, ImplicitTorus, union
from implicit_geom.datasets import vmf_sphere
from implicit_geom.exceptions import CheckpointError, EmptyDataError, InvalidPointError
from implicit_geom.metrics import discretized_wasserstein
from implicit_geom.models import AnchoredVMFEnergy, ConstrainedEBM, EnergyMLP

MU = torch.tensor([0.0, 0.6, 0.8], dtype=torch.float64)
KAPPA = 5.0


def kappa_from_resultant(r):
    """Invert the mean resultant length of vMF on S^2, R = coth k - 1/k."""
    return brentq(lambda k: 1 / math.tanh(k) - 1 / k - r, 1e-4, 1e4)


def model_moments(model):
    """Mean direction and kappa of the model density, by quadrature."""
    rule = model.quadrature()
    p = model.log_prob(rule.points, normalized=True).exp() * rule.weights
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-10)
    mean = (p[:, None] * rule.points).sum(0)
    return mean / mean.norm(), kappa_from_resultant(float(mean.norm()))


def angle_deg(a, b):
    return math.degrees(math.acos(float((a @ b) / (a.norm() * b.norm())).__round__(12)))


@pytest.fixture(scope="module")
def vmf_data():
    return vmf_sphere(2000, MU, KAPPA, seed=0)


@pytest.fixture(scope="module")
def pcd_model(vmf_data):
    return ConstrainedEBM(ImplicitSphere(2), method="pcd", hidden=(32, 32), n_iter=250,
                          n_mcmc_steps=10, step_size=0.15, seed=0).fit(vmf_data)


def test_pcd_recovers_vmf_mean_and_concentration(pcd_model):
    direction, kappa = model_moments(pcd_model)
    assert angle_deg(direction, MU) < 10
    assert kappa == pytest.approx(KAPPA, rel=0.25)
    # The same from the model's samples (constrained Langevin from the buffer).
    samples = pcd_model.sample(2000, n_steps=50)
    mean = samples.mean(0)
    assert angle_deg(mean, MU) < 10
    assert kappa_from_resultant(float(mean.norm())) == pytest.approx(KAPPA, rel=0.25)
    h = pcd_model.history_
    assert len(h["loss"]) == 250 and all(math.isfinite(v) for v in h["loss"])


def test_samples_lie_on_the_manifold(pcd_model):
    samples = pcd_model.sample(500, n_steps=20, sampler="mala", step_size=0.3)
    residual = ImplicitSphere(2).submersion(samples).abs()
    assert float(residual.max()) <= 1e-9
    assert pcd_model.buffer_.shape == (pcd_model.buffer_size, 3)
    assert float(ImplicitSphere(2).submersion(pcd_model.buffer_).abs().max()) <= 1e-9


def test_wasserstein_of_model_samples(pcd_model):
    samples = pcd_model.sample(3000, n_steps=20)
    bounds = (-1.1, 1.1)
    assert discretized_wasserstein(samples, samples, bins=30, bounds=bounds) == 0.0
    # Rotating the density away from the data increases W monotonically.
    data = vmf_sphere(3000, MU, KAPPA, seed=5)
    values = []
    for deg in (0, 30, 60, 120):
        a = math.radians(deg)
        rot = torch.tensor([[1, 0, 0], [0, math.cos(a), -math.sin(a)],
                            [0, math.sin(a), math.cos(a)]], dtype=torch.float64)
        values.append(discretized_wasserstein(samples @ rot.T, data, bins=30, bounds=bounds))
    assert values[0] < 0.01
    assert all(b > a for a, b in zip(values, values[1:])), values


def test_density_on_manifold_covers_the_sphere(pcd_model):
    box = (-torch.ones(3), torch.ones(3))
    points, log_prob = pcd_model.density_on_manifold(4000, bounds=box, seed=3)
    assert 3000 < len(points) <= 4000
    assert float(ImplicitSphere(2).submersion(points).abs().max()) <= 1e-9
    assert torch.allclose(log_prob, -pcd_model.energy(points))
    # Covering, not clustered: every point of a fine sphere lattice has a cover point nearby.
    from implicit_geom.datasets import fibonacci_sphere

    assert float(torch.cdist(fibonacci_sphere(500), points).amin(1).max()) < 0.15
    with pytest.raises(RuntimeError, match="fit first"):
        ConstrainedEBM(ImplicitSphere(2)).density_on_manifold(10)


def test_learning_rate_decays_to_its_floor(vmf_data):
    model = ConstrainedEBM(ImplicitSphere(2), method="pcd", hidden=(8,), n_iter=20,
                           n_mcmc_steps=1, buffer_size=32, lr=1e-2, lr_floor=0.1,
                           seed=0).fit(vmf_data[:64])
    lrs = model.history_["lr"]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(1e-2)
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    # Cosine decay: the last of the 20 steps runs at 1e-3 + 9e-3 (1 + cos(19 pi / 20)) / 2.
    assert lrs[-1] == pytest.approx(1e-3 + 9e-3 * (1 + math.cos(19 * math.pi / 20)) / 2)
    constant = ConstrainedEBM(ImplicitSphere(2), method="pcd", hidden=(8,), n_iter=5,
                              n_mcmc_steps=1, buffer_size=32, seed=0).fit(vmf_data[:64])
    assert constant.history_["lr"] == [pytest.approx(3e-3)] * 5
    with pytest.raises(ValueError, match="lr_floor"):
        ConstrainedEBM(ImplicitSphere(2), lr_floor=0.0)


def test_mle_on_geomstats_hypersphere_recovers_vmf(vmf_data):
    model = ConstrainedEBM(Hypersphere(2), method="mle", hidden=(32, 32), n_iter=200,
                           quadrature_resolution=48, seed=0).fit(vmf_data)
    direction, kappa = model_moments(model)
    assert angle_deg(direction, MU) < 5
    assert kappa == pytest.approx(KAPPA, rel=0.1)
    exact_nll = KAPPA * -(1 / math.tanh(KAPPA) - 1 / KAPPA) + math.log(
        4 * math.pi * math.sinh(KAPPA) / KAPPA)
    assert model.nll(vmf_sphere(2000, MU, KAPPA, seed=9)) == pytest.approx(exact_nll, abs=0.05)


def test_validation_set_keeps_the_best_weights(vmf_data):
    # Catches a validation set that is ignored, measured on the training data,
    # or weights that end at the last step instead of the best validation.
    model = ConstrainedEBM(ImplicitSphere(2), method="mle", hidden=(16,), n_iter=60, lr=0.05,
                           quadrature_resolution=24, val_every=10, seed=0)
    val = vmf_sphere(200, MU, KAPPA, seed=3)
    model.fit(vmf_data[:30], X_val=val)  # 30 points: the fit overfits, validation turns
    record = model.validation_history_
    assert record["epoch"] == [10, 20, 30, 40, 50, 60]
    assert model.nll(val) == pytest.approx(min(record["loss"]), abs=1e-9)
    stopped = ConstrainedEBM(ImplicitSphere(2), method="mle", hidden=(16,), n_iter=60, lr=0.05,
                             quadrature_resolution=24, val_every=5, patience=1, seed=0)
    stopped.fit(vmf_data[:30], X_val=val)
    assert len(stopped.history_["loss"]) < 60
    plane = ImplicitManifold(lambda x: x[..., 2:], 3, 1)
    with pytest.raises(NotImplementedError, match="quadrature"):
        ConstrainedEBM(plane, n_iter=5).fit(vmf_data[:30], X_val=val)  # no box: no log Z


def test_pcd_on_geomstats_hypersphere_samples_on_sphere(vmf_data):
    model = ConstrainedEBM(Hypersphere(2), method="pcd", hidden=(16,), n_iter=5, n_mcmc_steps=2,
                           buffer_size=64, seed=1).fit(vmf_data[:100])
    samples = model.sample(64, n_steps=3)
    assert float((samples.norm(dim=-1) - 1).abs().max()) <= 1e-9


def test_bad_input_raises_named_errors(vmf_data):
    model = ConstrainedEBM(ImplicitSphere(2), hidden=(8,), n_iter=1)
    bad = vmf_data[:10].clone()
    bad[3, 1] = float("nan")
    with pytest.raises(InvalidPointError):
        model.fit(bad)
    with pytest.raises(InvalidPointError):
        model.fit(vmf_data[:10, :2])
    with pytest.raises(EmptyDataError):
        model.fit(torch.empty(0, 3, dtype=torch.float64))
    with pytest.raises(ValueError):
        ConstrainedEBM(ImplicitSphere(2), method="bogus")
    plane = ImplicitManifold(lambda x: x[:, 2:], 3, 1)
    with pytest.raises(NotImplementedError):
        ConstrainedEBM(plane, method="mle")  # no box: no quadrature
    with pytest.raises(RuntimeError):
        model.sample(5)  # not fitted
    with pytest.raises(ValueError, match="unit 2-sphere"):
        ConstrainedEBM(ImplicitSphere(1), AnchoredVMFEnergy())


def test_method_auto_is_mle_where_a_quadrature_exists(vmf_data):
    # Catches "auto" resolving to PCD on spheres/tori/learned curves, or to
    # MLE where log Z has no quadrature (a 3-manifold in R^4).
    assert ConstrainedEBM(ImplicitSphere(2)).resolved_method() == "mle"
    assert ConstrainedEBM(ImplicitTorus(2.0, 1.0)).resolved_method() == "mle"
    s3 = ImplicitManifold(lambda x: (x.square().sum(-1, keepdim=True) - 1) / 2, 4, 1,
                          bounds=([-1.3] * 4, [1.3] * 4))
    assert ConstrainedEBM(s3).resolved_method() == "pcd"
    model = ConstrainedEBM(ImplicitSphere(2), hidden=(16,), n_iter=30, lr=1e-2,
                           quadrature_resolution=32, seed=0).fit(vmf_data[:200])
    assert model.buffer_ is None and model.history_["e_neg"] == [0.0] * 30
    rule = model.quadrature()
    # log_prob is normalised by default: it integrates to one over M.
    assert float((model.log_prob(rule.points).exp() * rule.weights).sum()) == pytest.approx(
        1.0, abs=1e-12)
    norm = model.normalizer()
    assert norm.error < 1e-6 and norm.component_log_z.shape == (1,)


def test_mle_learns_the_mass_of_each_component():
    # Two circles with 30% / 70% of the data: exact MLE (per-component log Z)
    # gives each its data share, exp(-E) is the normalised density, and
    # samples (equilibrium start + MALA + component jumps) follow the shares.
    # Catches a model whose components' masses are left to chance (PCD
    # without jumps: the old 0.93 / 0.67 / 0.04 of the issue).
    from implicit_geom.datasets import two_circles

    circles = union(ImplicitSphere(1, center=[-1.8, 0.0]), ImplicitSphere(1, center=[1.8, 0.0]))
    X = two_circles(2000, seed=0)
    X = torch.cat([X[X[:, 0] < 0][:300], X[X[:, 0] > 0][:700]])
    model = ConstrainedEBM(circles, hidden=(16,), n_iter=60, lr=1e-2, seed=0).fit(X)
    mass = model.component_mass()
    left = int(model._label(torch.tensor([[-0.8, 0.0]], dtype=torch.float64))[0])
    assert float(mass[left]) == pytest.approx(300.5 / 1001, abs=1e-9)
    rule = model.quadrature()
    p = model.log_prob(rule.points).exp() * rule.weights
    assert float(p.sum()) == pytest.approx(1.0, abs=1e-9)
    assert float(p[rule.points[:, 0] < 0].sum()) == pytest.approx(0.3, abs=2e-3)
    # The raw model energy carries the masses (the reference W protocol uses exp(-E)).
    e = model.energy(rule.points)
    assert float(((-e).exp() * rule.weights)[rule.points[:, 0] < 0].sum()) == pytest.approx(
        0.3, abs=2e-3)
    samples = model.sample(3000, n_steps=20, sampler="mala", step_size=0.3)
    share = float((samples[:, 0] < 0).double().mean())
    assert abs(share - 0.3) < 3 * math.sqrt(0.3 * 0.7 / 3000)


def test_pcd_chains_jump_between_components():
    # PCD on two circles with chains started on the left one only: the
    # component jumps carry the buffer to the data's shares. Without jumps
    # the buffer would stay on the left circle.
    circles = union(ImplicitSphere(1, center=[-1.8, 0.0]), ImplicitSphere(1, center=[1.8, 0.0]))
    from implicit_geom.datasets import two_circles

    X = two_circles(600, seed=1)
    model = ConstrainedEBM(circles, method="pcd", hidden=(16,), n_iter=40, n_mcmc_steps=5,
                           buffer_size=200, step_size=0.3, seed=0)
    model._init_chains = lambda n, max_rounds=50: torch.tensor(
        [[-0.8, 0.0]], dtype=torch.float64).repeat(n, 1)
    model.fit(X)
    jump = model._chain_sampler.moves[0]
    assert jump.n_accepted > 50
    right = float((model.buffer_[:, 0] > 0).double().mean())
    assert 0.25 < right < 0.75
    assert float(circles.submersion(model.buffer_).abs().max()) <= 1e-9


@pytest.mark.parametrize("adapt", [False, True])
def test_anchored_vmf_energy_is_normalised_exactly(vmf_data, adapt, tmp_path):
    # The kernel mixture x network energy: its adapted-rule log Z agrees with a
    # fine sphere quadrature of exp(-E) (catches a wrong kernel normaliser or
    # quantile map, or, with per-kernel concentrations, nodes that ignore a
    # kernel's own factor), leave-one-out drops exactly the point's own kernel,
    # and a fit improves the held-out NLL over the initial kernel mixture.
    from implicit_geom.models.normalization import log_partition, sphere_quadrature

    energy = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0, adapt_kernels=adapt)
    energy.set_anchors(vmf_data[:300])
    with torch.no_grad():
        energy.net.net[-1].weight.normal_(0, 0.3)
        energy.floor_logit.fill_(-2.0)
        if adapt:  # factors 1/4 .. 4 per kernel
            shift = torch.linspace(-1.4, 1.4, 300, dtype=torch.float64)
            order = torch.randperm(300, generator=torch.Generator().manual_seed(0))
            energy.log_kappa_shift.copy_(shift[order])
        exact = float(log_partition(energy, sphere_quadrature(400, 800)))
        # A sharp kernel's own (Gauss-Laguerre) nodes give exactly its vMF mean
        # of mu.x, coth(kappa) - 1/kappa, with its own concentration (catches
        # nodes placed for another kappa, e.g. without the per-kernel factor).
        pts, mass = energy._nodes(energy.n_u, energy.n_phi)
        n_kernel = 300 * energy.n_u * energy.n_phi
        kappa = energy._kappa()
        share = (1 - energy.floor()) / 300
        got = ((pts[:n_kernel].reshape(300, -1, 3) * vmf_data[:300, None]).sum(-1)
               * mass[:n_kernel].reshape(300, -1)).sum(1) / share
        sharp = kappa > 10
        assert int(sharp.sum()) > 100
        assert torch.allclose(got[sharp], 1 / torch.tanh(kappa[sharp]) - 1 / kappa[sharp],
                              rtol=1e-7, atol=0)
        fine, coarse = float(energy.log_partition()), float(energy.log_partition(coarse=True))
        # The reported error (fine minus coarse rule) bounds the actual one.
        assert abs(fine - exact) <= abs(fine - coarse) < 5e-3
        idx = torch.tensor([3, 7])
        loo = energy.loo_energy(vmf_data[idx], idx)
        alone = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0, adapt_kernels=adapt)
        keep = torch.tensor([i for i in range(300) if i != 3])
        alone.set_anchors(vmf_data[keep], init=False)
        per_kernel = ("anchors", "log_d", "phase", "log_kappa_shift")
        alone.load_state_dict({k: v for k, v in energy.state_dict().items()
                               if k not in per_kernel}, strict=False)
        alone.log_d = energy.log_d[keep]
        alone.log_kappa_shift.copy_(energy.log_kappa_shift[keep])
        assert float(loo[0]) == pytest.approx(float(alone(vmf_data[3:4])[0]), abs=1e-9)
    model = ConstrainedEBM(ImplicitSphere(2), AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0,
                                                                adapt_kernels=adapt),
                           n_iter=40, lr=1e-2, seed=0)
    val = vmf_sphere(300, MU, KAPPA, seed=11)
    model.fit(vmf_data[:300], X_val=val)
    rule = model.quadrature()
    assert float((model.log_prob(rule.points).exp() * rule.weights).sum()) == pytest.approx(
        1.0, abs=1e-6)
    history = model.validation_history_["loss"]
    if not adapt:
        assert history[-1] <= history[0] + 1e-9
    # The leave-one-out training loss falls (catches gradients that do not
    # reach the kernels), and the kept state is the best on validation.
    assert model.history_["loss"][-1] < model.history_["loss"][0]
    assert float(model._validation_loss(val)) == pytest.approx(min(history), abs=1e-9)
    # The per-kernel factors are trained only when asked for (catches them
    # frozen, or trained in the plain k-NN rule).
    moved = float(model.energy_net.log_kappa_shift.detach().abs().max())
    assert (moved > 1e-4) if adapt else (moved == 0.0)
    # The checkpoint restores every kernel's factor (catches a reload that
    # resets them to the k-NN rule).
    model.save(tmp_path / "anchored.pt")
    back = ConstrainedEBM.load(tmp_path / "anchored.pt", ImplicitSphere(2))
    assert torch.equal(back.energy(val[:20]), model.energy(val[:20]))
    if not adapt:
        # A checkpoint written before per-kernel factors existed (no
        # log_kappa_shift) still loads as the same k-NN-rule density (catches
        # old files rejected, or their kernels given non-unit factors).
        record = torch.load(tmp_path / "anchored.pt", weights_only=True)
        del record["state_dict"]["log_kappa_shift"]
        torch.save(record, tmp_path / "old.pt")
        old = ConstrainedEBM.load(tmp_path / "old.pt", ImplicitSphere(2))
        assert torch.equal(old.energy(val[:20]), model.energy(val[:20]))


def test_save_load_roundtrip_and_corrupt_file(tmp_path, vmf_data):
    # One checkpoint format (learning.checkpoint): catches a lost buffer,
    # component weights, or a corrupt/foreign file read without a named error.
    model = ConstrainedEBM(ImplicitSphere(2), EnergyMLP(3, (8,), seed=2, fourier=3),
                           method="pcd", n_iter=3, n_mcmc_steps=1, buffer_size=32,
                           seed=4).fit(vmf_data[:50])
    path = tmp_path / "ebm.pt"
    model.save(path)
    loaded = ConstrainedEBM.load(path, ImplicitSphere(2))
    x = vmf_data[:20]
    assert torch.equal(loaded.energy(x), model.energy(x))
    assert torch.equal(loaded.buffer_, model.buffer_)
    assert loaded.n_iter == 3 and loaded.seed == 4
    circles = union(ImplicitSphere(1, center=[-1.8, 0.0]), ImplicitSphere(1, center=[1.8, 0.0]))
    from implicit_geom.datasets import two_circles

    two = ConstrainedEBM(circles, hidden=(8,), n_iter=3, seed=0).fit(two_circles(100, seed=0))
    two.save(tmp_path / "two.pt")
    back = ConstrainedEBM.load(tmp_path / "two.pt", circles)
    assert torch.equal(back.component_log_weights_, two.component_log_weights_)
    assert torch.allclose(back.log_prob(x[:, :2]), two.log_prob(x[:, :2]))
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        ConstrainedEBM.load(tmp_path / "bad.pt", ImplicitSphere(2))
    with pytest.raises(CheckpointError):
        ConstrainedEBM.load(tmp_path / "missing.pt", ImplicitSphere(2))
    with pytest.raises(CheckpointError):
        ConstrainedEBM.load(path, ImplicitSphere(1))
    torch.save({"format": "something else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError):
        ConstrainedEBM.load(tmp_path / "other.pt", ImplicitSphere(2))


def _closure_sphere(r):
    return lambda p: (p * p).sum(-1, keepdim=True) - r * r


def _mdf_manifold(radial):
    from implicit_geom.manifolds import MDFNetwork, NetworkImplicitManifold

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return NetworkImplicitManifold(MDFNetwork(3, 1, hidden=(8,), radial=radial), 3)


def _other_manifolds():
    """name: (the manifold a model is saved on, another of its class and dimensions)."""
    from geomstats.geometry.hyperboloid import Hyperboloid

    from implicit_geom import from_sympy, product

    return {
        "sphere radius": (lambda: ImplicitSphere(2, 1.0), lambda: ImplicitSphere(2, 2.0)),
        "torus radii": (lambda: ImplicitTorus(2.0, 1.0), lambda: ImplicitTorus(3.0, 1.0)),
        "sympy": (lambda: from_sympy("x**2 + y**2 + z**2 - 1", "x y z"),
                  lambda: from_sympy("x**2 + y**2 + z**2 - 4", "x y z")),
        "geomstats": (lambda: Hypersphere(2), lambda: Hyperboloid(2)),
        "product": (lambda: product(ImplicitSphere(1), ImplicitSphere(2)),
                    lambda: product(ImplicitSphere(1, 0.5), ImplicitSphere(2))),
        "plain F": (lambda: ImplicitManifold(_closure_sphere(1.0), 3),
                    lambda: ImplicitManifold(_closure_sphere(2.0), 3)),
        "mdf radial": (lambda: _mdf_manifold(0.0), lambda: _mdf_manifold(1.0)),
    }


def _fixed_energy(n):
    from implicit_geom.models import PolynomialEnergy

    energy = PolynomialEnergy(n, 1)
    with torch.no_grad():
        energy.coef.copy_(torch.linspace(-1.0, 1.0, energy.coef.numel()).view_as(energy.coef))
    return energy.requires_grad_(False)  # a known density: saves without a fit


@pytest.mark.parametrize("kind", sorted(_other_manifolds()))
def test_load_refuses_a_manifold_other_than_the_fitted_one(kind, tmp_path):
    # Catches load checking only the ambient dimension: a density fitted on a
    # unit sphere loaded onto a sphere of radius 2 (a torus of other radii,
    # another expression, geomstats' hyperboloid for its sphere, another
    # MDF...) and scored there as if nothing were wrong. An identical rebuild
    # loads silently; check_manifold=False loads another with a warning.
    import warnings

    from implicit_geom import as_implicit

    saved_on, other = _other_manifolds()[kind]
    manifold = as_implicit(saved_on())
    model = ConstrainedEBM(manifold, _fixed_energy(manifold.ambient_dim))
    path = tmp_path / "ebm.pt"
    model.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        back = ConstrainedEBM.load(path, saved_on())
    x = torch.randn(4, model.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(back.energy(x), model.energy(x))
    with pytest.raises(CheckpointError, match="not the manifold the model was saved on.*"
                                              "check_manifold=False"):
        ConstrainedEBM.load(path, other())
    with pytest.warns(UserWarning, match="loaded anyway"):
        assert ConstrainedEBM.load(path, other(), check_manifold=False).is_fitted


def test_load_names_the_parameter_that_differs_and_reads_older_files(tmp_path):
    # The message says what differs (catches a bare "another state" where
    # the parameter is known). A checkpoint from before the manifold was
    # recorded loads unchecked, with a warning (catches old fits refused).
    import json

    model = ConstrainedEBM(ImplicitSphere(2), _fixed_energy(3))
    path = tmp_path / "ebm.pt"
    model.save(path)
    with pytest.raises(CheckpointError, match=r"radius 2.0 \(saved: 1.0\)"):
        ConstrainedEBM.load(path, ImplicitSphere(2, 2.0))
    record = torch.load(path, weights_only=True)
    config = json.loads(record["config"])
    del config["manifold"]
    record["config"] = json.dumps(config)
    torch.save(record, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="without its manifold's fingerprint"):
        old = ConstrainedEBM.load(tmp_path / "old.pt", ImplicitSphere(2, 2.0))
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(old.energy(x), model.energy(x))


def test_plain_f_manifold_loads_in_a_fresh_process_and_from_version_2_records(tmp_path):
    # A plain F is recorded by its values at probe points (fingerprint
    # version 3): a fresh process that rebuilds the manifold from F moved to
    # another module loads the model (catches the refusal of version 2, which
    # named F by module and read its code as this Python compiles it), and a
    # network of other weights behind a lambda is refused there (catches
    # version 2's false accept). A file recording version 2 still loads.
    import json
    import os
    import subprocess
    import sys
    import textwrap

    source = textwrap.dedent("""
        import torch

        def F(x):
            return torch.tanh(x[..., :1]) + x[..., 1:2] ** 2 + x[..., 2:] ** 2 - 0.5
        """)
    (tmp_path / "saved_here.py").write_text(source)
    (tmp_path / "moved_there.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        import saved_here
    finally:
        sys.path.remove(str(tmp_path))
    model = ConstrainedEBM(ImplicitManifold(saved_here.F, 3), _fixed_energy(3))
    path = tmp_path / "ebm.pt"
    model.save(path)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys, warnings
        import torch
        sys.path.insert(0, {str(tmp_path)!r})
        from moved_there import F
        from implicit_geom import ImplicitManifold
        from implicit_geom.exceptions import CheckpointError
        from implicit_geom.models import ConstrainedEBM
        warnings.simplefilter("error", UserWarning)
        model = ConstrainedEBM.load({str(path)!r}, ImplicitManifold(F, 3))
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        torch.save(model.energy(x), {str(tmp_path / 'e.pt')!r})
        net = torch.nn.Linear(3, 1).double()
        try:
            ConstrainedEBM.load({str(path)!r}, ImplicitManifold(lambda p: net(p), 3))
        except CheckpointError as err:
            assert "values of the plain F _f differ" in str(err), err
        else:
            raise AssertionError("another F loaded")
        """)
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ), timeout=120)
    assert torch.equal(torch.load(tmp_path / "e.pt", weights_only=True), model.energy(x))

    from implicit_geom.learning.checkpoint import manifold_identity

    record = torch.load(path, weights_only=True)
    config = json.loads(record["config"])
    config["manifold"] = manifold_identity(ImplicitManifold(saved_here.F, 3), version=2)
    record["config"] = json.dumps(config)
    torch.save(record, tmp_path / "v2.pt")
    assert torch.equal(ConstrainedEBM.load(tmp_path / "v2.pt", ImplicitManifold(saved_here.F, 3))
                       .energy(x), model.energy(x))


def test_loaded_model_checks_peaks_like_the_saved_one(tmp_path, vmf_data):
    # Catches save dropping max_peak_excess and the probe points (the training
    # data) of normalizer()'s peak check: the original raised
    # NormalizationError, the loaded model (default threshold, no probes,
    # check skipped) returned a log Z. A threshold below any rise always fires.
    from implicit_geom.exceptions import NormalizationError

    model = ConstrainedEBM(ImplicitSphere(2), hidden=(8,), n_iter=3,
                           max_peak_excess=-50.0).fit(vmf_data[:100])
    model.save(tmp_path / "ebm.pt")
    loaded = ConstrainedEBM.load(tmp_path / "ebm.pt", ImplicitSphere(2))
    assert loaded.max_peak_excess == -50.0
    assert torch.equal(loaded._probe, model._probe)
    for m in (model, loaded):
        with pytest.raises(NormalizationError, match="rises"):
            m.normalizer()


def test_save_refuses_an_unfitted_trainable_energy_but_saves_a_fixed_one(tmp_path, vmf_data):
    # Catches save writing an unfitted model's seed weights, which load then
    # handed back as a fitted density (loaded models are marked fitted): the
    # unfitted original refused to score, its reload scored. An energy with no
    # trainable parameters (a known density) is ready as built and still saves.
    from implicit_geom.exceptions import NotFittedError
    from implicit_geom.models import PolynomialEnergy

    untrained = ConstrainedEBM(ImplicitSphere(2), hidden=(4,))
    with pytest.raises(NotFittedError, match="call fit first"):
        untrained.save(tmp_path / "untrained.pt")
    assert not (tmp_path / "untrained.pt").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either
    known = PolynomialEnergy(3, 1)
    with torch.no_grad():
        known.coef.copy_(-KAPPA * MU)
    known.requires_grad_(False)  # vMF(MU, KAPPA): nothing to fit
    fixed = ConstrainedEBM(ImplicitSphere(2), known)
    assert fixed.is_fitted
    fixed.save(tmp_path / "fixed.pt")
    back = ConstrainedEBM.load(tmp_path / "fixed.pt", ImplicitSphere(2))
    assert torch.equal(back.score_samples(vmf_data[:10]), fixed.score_samples(vmf_data[:10]))


def test_on_a_learned_circle_log_z_is_its_length_and_samples_stay_on_it():
    # Exact MLE on a learned curve: the traced quadrature's volume is the
    # learned circle's length (close to 2 pi), log_prob integrates to one, and
    # samples and PCD buffers satisfy the constraint.
    from implicit_geom.datasets import von_mises_circle
    from implicit_geom.learning import NeuralImplicitManifold

    X = von_mises_circle(300, kappa=1.0, seed=0)
    manifold = NeuralImplicitManifold(2, 1, hidden=(16, 16), epochs=40, progress=False).fit(X)
    model = ConstrainedEBM(manifold, hidden=(16,), n_iter=10, seed=0).fit(X)
    assert model.resolved_method() == "mle"
    rule = model.quadrature()
    assert rule.n_components == 1 and rule.n_open == 0
    assert rule.volume == pytest.approx(2 * math.pi, rel=0.02)
    assert float((model.log_prob(rule.points).exp() * rule.weights).sum()) == pytest.approx(
        1.0, abs=1e-10)
    samples = model.sample(64, n_steps=5)
    assert float(manifold.submersion(samples).norm(dim=-1).max()) <= 1e-9
    pcd = ConstrainedEBM(manifold, method="pcd", hidden=(16,), n_iter=5, n_mcmc_steps=3,
                         buffer_size=64, step_size=0.2, chain_init="data", seed=0).fit(X)
    assert float(manifold.submersion(pcd.buffer_).norm(dim=-1).max()) <= 1e-9
    with pytest.raises(ValueError):
        ConstrainedEBM(manifold, chain_init="everywhere")


def test_maximum_likelihood_sees_the_data_on_the_manifold():
    # Data moved off M along the normals (as data lie about a learned
    # manifold) give the same fit as the data themselves: the density lives
    # on M. Catches evaluating the energy at points off M, where maximum
    # likelihood can lower it without log Z (nodes on M) noticing: on the
    # glycine torus that gave a validation NLL of -33 and test NLLs of -38 / 15.
    from implicit_geom.datasets import von_mises_circle

    X = von_mises_circle(200, kappa=2.0, seed=0)
    scale = 1 + 0.2 * torch.rand(X.shape[0], 1, generator=torch.Generator().manual_seed(1),
                                 dtype=torch.float64)
    fits = [ConstrainedEBM(ImplicitSphere(1), hidden=(16,), n_iter=20, seed=0).fit(
        data, data[:50]) for data in (X, X * scale)]
    nodes = fits[0].quadrature().points
    # (to rounding: the projections equal the data to ~1e-16, then 20 Adam steps)
    assert torch.allclose(fits[0].energy(nodes), fits[1].energy(nodes), atol=1e-7)
    assert fits[0].log_partition() == pytest.approx(fits[1].log_partition(), abs=1e-7)


def test_points_outside_the_quadrature_raise_a_named_error():
    # A circle integrated only where y > -0.5 (its box): training or held-out
    # points on the rest of it get no number. Catches the old silent answer,
    # a density normalised on the arc but evaluated (and trained) off it.
    from implicit_geom import QuadratureCoverageError
    from implicit_geom.evaluation import held_out_nll

    circle = ImplicitManifold(lambda x: x.square().sum(-1, keepdim=True) - 1, 2, 1)
    angle = torch.linspace(0.3, 2.8, 60, dtype=torch.float64)[:, None]
    top = torch.cat([angle.cos(), angle.sin()], -1)
    model = ConstrainedEBM(circle, hidden=(8,), n_iter=5, seed=0, method="mle",
                           quadrature_bounds=([-1.5, -0.5], [1.5, 1.5]))
    with pytest.warns(RuntimeWarning, match="leave the quadrature box"):
        model.fit(top)
    assert math.isfinite(held_out_nll(model, top[::7] * 1.05))  # projected, covered
    bottom = torch.tensor([[0.0, -1.0], [0.6, -0.8]], dtype=torch.float64)
    with pytest.raises(QuadratureCoverageError, match="2 of 2 held-out points"):
        held_out_nll(model, bottom)
    with pytest.raises(QuadratureCoverageError, match="training points"), \
            pytest.warns(RuntimeWarning, match="leave the quadrature box"):
        ConstrainedEBM(circle, hidden=(8,), n_iter=5, seed=0, method="mle",
                       quadrature_bounds=([-1.5, -0.5], [1.5, 1.5])).fit(
            torch.cat([top, bottom]))


def test_points_far_from_the_manifold_raise_a_named_error(vmf_data, tmp_path):
    # A density on M scores a point at its closest point; a point far from M
    # (here the unit sphere scaled by 2 or 3) is no perturbation of a point of
    # M. Catches the old silent answer: fit on the radius-3 sphere and scores
    # at radius 2 projected and returned the density at the projections.
    from implicit_geom.models import ManifoldKDE, UnionEBM

    sphere = ImplicitSphere(2)
    with pytest.raises(InvalidPointError, match="20 of 20 training points lie farther"):
        ConstrainedEBM(sphere, hidden=(8,), n_iter=2, seed=0).fit(3 * vmf_data[:20])
    model = ConstrainedEBM(sphere, hidden=(8,), n_iter=2, seed=0).fit(vmf_data[:200])
    near = vmf_data[200:205] * 1.1  # within 5% of the box diagonal (0.26)
    torch.testing.assert_close(model.score_samples(near), model.score_samples(vmf_data[200:205]))
    with pytest.raises(InvalidPointError, match=r"1 of 5 held-out points .*\(up to 1,"):
        model.score_samples(torch.cat([near[:4], 2 * vmf_data[205:206]]))
    far_ok = ConstrainedEBM(sphere, hidden=(8,), n_iter=2, seed=0, max_distance=None)
    far_ok.fit(vmf_data[:200])
    torch.testing.assert_close(far_ok.score_samples(2 * vmf_data[200:205]),
                               far_ok.score_samples(vmf_data[200:205]))
    far_ok.save(tmp_path / "far.pt")  # the setting is saved with the model
    assert ConstrainedEBM.load(tmp_path / "far.pt", sphere).max_distance is None
    for bad in (0.0, -1.0, float("nan"), "far"):
        with pytest.raises(ValueError, match="max_distance"):
            ConstrainedEBM(sphere, hidden=(8,), max_distance=bad)
    other = ConstrainedEBM(ImplicitSphere(2, center=torch.tensor([3.0, 0.0, 0.0])),
                           hidden=(8,), n_iter=2, seed=0).fit(vmf_data[:200] + torch.tensor(
                               [3.0, 0.0, 0.0], dtype=torch.float64))
    both = UnionEBM(model, other)
    with pytest.raises(InvalidPointError, match="held-out points lie farther"):
        both.score_samples(torch.tensor([[1.5, 5.0, 0.0]], dtype=torch.float64))
    with pytest.raises(InvalidPointError, match="50 of 50 X lie farther"):
        ManifoldKDE(sphere).fit(2 * vmf_data[:50], vmf_data[50:100])


@pytest.mark.parametrize("method", ["mle", "pcd"])
def test_a_float32_energy_fits_samples_and_scores_on_a_float64_sphere(method, vmf_data):
    # Catches float64 quadrature nodes and chain states reaching a float32 energy
    # network ("mat1 and mat2 must have the same dtype") in fit, PCD and sample.
    model = ConstrainedEBM(ImplicitSphere(2), hidden=[8], n_iter=5, method=method,
                           quadrature_resolution=32, n_mcmc_steps=2, buffer_size=32)
    model.energy_net.float()
    model.fit(vmf_data[:200])
    assert model.score_samples(vmf_data[:5]).dtype == torch.float32
    x = model.sample(8, n_steps=3)
    assert x.dtype == torch.float64  # points of M, in its dtype
    assert float(model.manifold.submersion(x).abs().max()) <= 1e-9
    assert model.quadrature().points.dtype == torch.float32


def test_a_float32_model_on_a_float32_sphere_samples_in_float32(vmf_data):
    # Catches the samplers forcing chains to float64 on a float32 manifold (a
    # float32 energy then crashed, a float64 one returned float64 samples).
    sphere = ImplicitSphere(2).to(torch.float32)
    model = ConstrainedEBM(sphere, hidden=[8], n_iter=5, quadrature_resolution=32)
    model.energy_net.float()
    model.fit(vmf_data[:200])
    assert model.score_samples(vmf_data[:5]).dtype == torch.float32
    x = model.sample(8, n_steps=3)
    assert x.dtype == torch.float32
    assert float(sphere.submersion(x).abs().max()) <= sphere.tol_for()


@pytest.mark.parametrize("method", ["mle", "pcd"])
def test_a_float32_model_on_a_float32_callable_sphere_fits_samples_and_scores(method, vmf_data):
    # Catches the samplers' start check refusing points Newton had projected to
    # F's float32 rounding (|x|^2 - 1: |F| up to 64 eps |J| |x| = 1.5e-5 > 64 eps):
    # PCD chains and sample's starts raised ProjectionError ("projected only to
    # |F| = 1.5e-05 > tol = 7.62939e-06"); ImplicitSphere (|x| - 1, |J| = 1) hid it.
    sphere = ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - 1, 3,
                              bounds=([-1.5] * 3, [1.5] * 3)).to(torch.float32)
    model = ConstrainedEBM(sphere, hidden=[8], n_iter=5, method=method, quadrature_resolution=32,
                           n_mcmc_steps=2, buffer_size=32, seed=0)
    model.energy_net.float()
    model.fit(vmf_data[:200])
    assert model.score_samples(vmf_data[:5]).dtype == torch.float32
    x = model.sample(32, n_steps=3)
    points = x if method == "mle" else torch.cat([x, model.buffer_])
    assert points.dtype == torch.float32 and bool(sphere.belongs(points).all())
    # On the unit sphere to float32 accuracy: within 64 eps (Newton's floor) in float64.
    eps = torch.finfo(torch.float32).eps
    assert float((points.double().norm(dim=-1) - 1).abs().max()) <= 64 * eps * 1.001


def test_sample_count_is_a_whole_number(pcd_model):
    # Catches sample(2.5) drawing 2 (int() truncated the count).
    for n in (2.5, 0):
        with pytest.raises(ValueError, match="n_samples"):
            pcd_model.sample(n, n_steps=1)


@pytest.mark.parametrize("bad", [dict(lr=float("nan")), dict(lr=0.0), dict(beta=float("inf")),
                                 dict(sampler="bogus"), dict(n_iter=2.5), dict(grad_clip=0.0),
                                 dict(n_mcmc_steps=-1)])
def test_constructor_refuses_bad_settings(bad):
    # Catches settings accepted at construction that failed only at fit, or not at
    # all: lr=nan trained to TrainingDivergedError, sampler="bogus" raised at the
    # first PCD step, n_iter=2.5 ran 2 steps.
    with pytest.raises(ValueError):
        ConstrainedEBM(ImplicitSphere(2), hidden=[4], **bad)


def test_a_float32_manifold_with_the_default_float64_energy_is_normalised_by_ais():
    # The mixed case (float32 manifold, default float64 EnergyMLP): chains in
    # the manifold's dtype, the energy in its own. Catches AIS (no quadrature
    # on S^3) handing float32 chain states to the float64 network ("mat1 and
    # mat2 must have the same dtype").
    s3 = ImplicitSphere(3).to(torch.float32)
    s3.bounds = ([-1.5] * 4, [1.5] * 4)
    ais = dict(n_chains=32, n_temps=5, n_burn=10, n_points=2**10, n_rep=2, n_cover=300)
    model = ConstrainedEBM(s3, hidden=[8], n_iter=3, n_mcmc_steps=2, buffer_size=32, ais=ais)
    assert model._param().dtype == torch.float64 and model.resolved_method() == "pcd"
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    model.fit(x)
    assert math.isfinite(model.log_partition())
    assert model.score_samples(x[:3]).dtype == torch.float64  # the energy's dtype
    assert model.sample(4, n_steps=2).dtype == torch.float32  # points of M, in its dtype
