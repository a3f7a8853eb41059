"""scikit-learn conventions on every model: get_params, set_params, clone, score."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold

from implicit_geom import ImplicitSphere, NeuralImplicitManifold
from implicit_geom.datasets import load_dataset
from implicit_geom.models import (
    AmbientEBM,
    ConstrainedEBM,
    DensityMixture,
    EnergyMLP,
    ManifoldKDE,
    PushforwardEBM,
    UnionEBM,
    VonMisesFisherMixture,
)


def models():
    sphere = ImplicitSphere(2)
    kde = ManifoldKDE(sphere, kappa=10.0)
    return {
        "mdf": NeuralImplicitManifold(3, 1, hidden=[16, 16], epochs=3, progress=False),
        "constrained": ConstrainedEBM(sphere, hidden=[8], n_iter=2),
        "ambient": AmbientEBM(2, hidden=[4], n_iter=1),
        "kde": kde,
        "vmf": VonMisesFisherMixture(sphere, n_components=[1, 2], n_iter=5),
        "mixture": DensityMixture([kde], prior=0.5),
        "pushforward": PushforwardEBM(3, 2, hidden=[8], n_iter=2),
    }


@pytest.mark.parametrize("name", list(models()))
def test_clone_rebuilds_from_the_arguments_as_given(name):
    # Catches a constructor argument that get_params cannot return as passed
    # (sklearn.clone raises then: hidden=[16, 16] kept only as a tuple), or a
    # parameter missing from get_params (the clone would differ).
    model = models()[name]
    params = model.get_params(deep=False)
    twin = clone(model)
    assert twin is not model and type(twin) is type(model)
    assert set(twin.get_params(deep=False)) == set(params)
    for key, value in params.items():
        if not isinstance(value, (torch.nn.Module, list, ManifoldKDE)):
            assert twin.get_params(deep=False)[key] == value, key


def test_set_params_rebuilds_and_rejects_bad_values_atomically():
    # Catches set_params that only sets an attribute (the network keeps its old
    # width, the objective its old s_min), that swaps in another object (the
    # metric would point at it), or that half-applies a rejected change.
    model = NeuralImplicitManifold(2, 1, hidden=(16, 16), epochs=3, progress=False)
    data = load_dataset("circle", 64, seed=0).points
    model.fit(data)
    weights = [p.clone() for p in model.net.parameters()]
    with pytest.raises(ValueError, match="invalid parameter 'hiden'"):
        model.set_params(hiden=(8,))
    with pytest.raises(ValueError, match="epochs"):
        model.set_params(s_min=0.5, epochs=0)
    assert model.is_fitted and model.s_min == 1.0 and model.epochs == 3
    assert all(torch.equal(a, b) for a, b in zip(weights, model.net.parameters()))

    assert model.set_params(hidden=(8,), s_min=0.5) is model
    assert not model.is_fitted  # the fit is discarded: the next fit starts afresh
    assert model.s_min == 0.5 and model.get_params()["hidden"] == (8,)
    assert [p.shape[0] for p in model.net.parameters() if p.ndim == 2][0] == 8
    assert model.metric._space is model
    model.fit(data)
    assert model.belongs(model.projection(data[:5])).all()


def test_nested_parameters_reach_the_manifold():
    # Catches deep get_params missing an argument's own parameters, and
    # set_params not routing manifold__x to the manifold.
    manifold = NeuralImplicitManifold(3, 1, hidden=(8,), epochs=2, progress=False)
    ebm = ConstrainedEBM(manifold, hidden=(4,), n_iter=1)
    deep = ebm.get_params(deep=True)
    assert deep["manifold__hidden"] == (8,) and deep["manifold"] is manifold
    ebm.set_params(manifold__s_min=0.25, n_iter=3)
    assert manifold.s_min == 0.25 and ebm.n_iter == 3 and ebm.manifold is manifold
    with pytest.raises(ValueError, match="invalid parameter 'n_iter__x'"):
        ebm.set_params(n_iter__x=1)


def test_varargs_models_keep_their_models():
    # Catches set_params dropping the *models of a union (rebuilt empty).
    a = ConstrainedEBM(ImplicitSphere(1, center=[-2.0, 0.0]), hidden=(4,), n_iter=1)
    b = ConstrainedEBM(ImplicitSphere(1, center=[2.0, 0.0]), hidden=(4,), n_iter=1)
    union = UnionEBM(a, b, weights=[0.5, 0.5])
    assert union.get_params(deep=False)["models"] == (a, b)
    union.set_params(weights=[0.25, 0.75])
    assert union.models[0] is a and union.models[1] is b
    assert [float(w) for w in union.weights] == [0.25, 0.75]


def test_score_is_the_mean_log_likelihood():
    # Catches score returning the NLL (GridSearchCV would then pick the worst
    # kappa) or a score on models without score_samples.
    sphere = ImplicitSphere(2)
    train = load_dataset("sphere_mixture", 300, seed=0).points
    test = load_dataset("sphere_mixture", 100, seed=1).points
    kde = ManifoldKDE(sphere, kappa=20.0).fit(train)
    assert kde.score(test) == pytest.approx(float(kde.score_samples(test).mean()), rel=1e-12)
    assert kde.score(test) == pytest.approx(-kde.nll(test), rel=1e-12)
    assert not hasattr(NeuralImplicitManifold(3, 1), "score")
    # nll is the mixin's, for every density model, unions too (which had none).
    a = ConstrainedEBM(ImplicitSphere(1, center=[-2.0, 0.0]), hidden=(4,), n_iter=1)
    b = ConstrainedEBM(ImplicitSphere(1, center=[2.0, 0.0]), hidden=(4,), n_iter=1)
    circles = torch.cat([ImplicitSphere(1, center=[c, 0.0]).projection(
        torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        + torch.tensor([c, 0.0], dtype=torch.float64)) for c in (-2.0, 2.0)])
    a.fit(circles[:5])
    b.fit(circles[5:])
    union = UnionEBM(a, b)
    assert union.nll(circles) == pytest.approx(-float(union.score_samples(circles).mean()))
    assert not hasattr(NeuralImplicitManifold(3, 1), "nll")

    kappas = [2.0, 20.0, 500.0]
    folds = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(ManifoldKDE(sphere, kappa=1.0), {"kappa": kappas}, cv=folds)
    search.fit(train.numpy())
    # The same choice made by hand from held-out log densities.
    held_out = [np.mean([float(ManifoldKDE(sphere, kappa=k).fit(train[tr])
                               .score_samples(train[te]).mean())
                         for tr, te in folds.split(train.numpy())]) for k in kappas]
    assert search.best_params_["kappa"] == kappas[int(np.argmax(held_out))]
    assert search.best_score_ == pytest.approx(max(held_out), rel=1e-9)


def test_set_params_passes_arguments_before_varargs_by_position():
    # Catches rebuilding f(a, *models) as f(*models, a=...) (a given twice),
    # and forwarded **keywords lost.
    from implicit_geom.learning import EstimatorMixin

    class Model(EstimatorMixin):
        def __init__(self, a, *models, w=1, **extra):
            self.a, self.models, self.w, self.extra = a, models, w, extra

    model = Model(1, "m1", "m2", w=3, depth=5)
    assert model.get_params() == {"a": 1, "models": ("m1", "m2"), "w": 3, "depth": 5}
    model.set_params(a=2, depth=7)
    assert (model.a, model.models, model.w, model.extra) == (2, ("m1", "m2"), 3, {"depth": 7})


def _fit(name, model):
    """Fit a model of ``models()`` on a little data (a few steps: only the state matters)."""
    points = load_dataset("sphere_mixture", 60, seed=0).points
    if name == "ambient":
        return model.fit(points[:, :2])
    if name == "mixture":
        model.models[0].fit(points[:40])
        return model.fit(points[40:])
    if name == "pushforward":
        return model.set_params(ae_iter=3).fit(points)
    if name == "vmf":
        return model.fit(points[:40], points[40:])
    return model.fit(points)


@pytest.mark.parametrize("name", list(models()))
def test_check_is_fitted_tells_new_from_fitted_models(name):
    # Catches sklearn's check_is_fitted calling a new model fitted: it counts
    # attributes ending in "_", and ours exist (as None) from construction, so
    # meta-estimators and pipelines would use an untrained model.
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError
    from sklearn.utils.validation import check_is_fitted

    model = models()[name]
    assert not model.is_fitted
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(model)
    with torch.random.fork_rng():
        _fit(name, model)
    assert model.is_fitted
    check_is_fitted(model)


def test_unfitted_models_raise_not_fitted_error():
    # Catches a bare RuntimeError or an AttributeError (vMF mixture: its
    # parameters do not exist yet) instead of the named error.
    from implicit_geom import NotFittedError

    sphere = ImplicitSphere(2)
    points = load_dataset("sphere_mixture", 10, seed=0).points
    with pytest.raises(NotFittedError, match="fit first"):
        ManifoldKDE(sphere, kappa=10.0).score_samples(points)
    with pytest.raises(NotFittedError, match="fit first"):
        VonMisesFisherMixture(sphere, n_components=[1]).score_samples(points)
    with pytest.raises(NotFittedError, match="fit first"):
        AmbientEBM(2, hidden=[4]).sample(3)
    with pytest.raises(NotFittedError, match="fit first"):
        PushforwardEBM(3, 2, hidden=[8]).latent_box()
    # Catches score_samples (hence score and nll) of a new ConstrainedEBM or
    # of a union of new ones returning the density of the untrained random
    # network instead of raising; an energy with nothing to fit (no trainable
    # parameters: a known density) is ready as it is.
    with pytest.raises(NotFittedError, match="fit first"):
        ConstrainedEBM(sphere, hidden=[8]).score_samples(points)
    with pytest.raises(NotFittedError, match="fit first"):
        ConstrainedEBM(sphere, hidden=[8]).nll(points)
    with pytest.raises(NotFittedError, match="fit first"):  # log_prob answered
        ConstrainedEBM(sphere, hidden=[8]).log_prob(points)
    frozen = ConstrainedEBM(sphere, EnergyMLP(3, hidden=(4,)).requires_grad_(False))
    assert frozen.is_fitted
    assert frozen.score_samples(points).shape == (10,)
    # A mixture with given weights is ready once its models are; uniform
    # placeholder weights wait for fit.
    kde = ManifoldKDE(sphere, kappa=10.0).fit(points)
    assert DensityMixture([kde], weights=[1.0]).is_fitted
    assert not DensityMixture([kde]).is_fitted
    # A union is ready exactly when its models are: it has no fit of its own.
    a = ConstrainedEBM(ImplicitSphere(1, center=[-2.0, 0.0]), hidden=(4,), n_iter=1)
    b = ConstrainedEBM(ImplicitSphere(1, center=[2.0, 0.0]), hidden=(4,), n_iter=1)
    assert not UnionEBM(a, b).is_fitted
    with pytest.raises(NotFittedError, match="fit first"):
        UnionEBM(a, b).score_samples(torch.tensor([[-1.0, 0.0]], dtype=torch.float64))
    circle = torch.stack([torch.cos(torch.arange(8.0)), torch.sin(torch.arange(8.0))], -1)
    a.fit(circle + torch.tensor([-2.0, 0.0]))
    b.fit(circle + torch.tensor([2.0, 0.0]))
    assert UnionEBM(a, b).is_fitted


@pytest.mark.parametrize("name", ["constrained", "ambient", "pushforward"])
def test_a_refit_equals_a_fresh_fit(name):
    # Catches a refit continuing from the previous fit's weights (the energy
    # network, the autoencoder): fit(A) then fit(B) differed from fit(B) on a
    # new model, against "the next fit starts afresh" (EstimatorMixin).
    points = load_dataset("sphere_mixture", 80, seed=0).points
    other = load_dataset("sphere_mixture", 80, seed=1).points
    if name == "ambient":
        points, other = points[:, :2], other[:, :2]
    def new():
        model = models()[name]
        return model.set_params(ae_iter=3) if name == "pushforward" else model

    with torch.random.fork_rng():
        fresh = new().fit(points)
        refit = new().fit(other).fit(points)
    assert torch.equal(fresh.score_samples(points), refit.score_samples(points))


@pytest.mark.parametrize("name", ["mdf", "constrained", "ambient", "pushforward"])
def test_a_fit_stopped_part_way_leaves_no_half_trained_model(name, monkeypatch):
    # Catches a fit interrupted mid-training (TrainingDivergedError, Ctrl-C) leaving
    # part-trained weights under the previous fit's "fitted" flags: scored and
    # sampled as if fitted. The learned manifold is left exactly as it was; a
    # density model (whose refit starts afresh anyway) is left unfitted.
    from implicit_geom import NotFittedError
    from implicit_geom.learning.trainer import Trainer

    points = load_dataset("sphere_mixture", 60, seed=0).points
    if name == "ambient":
        points = points[:, :2]
    model = models()[name]
    if name == "pushforward":
        model.set_params(ae_iter=3)
    if name == "ambient":
        model.set_params(n_iter=3)  # more than the one step the interruption allows
    with torch.random.fork_rng():
        model.fit(points)
    state = {k: v.clone() for k, v in model.state_dict().items()} if name == "mdf" else None
    before = model.score_samples(points) if name != "mdf" else model.projection(points[:5])

    run = Trainer.run

    def interrupted(self, loss_fn, *args, **kwargs):
        calls = []

        def loss(*a, **k):
            calls.append(1)
            if len(calls) > 1:
                raise KeyboardInterrupt  # the user's Ctrl-C after one step
            return loss_fn(*a, **k)
        return run(self, loss, *args, **kwargs)

    monkeypatch.setattr(Trainer, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(load_dataset("sphere_mixture", 60, seed=1).points[:, :points.shape[1]])
    if name == "mdf":
        assert model.is_fitted
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
        assert torch.equal(model.projection(points[:5]), before)
        monkeypatch.setattr(Trainer, "run", run)
        model.fit(points, epochs=1, resume=True)  # the restored state resumes
    else:
        assert not model.is_fitted
        with pytest.raises(NotFittedError):
            model.score_samples(points)
        monkeypatch.setattr(Trainer, "run", run)
        with torch.random.fork_rng():
            model.fit(points)
        assert torch.equal(model.score_samples(points), before)
