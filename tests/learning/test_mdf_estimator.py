"""NeuralImplicitManifold (the MDF estimator): fitting, geometry without weight
gradients, components, geomstats estimators, checkpoints (bit-identical reload in
a fresh process, resume, corruption)."""

import math
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from implicit_geom import (
    CheckpointError,
    ConditioningWarning,
    EmptyDataError,
    FitWarning,
    ImplicitManifold,
    InvalidPointError,
    NeuralImplicitManifold,
)
from implicit_geom.datasets import load_dataset, sphere_mixture, two_circles, von_mises_circle
from implicit_geom.learning import count_components
from implicit_geom.metrics import distance_to_manifold
from implicit_geom.numerics.validation import padded_box

FAST = dict(hidden=(32, 32), epochs=150, batch_size=400, n_negatives=64, buffer_size=256,
            langevin_steps=3, progress=False)


@pytest.fixture(scope="module")
def circle():
    data = von_mises_circle(400, kappa=0.5, seed=1)
    return NeuralImplicitManifold(2, **FAST).fit(data), data


def weights_untouched(model):
    return all(p.grad is None and not p.requires_grad for p in model.net.parameters())


def test_fit_learns_the_circle(circle):
    model, data = circle
    assert isinstance(model, ImplicitManifold) and model.dim == 1
    held_out = von_mises_circle(100, kappa=0.5, seed=2)
    stats = distance_to_manifold(held_out, model)
    assert stats.median < 0.01 and stats.max < 0.05
    assert float(model.singular_values(data).min()) >= model.s_min / 2
    lo, hi = model.bounds
    assert (lo < data.min(0).values).all() and (hi > data.max(0).values).all()
    curves = model.history_
    assert len(curves["loss"]) == FAST["epochs"] and curves["positive"][-1] < curves["positive"][0]
    assert set(curves) >= {"positive", "negative", "rank", "neg_sq", "box_rank", "sv_min", "lr"}


def test_two_circles_learned_as_two_components():
    centres = ((-3.0, 0.0), (3.0, 0.0))
    data = two_circles(400, kappa=0.0, centres=centres, seed=1)
    model = NeuralImplicitManifold(
        2, **dict(FAST, epochs=200, batch_size=100, w_neg=0.3, norm="l2_squared", lr=2e-2)
    ).fit(data)
    report = count_components(model, data, n_samples=1500)
    assert report.n_components == 2 and report.n_spurious == 0
    held_out = two_circles(100, kappa=0.0, centres=centres, seed=2)
    assert distance_to_manifold(held_out, model).median < 0.02
    # The learned manifold knows its components: each circle's points share
    # a label, the two circles differ, and nothing joins them.
    assert model.n_components == 2
    on_m = model.projection(held_out)
    labels = model.component_of(on_m)
    left = on_m[:, 0] < 0
    assert labels[left].unique().numel() == 1 and labels[~left].unique().numel() == 1
    assert labels[left][0] != labels[~left][0]
    i, j = int(left.nonzero()[0]), int((~left).nonzero()[0])
    assert float(model.metric.dist(on_m[i], on_m[j])) == float("inf")


def test_geometry_builds_no_graph_through_weights(circle):
    model, data = circle
    x = model.projection(data[:5] * 1.02)
    assert not x.requires_grad
    v = model.to_tangent(torch.tensor([[0.1, 0.05]]).expand(5, 2), x)
    y = model.metric.exp(v, x)
    w = model.metric.log(y, x)
    torch.testing.assert_close(w, v, rtol=0, atol=1e-7)
    for out in (v, y, w, model.random_point(3)):
        assert not out.requires_grad
    assert weights_untouched(model)


def test_frechet_mean_and_tangent_pca_on_learned_circle(circle):
    from geomstats.learning.frechet_mean import FrechetMean
    from geomstats.learning.pca import TangentPCA

    model, _ = circle
    angles = torch.linspace(-0.4, 0.4, 9, dtype=torch.float64)
    points = model.projection(torch.stack([angles.cos(), angles.sin()], -1))
    mean = FrechetMean(model).set(epsilon=1e-10, max_iter=50).fit(points).estimate_
    assert model.belongs(mean, atol=1e-9)
    assert abs(float(torch.atan2(mean[1], mean[0]))) < 0.05
    pca = TangentPCA(space=model, n_components=1).fit(points, base_point=mean)
    assert pca.components_.shape == (1, 2)
    # The one principal direction is the tangent at the mean.
    tangent = model.to_tangent(torch.as_tensor(pca.components_[0]), mean)
    assert float(torch.linalg.vector_norm(tangent)) == pytest.approx(1.0, abs=1e-6)
    assert weights_untouched(model)


def test_fixed_seed_reproduces_the_fit():
    data = von_mises_circle(200, seed=3)
    cfg = dict(FAST, epochs=5)
    a = NeuralImplicitManifold(2, **cfg).fit(data)
    b = NeuralImplicitManifold(2, **cfg).fit(data)
    c = NeuralImplicitManifold(2, **cfg, seed=1).fit(data)
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.equal(a.submersion(x), b.submersion(x))
    assert not torch.equal(a.submersion(x), c.submersion(x))


def test_save_load_in_fresh_process_is_bit_identical(circle, tmp_path):
    model, _ = circle
    path = tmp_path / "mdf.pt"
    model.save(path)
    x = torch.randn(20, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    torch.save(x, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import implicit_geom, torch
        m = implicit_geom.NeuralImplicitManifold.load({str(path)!r})
        x = torch.load({str(tmp_path / 'x.pt')!r}, weights_only=True)
        torch.save(m.submersion(x), {str(tmp_path / 'f.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ),
                   timeout=60)
    reloaded = torch.load(tmp_path / "f.pt", weights_only=True)
    assert torch.equal(reloaded, model.submersion(x))
    again = NeuralImplicitManifold.load(path)
    assert again.get_config() == model.get_config()
    assert again.history_ == model.history_
    assert all(torch.equal(a, b) for a, b in zip(again.bounds, model.bounds))


@pytest.mark.parametrize("weight_decay", [0.0, 0.03])
def test_resumed_training_equals_uninterrupted(tmp_path, weight_decay):
    # With weight decay this also catches a checkpoint that drops it (the
    # resumed half would then step with plain Adam).
    data = von_mises_circle(200, seed=4)
    cfg = dict(FAST, epochs=6, weight_decay=weight_decay)
    full = NeuralImplicitManifold(2, **cfg).fit(data)
    half = NeuralImplicitManifold(2, **cfg).fit(data, epochs=3)
    half.save(tmp_path / "half.pt")
    resumed = NeuralImplicitManifold.load(tmp_path / "half.pt").fit(data, epochs=3, resume=True)
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    assert resumed.history_["loss"] == full.history_["loss"]
    assert resumed.weight_decay == weight_decay
    if weight_decay:
        plain = NeuralImplicitManifold(2, **dict(cfg, weight_decay=0.0)).fit(data)
        assert not torch.equal(plain.submersion(data), full.submersion(data))
    with pytest.raises(ValueError, match="weight_decay"):
        NeuralImplicitManifold(2, weight_decay=float("nan"))


def test_corrupt_missing_and_foreign_checkpoints(circle, tmp_path):
    model, _ = circle
    with pytest.raises(CheckpointError, match="not found"):
        NeuralImplicitManifold.load(tmp_path / "nope.pt")
    path = tmp_path / "m.pt"
    model.save(path)
    blob = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError):
        NeuralImplicitManifold.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an implicit_geom checkpoint"):
        NeuralImplicitManifold.load(tmp_path / "foreign.pt")
    record = torch.load(path, weights_only=True)
    record["state_dict"]["net.0.weight"] = torch.zeros(5, 5, dtype=torch.float64)
    torch.save(record, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="incompatible"):
        NeuralImplicitManifold.load(tmp_path / "shape.pt")
    record = torch.load(path, weights_only=True)
    assert record["report"]["conditioning_"] == model.conditioning_
    record["report"] = [1.0]  # a report that is not a mapping: named, not an AttributeError
    torch.save(record, tmp_path / "report.pt")
    with pytest.raises(CheckpointError, match="fit report"):
        NeuralImplicitManifold.load(tmp_path / "report.pt")


def test_an_unfitted_model_refuses_geometry_and_checkpoints(circle, tmp_path, monkeypatch):
    # Catches an unfitted model answering projection, belongs, sampling,
    # metric and component queries on the zero set of its random initial
    # weights, and saving that as a checkpoint, instead of NotFittedError.
    from implicit_geom import NotFittedError
    from implicit_geom.learning import save_checkpoint
    from implicit_geom.learning.trainer import Trainer

    fitted, data = circle
    model = NeuralImplicitManifold(2, **FAST)
    x = torch.as_tensor(data[:3], dtype=torch.float64)
    v = torch.tensor([[0.0, 0.1]] * 3, dtype=torch.float64)
    calls = [lambda: model.projection(x), lambda: model.belongs(x), lambda: model(x),
             lambda: model.submersion(x), lambda: model.to_tangent(v, x),
             lambda: model.random_point(2), lambda: model.metric.exp(v, x),
             lambda: model.metric.log(x[:1], x[1:2]), lambda: model.metric.dist(x[:1], x[1:2]),
             lambda: model.metric.sectional_curvature(v, v, x),
             lambda: model.n_components, lambda: model.component_of(x),
             lambda: model.singular_values(x), lambda: model.save(tmp_path / "new.pt")]
    for call in calls:
        with pytest.raises(NotFittedError, match="fit first"):
            call()
    assert not (tmp_path / "new.pt").exists()
    # A first fit that stops part-way leaves it unfitted, refusing as before.
    run = Trainer.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        model.fit(data)
    assert not model.is_fitted
    with pytest.raises(NotFittedError):
        model.projection(x)
    monkeypatch.setattr(Trainer, "run", run)
    # A saved fit reloads fitted; a file of an unfitted model (older versions
    # wrote them: config and initial weights, nothing fit would keep) is refused.
    fitted.save(tmp_path / "fit.pt")
    again = NeuralImplicitManifold.load(tmp_path / "fit.pt")
    assert again.is_fitted and torch.equal(again.projection(x), fitted.projection(x))
    save_checkpoint(tmp_path / "old.pt", "NeuralImplicitManifold", model.get_config(),
                    {"state_dict": model.net.state_dict(), "fitted": False})
    with pytest.raises(CheckpointError, match="unfitted"):
        NeuralImplicitManifold.load(tmp_path / "old.pt")


def test_save_is_atomic(circle, tmp_path, monkeypatch):
    model, _ = circle
    path = tmp_path / "m.pt"
    model.save(path)
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(CheckpointError, match="disk full"):  # named, the cause kept
        model.save(path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


def test_bad_training_data():
    model = NeuralImplicitManifold(3, **FAST)
    bad = sphere_mixture(20, seed=0)
    bad[3, 1] = float("nan")
    with pytest.raises(InvalidPointError, match="NaN"):
        model.fit(bad)
    with pytest.raises(EmptyDataError):
        model.fit(torch.empty(0, 3, dtype=torch.float64))
    with pytest.raises(InvalidPointError, match="shape"):
        model.fit(torch.zeros(10, 2, dtype=torch.float64))
    # Catches: copies of one point were fitted (box 1e-12 wide, scale 1e-12)
    # into a random zero set beside the point, with only a warning.
    with pytest.raises(InvalidPointError, match="all 10 points of X are equal"):
        model.fit(torch.ones(10, 3, dtype=torch.float64))
    assert not model.is_fitted


def test_a_model_moved_to_float32_fits_in_float32():
    # Catches fit() passing float64 data to a model moved with .to(torch.float32)
    # (RuntimeError "must have the same dtype" in the negative sampler).
    data = von_mises_circle(200, kappa=0.5, seed=1)
    model = NeuralImplicitManifold(2, **dict(FAST, epochs=5)).to(torch.float32).fit(data)
    assert model.dtype == torch.float32 and model.bounds[0].dtype == torch.float32
    y = model.projection(torch.as_tensor(data[:5]).float())
    assert y.dtype == torch.float32
    assert float(model.submersion(y).abs().max()) <= model.tol_for()


def test_bad_epoch_count_leaves_the_fit_untouched():
    # Catches: fit(X, epochs=-1) replaced the fitted weights with fresh random
    # ones before the trainer refused the count, leaving a "fitted" model
    # with untrained weights, empty history and the old conditioning_; 2.5
    # was silently cut to 2.
    data = von_mises_circle(100, seed=2)
    model = NeuralImplicitManifold(2, **dict(FAST, epochs=3)).fit(data)
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    for epochs in (-1, 2.5, "3", float("nan")):
        with pytest.raises(ValueError, match="epochs"):
            model.fit(data, epochs=epochs)
    assert all(torch.equal(v, model.net.state_dict()[k]) for k, v in before.items())
    assert len(model.history_["loss"]) == 3
    model.fit(data, epochs=0)  # zero epochs are allowed (a fresh, untrained fit)
    assert model.history_ == {}


@pytest.mark.parametrize("bad", [dict(langevin_step_size=-0.01), dict(langevin_temperature=-1.0),
                                 dict(langevin_step_size=math.nan), dict(lr=0.0),
                                 dict(neg_exclusion=-1.0)])
def test_bad_training_settings_are_refused_by_the_constructor(bad):
    # Catches: a negative Langevin step or temperature was accepted and the
    # first fit died in the noise's square root ("math domain error").
    with pytest.raises(ValueError, match=next(iter(bad))):
        NeuralImplicitManifold(2, **FAST, **bad)


def test_negatives_near_data_can_be_excluded():
    data = von_mises_circle(100, seed=6)
    # An exclusion radius covering the whole box leaves no negatives at all.
    model = NeuralImplicitManifold(2, **dict(FAST, epochs=3), neg_exclusion=100.0).fit(data)
    assert model.history_["negative"] == [0.0] * 3 and model.history_["neg_sq"] == [0.0] * 3
    plain = NeuralImplicitManifold(2, **dict(FAST, epochs=3)).fit(data)
    assert min(plain.history_["negative"]) > 0


def test_codim_two_trains_exact_singular_values():
    # A circle in R^3 (codim 2): a short fit must keep the data's Jacobians full rank.
    angles = torch.linspace(0, 6.2, 100, dtype=torch.float64)
    data = torch.stack([angles.cos(), angles.sin(), torch.zeros_like(angles)], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditioningWarning)
        model = NeuralImplicitManifold(3, codim=2, **dict(FAST, epochs=40)).fit(data)
    sv = model.singular_values(data)
    assert sv.shape == (100, 2) and float(sv.min()) > 0.3
    assert model.history_["rank"][-1] < model.history_["rank"][0]
    # Catches: the data lie in the plane z = 0, and the box was 2e-13 wide in
    # z, so every point of the learned circle (never exactly at z = 0) fell
    # outside it: conditioning_ -inf with a ConditioningWarning, n_components
    # a ComponentError, negatives confined to the plane. A flat axis now gets
    # the widest axis's extent (the others keep the padded bounding box).
    low, high = model.bounds
    assert float((high - low)[2]) == pytest.approx(float((high - low)[:2].max()), rel=1e-9)
    assert model.conditioning_ > model.FOLD_FRACTION * model.s_min
    assert count_components(model, data, n_samples=1000).n_components == 1


def test_zero_set_conditioning_matches_closed_form():
    # With the MLP zeroed, F = (|u|^2 - 1) / 2 with u = x / scale: the zero set is
    # the circle of radius scale and |grad F| = 1 / scale on it. Catches a
    # conditioning taken off the zero set, or the largest singular value.
    model = NeuralImplicitManifold(2, **dict(FAST, epochs=1)).fit(von_mises_circle(200, seed=3))
    last = [m for m in model.net.net.modules() if isinstance(m, torch.nn.Linear)][-1]
    last.weight.zero_()
    last.bias.zero_()
    model.net.shift.zero_()
    model.net.scale.fill_(0.5)
    model.invalidate_caches()
    assert model.zero_set_conditioning() == pytest.approx(2.0, rel=1e-9)
    with pytest.raises(RuntimeError, match="fit first"):
        NeuralImplicitManifold(2, **FAST).zero_set_conditioning()


def test_restarts_keep_the_best_conditioned_fit(tmp_path):
    # Each restart must be the plain fit of its seed, scored like that fit, and
    # the kept one the best scored: catches a wrong seed, restoring another
    # restart's weights, or keeping the last instead of the best.
    data = von_mises_circle(200, seed=3)
    cfg = dict(FAST, epochs=4)
    model = NeuralImplicitManifold(2, **cfg, n_restarts=3,
                                   restart_selection="conditioning").fit(data)
    plain = [NeuralImplicitManifold(2, **cfg, seed=NeuralImplicitManifold.RESTART_STRIDE * i)
             .fit(data) for i in range(3)]
    scores = [p.zero_set_conditioning(seed=0) for p in plain]
    assert model.restart_scores_ == pytest.approx(scores, rel=1e-12)
    assert model.restart_ == max(range(3), key=scores.__getitem__)
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.equal(model.submersion(x), plain[model.restart_].submersion(x))
    assert model.history_["loss"] == plain[model.restart_].history_["loss"]
    assert model.seed == 0 and model.get_config()["n_restarts"] == 3
    # The checkpoint keeps how the fit was chosen (a reload had none of it).
    model.save(tmp_path / "restarts.pt")
    again = NeuralImplicitManifold.load(tmp_path / "restarts.pt")
    assert again.restart_scores_ == model.restart_scores_ and again.restart_ == model.restart_
    assert again.conditioning_ == model.conditioning_ and again.restart_gaps_ is None
    with pytest.raises(ValueError, match="n_restarts"):
        NeuralImplicitManifold(2, n_restarts=0)


def test_fit_warns_when_the_zero_set_is_near_singular():
    # fit scores its zero set (conditioning_) and warns below FOLD_FRACTION *
    # s_min. Catches a fit that never checks, a check against the wrong bound
    # or in the wrong direction, and restarts that keep a fold silently. Four
    # epochs cannot lift F's singular values to s_min=50: below 0.6 * 50.
    data = von_mises_circle(200, seed=3)
    cfg = dict(FAST, epochs=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditioningWarning)
        sound = NeuralImplicitManifold(2, **cfg).fit(data)
    assert sound.conditioning_ == sound.zero_set_conditioning(seed=0)
    assert sound.conditioning_ >= NeuralImplicitManifold.FOLD_FRACTION * sound.s_min
    with pytest.warns(ConditioningWarning, match=r"refit with n_restarts=3"):
        weak = NeuralImplicitManifold(2, **cfg, s_min=50.0, s_max=100.0).fit(data)
    assert weak.conditioning_ < 30.0
    with pytest.warns(ConditioningWarning, match=r"even the best of 2 restarts"):
        best = NeuralImplicitManifold(2, **cfg, s_min=50.0, s_max=100.0, n_restarts=2).fit(data)
    assert best.conditioning_ == max(best.restart_scores_)
    # Beyond CHECK_MAX_DIM a single fit is not checked (a box sample is costly
    # there and rarely reaches the whole zero set): no score, no warning.
    high = torch.randn(100, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConditioningWarning)
        unchecked = NeuralImplicitManifold(4, 2, **dict(cfg, epochs=1, s_min=50.0,
                                                        s_max=100.0)).fit(high)
    assert unchecked.conditioning_ is None


def test_fit_warns_when_the_zero_set_misses_the_data():
    # s_min and s_max are slopes in the data's units: on a circle of radius
    # 0.01 a default fit stops about five radii from the data. Catches fits
    # that end away from their training data without a word (no
    # ConditioningWarning: the zero set there is well conditioned).
    angles = torch.linspace(0, 6.2, 100, dtype=torch.float64)
    data = torch.stack([angles.cos(), angles.sin()], -1)
    cfg = dict(FAST, epochs=100)
    with pytest.warns(FitWarning, match="misses the training data.*rescale the data"):
        small = NeuralImplicitManifold(2, **cfg).fit(0.01 * data)
    assert small._data_gap(0.01 * data) > 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        unit = NeuralImplicitManifold(2, **cfg).fit(data)
    assert unit._data_gap(data) < 1e-3
    # A thousand times larger, the zero set passes through the data but F
    # cannot grow to slope s_min: the fold warning said to try restarts,
    # which start from the same slopes; it now names the data's spread.
    with pytest.warns(ConditioningWarning, match="rescale the data"):
        NeuralImplicitManifold(2, **dict(cfg, epochs=30)).fit(1000.0 * data)


def test_restarts_in_worker_processes_equal_one_after_another(record_forks, tmp_path):
    # n_jobs forks the restarts (threads.fork_map) and takes the kept fit's
    # state back from its process. Catches restarts that do not run in their
    # own processes, a restart's score or state attributed to another, and a
    # kept fit that comes back incomplete (weights, box, optimizer, negatives,
    # random stream: resuming it must continue exactly as the serial fit does,
    # and a checkpoint of it must reload).
    from implicit_geom.learning import mdf_estimator

    pids = record_forks(mdf_estimator)
    data = von_mises_circle(200, seed=3)
    cfg = dict(FAST, epochs=4, n_restarts=3)
    serial = NeuralImplicitManifold(2, **cfg).fit(data)
    assert len(pids) == 1  # n_jobs=1: one part, run here
    pids.clear()
    forked = NeuralImplicitManifold(2, **cfg, n_jobs=2).fit(data)
    assert len(pids) == 2 and len(set(pids)) == 2 and pids[0] == os.getpid()
    assert forked.restart_scores_ == serial.restart_scores_
    assert forked.restart_ == serial.restart_
    for a, b in zip(forked.net.state_dict().values(), serial.net.state_dict().values()):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(forked.bounds, serial.bounds))
    assert forked.history_ == serial.history_
    # The kept restart resumes as the plain fit of its seed does.
    plain = NeuralImplicitManifold(2, **dict(cfg, n_restarts=1),
                                   seed=NeuralImplicitManifold.RESTART_STRIDE * forked.restart_)
    plain.fit(data).fit(data, epochs=2, resume=True)
    forked.fit(data, epochs=2, resume=True)
    serial.fit(data, epochs=2, resume=True)
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.equal(forked.submersion(x), plain.submersion(x))
    assert torch.equal(serial.submersion(x), plain.submersion(x))
    forked.save(tmp_path / "m")
    again = NeuralImplicitManifold.load(tmp_path / "m")
    assert again.n_jobs == 2 and torch.equal(again.submersion(x), serial.submersion(x))
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="n_jobs"):
            NeuralImplicitManifold(2, n_jobs=bad)


def test_box_margin_decides_whether_the_glycine_box_encloses_the_torus():
    # The learned glycine torus (benchmarks/geometry.py, tutorial 4) is trained
    # with box_margin=0.35 because the residues leave the torus's far ends
    # empty: the default box cuts the torus (F untrained beyond it), 0.35
    # encloses it. Catches a change of the data or of the box arithmetic that
    # breaks that premise, and a fit that ignores box_margin.
    data = load_dataset("glycine")
    R, r = data.meta["R"], data.meta["r"]
    reach = torch.tensor([R + r, R + r, r], dtype=torch.float64)
    lo, hi = padded_box(data.points, 0.1)
    assert not ((lo < -reach).all() and (hi > reach).all())
    lo, hi = padded_box(data.points, 0.35)
    assert (lo < -reach).all() and (hi > reach).all()
    model = NeuralImplicitManifold(3, 1, hidden=(8,), epochs=1, batch_size=1000, box_margin=0.35,
                                   n_negatives=8, buffer_size=16, langevin_steps=1,
                                   progress=False).fit(data.points)
    assert all(torch.allclose(a, b) for a, b in zip(model.bounds, (lo, hi)))
    with pytest.raises(ValueError, match="box_margin"):  # NaN would give a NaN box
        NeuralImplicitManifold(3, 1, box_margin=float("nan"))


def test_agreement_keeps_the_restart_closest_to_the_others(tmp_path):
    # restart_gaps_ must be distances between *different* restarts' zero sets
    # (catches measuring a restart against itself: every gap would be 0) and
    # close to the true ones: the mean distance from points of one learned
    # curve to their closest points on the other, by projection; the kept
    # restart is the sound one with the smallest mean gap (catches argmax).
    data = von_mises_circle(200, seed=3)
    cfg = dict(FAST, epochs=6)
    model = NeuralImplicitManifold(2, **cfg, n_restarts=3).fit(data)  # the default
    plain = [NeuralImplicitManifold(2, **cfg, seed=NeuralImplicitManifold.RESTART_STRIDE * i)
             .fit(data) for i in range(3)]
    gaps = model.restart_gaps_
    assert gaps.shape == (3, 3) and torch.equal(gaps, gaps.T)
    for i in range(3):
        for j in range(i + 1, 3):
            on_i = plain[i]._zero_set_sample(20000, 0)[:NeuralImplicitManifold.AGREEMENT_SAMPLES]
            on_j = plain[j]._zero_set_sample(20000, 0)[:NeuralImplicitManifold.AGREEMENT_SAMPLES]
            true = ((on_i - plain[j].projection(on_i)).norm(dim=-1).mean()
                    + (on_j - plain[i].projection(on_j)).norm(dim=-1).mean()) / 2
            assert float(gaps[i, j]) == pytest.approx(float(true), rel=0.05)
    assert float(gaps[~torch.eye(3, dtype=torch.bool)].min()) > 0
    assert model.restart_ == int(gaps.nansum(1).argmin())
    x = torch.randn(10, 2, dtype=torch.float64)
    assert torch.equal(model.submersion(x), plain[model.restart_].submersion(x))
    # The zero-set samples come back from forked restarts intact.
    forked = NeuralImplicitManifold(2, **cfg, n_restarts=3, n_jobs=2).fit(data)
    assert torch.equal(forked.restart_gaps_, gaps) and forked.restart_ == model.restart_
    model.save(tmp_path / "agreement.pt")  # the gaps survive a checkpoint
    again = NeuralImplicitManifold.load(tmp_path / "agreement.pt")
    assert torch.allclose(again.restart_gaps_, gaps, rtol=0, atol=0, equal_nan=True)
    with pytest.raises(ValueError, match="restart_selection"):
        NeuralImplicitManifold(2, restart_selection="best")


@pytest.mark.parametrize("X, message", [
    (torch.ones(20, 2), "all 20 points of X are equal"),
    (1e200 * torch.eye(20, 2, dtype=torch.float64), "X has coordinates as large as 1e+200"),
    (1e-200 * torch.eye(20, 2, dtype=torch.float64), "X spreads over only 1e-200")])
def test_fit_refuses_data_without_a_usable_spread(X, message):
    # Catches the Python API training on such data: a NaN loss at epoch 0
    # (1e200) or a 1e-12 length scale and no zero set near the data (1e-200).
    from implicit_geom.exceptions import InvalidPointError
    from implicit_geom.learning import NeuralImplicitManifold

    model = NeuralImplicitManifold(2, codim=1, epochs=1, progress=False)
    with pytest.raises(InvalidPointError, match=re.escape(message)):
        model.fit(X)
    assert not model.is_fitted
