"""Density baselines: every one is a normalised density on its manifold, tuned on validation."""

import math

import pytest
import torch

from implicit_geom import ImplicitSphere, ImplicitTorus, union
from implicit_geom.datasets import load_dataset, vmf_sphere, von_mises_circle
from implicit_geom.exceptions import InvalidPointError, ProjectionError
from implicit_geom.models import ManifoldKDE, VonMisesFisherMixture, manifold_quadrature
from implicit_geom.models.baselines import log_sphere_kernel_mass


def integral(model, rule):
    return float((model.score_samples(rule.points).exp() * rule.weights).sum())


@pytest.mark.parametrize("name, manifold, res", [
    ("sphere_mixture", ImplicitSphere(2), 128),
    ("torus", ImplicitTorus(2.0, 1.0), 256),
    ("two_circles", union(ImplicitSphere(1, center=[-1.8, 0.0]),
                          ImplicitSphere(1, center=[1.8, 0.0])), 512),
    ("circle", ImplicitSphere(1), 512),
])
def test_estimators_integrate_to_one(name, manifold, res):
    # Catches a kernel normaliser that ignores the other sphere of a union,
    # the torus area element, or the circle/sphere dimension.
    train = load_dataset(name, 300, seed=0).points
    val = load_dataset(name, 100, seed=1).points
    rule = manifold_quadrature(manifold, res)
    kde = ManifoldKDE(manifold).fit(train, val)
    assert integral(kde, rule) == pytest.approx(1.0, abs=1e-6)
    assert kde.validation_nll_ == pytest.approx(kde.nll(val), abs=1e-9)
    if name in ("sphere_mixture", "two_circles"):
        adaptive = ManifoldKDE(manifold, adaptive=True, ks=(5,), floors=(0.0, 0.05)).fit(
            train, val)
        assert integral(adaptive, rule) == pytest.approx(1.0, abs=1e-6)
    if name != "two_circles":
        mix = VonMisesFisherMixture(manifold, n_components=(1, 4), n_iter=50).fit(train, val)
        assert integral(mix, rule) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("name, manifold, res, scale", [
    ("sphere_mixture", ImplicitSphere(2), 128, 1.0),
    ("sphere_mixture", ImplicitSphere(2, radius=2.0), 128, 2.0),
    ("torus", ImplicitTorus(2.0, 1.0), 256, 1.0),
    ("two_circles", union(ImplicitSphere(1, center=[-1.8, 0.0]),
                          ImplicitSphere(1, center=[1.8, 0.0])), 512, 1.0),
    ("circle", ImplicitSphere(1), 512, 1.0),
])
def test_samples_follow_the_estimated_density(name, manifold, res, scale):
    # Catches draws that do not follow score_samples: a kernel drawn with
    # concentration kappa instead of kappa r |a - c| (the radius-2 sphere), the
    # torus angles without their von Mises law or swapped, a union's sphere
    # picked by the wrong mass, the adaptive floor ignored, a mixture component
    # picked by the wrong weight; and draws off M. Means of x, x^2 and log p
    # over 20 000 draws against their expectations under the density
    # (quadrature).
    train = scale * load_dataset(name, 300, seed=0).points
    val = scale * load_dataset(name, 100, seed=1).points
    rule = manifold_quadrature(manifold, res)
    models = [ManifoldKDE(manifold).fit(train, val)]
    if name in ("sphere_mixture", "two_circles"):
        models.append(ManifoldKDE(manifold, adaptive=True, ks=(5,), floors=(0.05,)).fit(
            train, val))
    if name != "two_circles":
        models.append(VonMisesFisherMixture(manifold, n_components=(4,), n_iter=50).fit(
            train, val))
    for model in models:
        draws = model.sample(20_000, seed=3)
        assert draws.shape == (20_000, manifold.ambient_dim)
        assert float(manifold.submersion(draws).abs().max()) <= 1e-9
        mass = model.score_samples(rule.points).exp() * rule.weights
        feats = lambda x: torch.cat([x, x * x], -1)  # noqa: E731
        expected = (mass[:, None] * feats(rule.points)).sum(0)
        got = feats(draws)
        bound = 4.5 * got.std(0) / math.sqrt(got.shape[0]) + 1e-3
        assert bool(((got.mean(0) - expected).abs() <= bound).all()), (
            type(model).__name__, got.mean(0), expected)
        # E[log p(X)] (minus the entropy): sensitive to every kernel's width.
        log_p = model.score_samples(draws)
        entropy_bound = 4.5 * float(log_p.std()) / math.sqrt(log_p.numel()) + 1e-3
        assert float(log_p.mean()) == pytest.approx(
            float((mass * model.score_samples(rule.points)).sum()), abs=entropy_bound)


def test_sampling_needs_an_exact_sampler_and_a_fit():
    from implicit_geom import ImplicitManifold, NotFittedError

    with pytest.raises(NotFittedError):
        ManifoldKDE(ImplicitSphere(2), kappa=5.0).sample(3)
    ellipse = ImplicitManifold(lambda x: (x[..., :1] / 2) ** 2 + x[..., 1:] ** 2 - 1.0, 2,
                               bounds=([-2.5, -1.5], [2.5, 1.5]))
    t = torch.linspace(0, 6, 40, dtype=torch.float64)
    kde = ManifoldKDE(ellipse, kappa=5.0).fit(torch.stack([2 * t.cos(), t.sin()], -1))
    with pytest.raises(NotImplementedError, match="quadrature"):
        kde.sample(3)


def test_bandwidth_and_components_are_chosen_on_validation():
    # A vMF sample: the mixture picks one component with kappa near the truth,
    # and the KDE's bandwidth is the validation minimiser (checked against a
    # neighbour on the grid).
    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    train, val = vmf_sphere(2000, mu, 8.0, seed=0), vmf_sphere(500, mu, 8.0, seed=1)
    mix = VonMisesFisherMixture(ImplicitSphere(2), n_components=(1,), n_iter=100).fit(train)
    assert float(mix.kappas_[0][0]) == pytest.approx(8.0, rel=0.1)
    kde = ManifoldKDE(ImplicitSphere(2)).fit(train, val)
    i = kde.kappas.index(kde.kappa_)
    for j in (i - 1, i + 1):
        other = ManifoldKDE(ImplicitSphere(2), kappa=kde.kappas[j]).fit(train)
        assert other.nll(val) >= kde.validation_nll_
    with pytest.raises(ValueError, match="validation"):
        ManifoldKDE(ImplicitSphere(2)).fit(train)


def test_points_off_the_manifold_count_at_their_closest_points():
    # Catches the kernel estimate scoring (and training on) a point off M by
    # its ambient distances to the kernels: a point 5% outside the sphere
    # scored otherwise than its closest point, unlike the constrained EBM's
    # score_samples. Both kernel paths: the closed-form sphere and the
    # quadrature-normalised one of a sphere given as a plain callable.
    from implicit_geom import ImplicitManifold

    mu = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    train, query = vmf_sphere(300, mu, 4.0, seed=0), vmf_sphere(20, mu, 4.0, seed=2)
    callable_sphere = ImplicitManifold(lambda x: x.square().sum(-1, keepdim=True) - 1.0, 3,
                                       bounds=([-1.2] * 3, [1.2] * 3))
    for manifold in (ImplicitSphere(2), callable_sphere):
        kde = ManifoldKDE(manifold, kappa=20.0, quadrature_resolution=64).fit(train)
        on = kde.score_samples(query)
        assert torch.allclose(kde.score_samples(1.05 * query), on, atol=1e-6)
        moved = ManifoldKDE(manifold, kappa=20.0, quadrature_resolution=64).fit(0.95 * train)
        assert torch.allclose(moved.score_samples(query), on, atol=1e-6)
    mix = VonMisesFisherMixture(ImplicitSphere(2), n_components=(1,), n_iter=50).fit(train)
    assert torch.allclose(mix.score_samples(1.05 * query), mix.score_samples(query), atol=1e-9)


def test_sphere_kernel_mass_closed_form():
    # int_{S^2} exp(-k |x - y|^2 / 2) dA for y off the sphere, against a fine quadrature.
    rule = manifold_quadrature(ImplicitSphere(2), 256)
    y = torch.tensor([[0.3, 0.2, 1.4]], dtype=torch.float64)
    for k in (0.5, 10.0):
        numeric = math.log(float((torch.exp(-0.5 * k * (rule.points - y).square().sum(-1))
                                  * rule.weights).sum()))
        assert float(log_sphere_kernel_mass(k, y.numpy(), 1.0, (0, 0, 0))[0, 0]) == \
            pytest.approx(numeric, abs=1e-10)


def test_a_failed_refit_keeps_the_previous_fit():
    # Catches ManifoldKDE.fit storing the new anchors before X_val was
    # checked: a refit that raised on a bad X_val left the new anchors under
    # the old bandwidth, and score_samples answered for neither fit.
    circle = ImplicitSphere(1)
    X = von_mises_circle(60, seed=0)
    bad = torch.full((3, 2), float("nan"), dtype=torch.float64)
    for model in (ManifoldKDE(circle, kappa=5.0).fit(X), ManifoldKDE(circle).fit(X, X + 0.01)):
        before = model.score_samples(X[:5])
        with pytest.raises(InvalidPointError):
            model.fit(von_mises_circle(60, seed=1, mu=2.0), bad)
        assert torch.equal(model.score_samples(X[:5]), before)


def test_bad_settings_raise_value_errors():
    # Catches settings that failed inside fit with a math domain error, an
    # UnboundLocalError or a TypeError (vMF mixture), or gave NaN scores
    # (a NaN or infinite kernel concentration).
    circle = ImplicitSphere(1)
    for kwargs in ({"kappa": -1.0}, {"kappa": float("nan")}, {"kappa": float("inf")},
                   {"kappas": ()}, {"kappas": (1.0, -2.0)}):
        with pytest.raises(ValueError, match="kappa"):
            ManifoldKDE(circle, **kwargs)
    for kwargs in ({"n_components": 0}, {"n_components": [2, -1]}, {"n_components": []},
                   {"n_iter": 0}, {"n_init": 0}):
        with pytest.raises(ValueError, match="n_components"):
            VonMisesFisherMixture(circle, **kwargs)


@pytest.mark.parametrize("manifold", [ImplicitSphere(1), ImplicitSphere(2),
                                      ImplicitTorus(2.0, 1.0)])
def test_float32_points_are_projected_and_scored_in_float64(manifold):
    # Catches float32 tensors projected onto M in float32 (as_points keeps a
    # float tensor's dtype): fit and score_samples then differed from the same
    # values given in float64 by the float32 rounding of the closest points.
    gen = torch.Generator().manual_seed(0)
    X = manifold.projection(torch.randn(40, manifold.ambient_dim, dtype=torch.float64,
                                        generator=gen) * 2)
    X = X + 0.01 * torch.randn(X.shape, dtype=torch.float64, generator=gen)
    single, double = X.float(), X.float().double()
    for make in (lambda: ManifoldKDE(manifold, kappa=5.0),
                 lambda: VonMisesFisherMixture(manifold, n_components=2)):
        model = make().fit(double)
        assert torch.equal(make().fit(single).score_samples(double), model.score_samples(double))
        assert torch.equal(model.score_samples(single), model.score_samples(double))



def test_sample_counts_are_whole_numbers():
    # Catches sample(2.5) drawing 2 (int() truncated the count) in the KDE and the
    # vMF mixture, and sample(0) accepted.
    points = load_dataset("sphere_mixture", 40, seed=0).points
    for model in (ManifoldKDE(ImplicitSphere(2), kappa=5.0).fit(points),
                  VonMisesFisherMixture(ImplicitSphere(2), n_components=1, n_iter=5).fit(points)):
        assert model.sample(3).shape == (3, 3)
        for n in (2.5, 0):
            with pytest.raises(ValueError, match="n_samples"):
                model.sample(n)


def test_a_failed_projection_names_the_points_for_baselines_and_the_ebm():
    # Pins the one re-wrap both model layers share (exceptions.naming_points):
    # the error names the argument whose points failed (the centre of the
    # sphere has no closest point), keeps the failure mask and chains the
    # projection's own error.
    from implicit_geom.models import ConstrainedEBM

    X = torch.tensor([[0.0, 0.6, 0.8], [0.0, 0.0, 0.0]], dtype=torch.float64)
    calls = {"X_val": lambda: ManifoldKDE(ImplicitSphere(2)).fit(
                 vmf_sphere(20, [0.0, 0.0, 1.0], 2.0), X),
             "validation points": lambda: ConstrainedEBM(ImplicitSphere(2)).on_manifold(
                 X, "validation points")}
    for what, call in calls.items():
        with pytest.raises(ProjectionError, match=f"^{what}: 1 of 2 point") as info:
            call()
        assert info.value.failed.tolist() == [False, True]
        assert isinstance(info.value.__cause__, ProjectionError)
