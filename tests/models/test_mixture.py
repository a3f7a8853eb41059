"""DensityMixture: a convex mixture of normalised densities, weights by EM."""

import math

import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from torch import nn

from implicit_geom import ImplicitSphere
from implicit_geom.evaluation import held_out_nll
from implicit_geom.models import ConstrainedEBM, DensityMixture
from implicit_geom.models.normalization import sphere_quadrature

NORTH, SOUTH = [0.0, 0.0, 1.0], [0.0, 0.0, -1.0]


class LinearEnergy(nn.Module):
    """``E(x) = -kappa mu.x``: von Mises-Fisher on the unit sphere."""

    def __init__(self, mu, kappa):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.kappa = kappa

    def forward(self, x):
        return -self.kappa * (x @ self.mu)


class ExactVMF:
    """Closed-form vMF on S^2 with exact sampling (a density model with ``sample``)."""

    def __init__(self, manifold, mu, kappa):
        self.manifold, self.kappa = manifold, kappa
        self.mu = torch.as_tensor(mu, dtype=torch.float64)

    def score_samples(self, X):
        k = self.kappa
        return (math.log(k / (2 * math.pi * -math.expm1(-2 * k)))
                + k * (torch.as_tensor(X) @ self.mu - 1))

    def sample(self, n, seed=0):
        gen = torch.Generator().manual_seed(seed)
        u = torch.rand(n, generator=gen, dtype=torch.float64)
        k = self.kappa
        w = 1 + torch.log(u + (1 - u) * math.exp(-2 * k)) / k  # mu.x, exact inverse CDF
        phi = 2 * math.pi * torch.rand(n, generator=gen, dtype=torch.float64)
        r = (1 - w**2).clamp_min(0).sqrt()
        local = torch.stack([r * phi.cos(), r * phi.sin(), w], -1)
        return local if self.mu[2] > 0 else local * torch.tensor([1.0, 1.0, -1.0])


def two_ebms():
    sphere = ImplicitSphere(2)
    return sphere, [ConstrainedEBM(sphere, LinearEnergy(NORTH, 6.0), seed=0),
                    ConstrainedEBM(sphere, LinearEnergy(SOUTH, 2.0), seed=0)]


def test_em_recovers_the_weights_and_the_mixture_is_normalised():
    # Catches an EM without normalised responsibilities or log weights left
    # out of the density: the weights would miss 0.3 / 0.7, the mass 1.
    sphere, ebms = two_ebms()
    a, b = (ExactVMF(sphere, NORTH, 6.0), ExactVMF(sphere, SOUTH, 2.0))
    truth = DensityMixture([a, b], weights=[0.3, 0.7])
    X = truth.sample(4000, seed=1)
    mix = DensityMixture(ebms).fit(X)
    assert mix.weights_.tolist() == pytest.approx([0.3, 0.7], abs=0.03)
    rule = sphere_quadrature(96, 192)
    assert float((rule.weights * mix.log_prob(rule.points).exp()).sum()) == pytest.approx(
        1.0, abs=1e-8)
    # The EBMs' log Z (quadrature) agrees with the closed forms: same density.
    assert mix.score_samples(X[:50]).tolist() == pytest.approx(
        DensityMixture([a, b], weights=mix.weights_).score_samples(X[:50]).tolist(), abs=1e-8)
    assert mix.log_z_error() < 1e-8
    assert held_out_nll(mix, X) == pytest.approx(mix.fit_nll_, abs=1e-12)


def test_em_reaches_the_likelihood_optimum():
    # The likelihood is concave in the weights: EM must beat every weight
    # on a grid and every single component (catches an EM that stops early
    # or moves the wrong way).
    sphere, ebms = two_ebms()
    X = ExactVMF(sphere, [0.6, 0.0, 0.8], 3.0).sample(500, seed=2)
    mix = DensityMixture(ebms).fit(X)
    grid = [DensityMixture(ebms, weights=[t, 1 - t]).nll(X) for t in torch.linspace(0, 1, 201)]
    assert mix.fit_nll_ <= min(grid) + 1e-9
    assert mix.fit_nll_ < min(e.nll(X) for e in ebms) - 1e-3


def test_sampling_gives_each_component_its_weight():
    # Catches sampling that ignores the weights (e.g. equal counts): the
    # northern share of two far-apart caps must be 0.3 within 2 standard errors.
    sphere = ImplicitSphere(2)
    mix = DensityMixture([ExactVMF(sphere, NORTH, 30.0), ExactVMF(sphere, SOUTH, 30.0)],
                         weights=[0.3, 0.7])
    x = mix.sample(3000, seed=3)
    share = float((x[:, 2] > 0).double().mean())
    assert abs(share - 0.3) <= 2 * math.sqrt(0.3 * 0.7 / 3000)
    assert torch.allclose(x.norm(dim=-1), torch.ones(3000, dtype=torch.float64))


def test_models_on_different_manifolds_do_not_mix():
    # Densities w.r.t. different volumes are not comparable.
    with pytest.raises(ValueError, match="same manifold"):
        DensityMixture([ExactVMF(ImplicitSphere(2), NORTH, 1.0),
                        ExactVMF(ImplicitSphere(2), SOUTH, 1.0)])
    with pytest.raises(ValueError, match="weights"):
        DensityMixture([ExactVMF(ImplicitSphere(2), NORTH, 1.0)], weights=[-1.0])
    # Catches an infinite weight accepted and normalised to NaN weights.
    sphere = ImplicitSphere(2)
    with pytest.raises(ValueError, match="weights"):
        DensityMixture([ExactVMF(sphere, NORTH, 1.0), ExactVMF(sphere, SOUTH, 1.0)],
                       weights=[math.inf, 1.0])


def test_clone_shares_the_fitted_components():
    # Catches sklearn's default clone, which cloned every component unfitted,
    # each with its own copy of the manifold, so the clone was rejected
    # ("same manifold") and GridSearchCV over the mixture's settings failed.
    sphere, ebms = two_ebms()
    X = ExactVMF(sphere, [0.6, 0.0, 0.8], 3.0).sample(400, seed=4)
    mix = DensityMixture(ebms, prior=1.0).fit(X)
    twin = clone(mix)
    assert twin is not mix and all(a is b for a, b in zip(twin.models, ebms))
    assert not twin.is_fitted and twin.get_params(deep=False)["prior"] == 1.0
    assert twin.fit(X).weights_.tolist() == mix.weights_.tolist()
    search = GridSearchCV(DensityMixture(ebms), {"prior": [0.0, 50.0]}, cv=2).fit(X)
    assert search.best_params_ == {"prior": 0.0}  # the likelihood's own optimum


def test_save_load_round_trip_and_refusals(tmp_path):
    # Catches a mixture that could not be saved at all (DensityMixture had no
    # save/load), a reload with other components, weights or fit report
    # (scores differ, is_fitted lost), a foreign, corrupt or mismatched file
    # read without a CheckpointError, and an unfitted mixture or one of
    # closed-form components written anyway.
    from implicit_geom.exceptions import CheckpointError, NotFittedError
    from implicit_geom.models import PolynomialEnergy

    sphere = ImplicitSphere(2)

    def known(mu, kappa):  # vMF(mu, kappa) with E = coef . x, frozen: nothing to fit
        energy = PolynomialEnergy(3, 1)
        with torch.no_grad():
            energy.coef.copy_(-kappa * torch.tensor(mu, dtype=torch.float64))
        return ConstrainedEBM(sphere, energy.requires_grad_(False), seed=0)

    ebms = [known(NORTH, 6.0), known(SOUTH, 2.0)]
    X = DensityMixture([ExactVMF(sphere, NORTH, 6.0), ExactVMF(sphere, SOUTH, 2.0)],
                       weights=[0.3, 0.7]).sample(500, seed=1)
    path = tmp_path / "mix.pt"
    with pytest.raises(NotFittedError, match="call fit first"):
        DensityMixture(ebms).save(path)  # uniform placeholder weights
    assert list(tmp_path.iterdir()) == []
    mix = DensityMixture(ebms, prior=0.5).fit(X)
    mix.save(path)
    for target in (sphere, ImplicitSphere(2)):  # the same object, or a rebuilt equal one
        back = DensityMixture.load(path, target)
        assert back.is_fitted and all(m.manifold is back.manifold for m in back.models)
        assert torch.equal(back.score_samples(X[:50]), mix.score_samples(X[:50]))
        assert torch.equal(back.weights_, mix.weights_)
        assert (back.fit_nll_, back.n_iter_, back.prior) == (mix.fit_nll_, mix.n_iter_, 0.5)
        assert back.get_params(deep=False)["weights"] is None
    given = DensityMixture(ebms, weights=[1.0, 3.0])
    given.save(tmp_path / "given.pt")
    back = DensityMixture.load(tmp_path / "given.pt", sphere)
    assert back.get_params(deep=False)["weights"] == [1.0, 3.0] and back.is_fitted
    assert torch.equal(back.score_samples(X[:20]), given.score_samples(X[:20]))
    # Foreign, corrupt and mismatched files.
    ebms[0].save(tmp_path / "one.pt")
    with pytest.raises(CheckpointError, match="holds a 'ConstrainedEBM', not a 'DensityMixture'"):
        DensityMixture.load(tmp_path / "one.pt", sphere)
    with pytest.raises(CheckpointError, match="holds a 'DensityMixture', not a 'ConstrainedEBM'"):
        ConstrainedEBM.load(path, sphere)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        DensityMixture.load(tmp_path / "cut.pt", sphere)
    with pytest.raises(CheckpointError, match="not the manifold the mixture was saved on"):
        DensityMixture.load(path, ImplicitSphere(2, radius=2.0))
    record = torch.load(path, weights_only=True)
    record["weights_"] = torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64)
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="corrupt list of models or weights"):
        DensityMixture.load(tmp_path / "bad.pt", sphere)
    # What cannot be saved: closed-form components, unfitted trainable ones, a folder.
    with pytest.raises(TypeError, match="not of ExactVMF"):
        DensityMixture([ExactVMF(sphere, NORTH, 1.0), ebms[1]], weights=[1, 1]).save(
            tmp_path / "x.pt")
    with pytest.raises(NotFittedError):
        DensityMixture([ConstrainedEBM(sphere, hidden=(4,)), ebms[1]], weights=[1, 1]).save(
            tmp_path / "x.pt")
    (tmp_path / "folder.pt").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        mix.save(tmp_path / "folder.pt")
    assert not (tmp_path / "x.pt").exists()


def test_load_sees_parameters_outside_the_state_dict_and_reads_older_records(tmp_path):
    # Catches the manifold's fingerprint blind to a sympy manifold's
    # expressions (no tensors: a mixture fitted on the unit sphere loaded onto
    # the sphere of radius 2 and scored there). An identical rebuild loads; a
    # file whose record predates version 2 of the fingerprint still loads
    # (catches older mixtures refused); check_manifold=False overrides.
    import json

    from implicit_geom import from_sympy
    from implicit_geom.exceptions import CheckpointError
    from implicit_geom.models import PolynomialEnergy

    def sphere(r):
        return from_sympy(f"x**2 + y**2 + z**2 - {r}**2", "x y z",
                          bounds=([-3.0] * 3, [3.0] * 3))

    energy = PolynomialEnergy(3, 1)
    with torch.no_grad():
        energy.coef.copy_(torch.tensor([0.0, 0.0, -3.0]))
    ebm = ConstrainedEBM(sphere(1), energy.requires_grad_(False))
    mix = DensityMixture([ebm, ebm], weights=[0.5, 0.5])
    path = tmp_path / "mix.pt"
    mix.save(path)
    x = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    assert torch.equal(DensityMixture.load(path, sphere(1)).score_samples(x),
                       mix.score_samples(x))
    with pytest.raises(CheckpointError, match=r"exprs \['x\*\*2 \+ y\*\*2 \+ z\*\*2 - 4'\]"):
        DensityMixture.load(path, sphere(2))
    with pytest.warns(UserWarning, match="loaded anyway"):
        DensityMixture.load(path, sphere(2), check_manifold=False)
    from implicit_geom.learning.checkpoint import manifold_identity

    record = torch.load(path, weights_only=True)
    config = json.loads(record["config"])
    config["manifold"] = manifold_identity(sphere(1), version=1)
    record["config"] = json.dumps(config)
    torch.save(record, tmp_path / "old.pt")
    assert torch.equal(DensityMixture.load(tmp_path / "old.pt", sphere(1)).score_samples(x),
                       mix.score_samples(x))
