"""ConstrainedEBM: vMF recovery on S^2, samples on M, W, errors, persistence."""

import math

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere
from scipy.optimize import brentq

from implicit_geom import ImplicitManifold, ImplicitSphere
from implicit_geom.datasets import vmf_sphere
from implicit_geom.exceptions import CheckpointError, EmptyDataError, InvalidPointError
from implicit_geom.metrics import discretized_wasserstein
from implicit_geom.models import ConstrainedEBM, EnergyMLP

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
    return ConstrainedEBM(ImplicitSphere(2), hidden=(32, 32), n_iter=250, n_mcmc_steps=10,
                          step_size=0.15, seed=0).fit(vmf_data)


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
    model = ConstrainedEBM(ImplicitSphere(2), hidden=(8,), n_iter=20, n_mcmc_steps=1,
                           buffer_size=32, lr=1e-2, lr_floor=0.1, seed=0).fit(vmf_data[:64])
    lrs = model.history_["lr"]
    assert len(lrs) == 20 and lrs[0] == pytest.approx(1e-2)
    assert all(b < a for a, b in zip(lrs, lrs[1:]))
    # Cosine decay: the last of the 20 steps runs at 1e-3 + 9e-3 (1 + cos(19 pi / 20)) / 2.
    assert lrs[-1] == pytest.approx(1e-3 + 9e-3 * (1 + math.cos(19 * math.pi / 20)) / 2)
    constant = ConstrainedEBM(ImplicitSphere(2), hidden=(8,), n_iter=5, n_mcmc_steps=1,
                              buffer_size=32, seed=0).fit(vmf_data[:64])
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


def test_pcd_on_geomstats_hypersphere_samples_on_sphere(vmf_data):
    model = ConstrainedEBM(Hypersphere(2), hidden=(16,), n_iter=5, n_mcmc_steps=2,
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
        ConstrainedEBM(plane, method="mle")
    with pytest.raises(RuntimeError):
        model.sample(5)  # not fitted


def test_save_load_roundtrip_and_corrupt_file(tmp_path, vmf_data):
    model = ConstrainedEBM(ImplicitSphere(2), EnergyMLP(3, (8,), seed=2), n_iter=3,
                           n_mcmc_steps=1, buffer_size=32, seed=4).fit(vmf_data[:50])
    path = tmp_path / "ebm.pt"
    model.save(path)
    loaded = ConstrainedEBM.load(path, ImplicitSphere(2))
    x = vmf_data[:20]
    assert torch.equal(loaded.energy(x), model.energy(x))
    assert torch.equal(loaded.buffer_, model.buffer_)
    assert loaded.n_iter == 3 and loaded.seed == 4
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


def test_on_a_learned_manifold_samples_satisfy_the_constraint():
    from implicit_geom.datasets import von_mises_circle
    from implicit_geom.learning import NeuralImplicitManifold

    X = von_mises_circle(300, kappa=1.0, seed=0)
    manifold = NeuralImplicitManifold(2, 1, hidden=(16, 16), epochs=40, progress=False).fit(X)
    model = ConstrainedEBM(manifold, hidden=(16,), n_iter=10, n_mcmc_steps=3, buffer_size=64,
                           step_size=0.2, chain_init="data", seed=0).fit(X)
    samples = model.sample(64, n_steps=5)
    assert float(manifold.submersion(samples).norm(dim=-1).max()) <= 1e-9
    assert float(manifold.submersion(model.buffer_).norm(dim=-1).max()) <= 1e-9
    with pytest.raises(ValueError):
        ConstrainedEBM(manifold, chain_init="everywhere")


def test_data_started_samples_keep_the_data_share_of_each_component():
    # Chains cannot cross between the two circles, so each one's mass is the
    # share of the chains started on it: the data's, not the small buffer's.
    import implicit_geom as ig
    from implicit_geom.datasets import TWO_CIRCLE_CENTRES, two_circles

    circles = ig.union(*[ImplicitSphere(1, center=list(c)) for c in TWO_CIRCLE_CENTRES])
    X = two_circles(1000, seed=0)
    model = ConstrainedEBM(circles, hidden=(16,), n_iter=20, n_mcmc_steps=3, buffer_size=16,
                           step_size=0.2, chain_init="data", seed=0).fit(X)
    data_left = float((X[:, 0] < 0).double().mean())
    buffer_left = float((model.buffer_[:, 0] < 0).double().mean())
    assert abs(buffer_left - data_left) > 0.06  # a 16-chain buffer: off the data's share
    samples = model.sample(4000, n_steps=3)
    assert float(circles.submersion(samples).abs().max()) <= 1e-9
    assert float((samples[:, 0] < 0).double().mean()) == pytest.approx(data_left, abs=0.03)
