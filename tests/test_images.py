"""Sample-quality and OOD metrics for images (implicit_geom.images)."""

import warnings

import numpy as np
import pytest
import scipy.linalg

from implicit_geom.exceptions import EmptyDataError, InvalidPointError
from implicit_geom.images import ClassifierFeatures, auroc, frechet_distance, image_grid


def test_frechet_distance_matches_the_matrix_square_root_formula():
    # Catches a wrong trace term (e.g. sqrt of the product's entries, or a
    # missing factor 2): compared with scipy's sqrtm of S_a S_b, computed
    # independently of the symmetric form used by the implementation.
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 0.7
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca) + np.trace(cb)
           - 2 * np.trace(scipy.linalg.sqrtm(ca @ cb)).real)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)


def test_frechet_distance_one_dimensional_closed_form_and_identity():
    # In 1-D the distance is (m1 - m2)^2 + (s1 - s2)^2; a set against itself is 0.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(1000, 1)), 3.0 + 2.0 * rng.normal(size=(800, 1))
    m1, m2, s1, s2 = a.mean(), b.mean(), a.std(ddof=1), b.std(ddof=1)
    assert frechet_distance(a, b) == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-10)
    assert abs(frechet_distance(a, a)) < 1e-10


def test_frechet_distance_with_singular_covariances():
    # Fewer points than features (and dead ReLU units) make both covariances
    # singular. Catches a trace term through square roots of covariance
    # eigenvalues: their rounding noise became ~sqrt(eps) |S| per null direction,
    # so a set's distance to itself came out -1e-3 here (a negative "distance")
    # and a scaled copy was off by 5e-4. Closed forms: b = 2 a + c has
    # S_b = 4 S_a and mean 2 mu_a + c: the distance is |mu_a + c|^2 + tr(S_a)
    # (tr S_a + tr S_b - 2 tr (4 S_a^2)^(1/2)).
    rng = np.random.default_rng(3)
    a = 10.0 * rng.normal(size=(4, 64))
    a[:, 40:] = 0.0  # dead units
    c = rng.normal(size=64)
    trace_a = np.trace(np.cov(a, rowvar=False))
    assert 0.0 <= frechet_distance(a, a) < 1e-9
    assert frechet_distance(a, a + c) == pytest.approx(np.sum(c ** 2), rel=1e-12)
    assert frechet_distance(a, 2.0 * a + c) == pytest.approx(
        np.sum((a.mean(0) + c) ** 2) + trace_a, rel=1e-12)
    b = rng.normal(size=(7, 64))
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-12)


def test_frechet_distance_rejects_bad_input():
    with pytest.raises(InvalidPointError):
        frechet_distance(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(EmptyDataError):
        frechet_distance(np.zeros((1, 2)), np.zeros((3, 2)))
    with pytest.raises(InvalidPointError):
        frechet_distance(np.full((3, 2), np.nan), np.zeros((3, 2)))


def test_auroc_orders_scores():
    # Catches a flipped label convention (larger score = out of distribution).
    assert auroc([0.1, 0.2, 0.3], [0.4, 0.5]) == 1.0
    assert auroc([0.4, 0.5], [0.1, 0.2, 0.3]) == 0.0
    assert auroc([1.0, 1.0], [1.0, 1.0]) == 0.5


def test_classifier_features_on_digits():
    # A classifier trained on part of the digits must classify the rest
    # (features that ignore the class would make the Fréchet distance blind
    # to it), and a set of real digits must be closer to other real digits
    # than to the same digits with half their pixels set to noise.
    from sklearn.datasets import load_digits
    from sklearn.exceptions import ConvergenceWarning

    digits = load_digits()
    x, y = digits.data / 16.0, digits.target
    with warnings.catch_warnings():
        # 200 Adam epochs (the default is 500) keep the suite short; sklearn
        # warns that they did not converge, the accuracy below is what counts.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = ClassifierFeatures(hidden=64, max_iter=200, seed=0).fit(x[:900], y[:900])
    assert clf.accuracy(x[900:1300], y[900:1300]) > 0.9
    assert clf.features(x[:5]).shape == (5, 64)
    rng = np.random.default_rng(0)
    noisy = x[1300:1700].copy()
    mask = rng.random(noisy.shape) < 0.5
    noisy[mask] = rng.random(mask.sum())
    real = clf.frechet_distance(x[900:1300], x[1300:1700])
    assert real < 0.5 * clf.frechet_distance(x[900:1300], noisy)
    assert clf.confidence(x[1300:1700]) > clf.confidence(noisy)


def test_classifier_features_reject_images_of_another_size():
    # Catches features / predict_proba / accuracy on images of another width
    # (or labels of another length) failing with a bare numpy or scikit-learn
    # ValueError instead of the library's InvalidPointError.
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(0)
    x, y = rng.random((30, 16)), np.arange(30) % 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf = ClassifierFeatures(hidden=8, max_iter=5, seed=0).fit(x, y)
    for call in (clf.features, clf.predict_proba, clf.confidence):
        with pytest.raises(InvalidPointError, match="trained on 16"):
            call(x[:, :10])
    with pytest.raises(InvalidPointError):
        clf.frechet_distance(x, x[:, :10])
    with pytest.raises(InvalidPointError, match="labels"):
        clf.accuracy(x, y[:5])


def test_image_grid_layout():
    images = np.arange(5 * 6, dtype=float).reshape(5, 6) / 30
    grid = image_grid(images, (2, 3), n_rows=2, pad=1)
    assert grid.shape == (2 * 3 - 1, 3 * 4 - 1)
    np.testing.assert_allclose(grid[:2, :3], images[0].reshape(2, 3))
    np.testing.assert_allclose(grid[3:5, 4:7], images[4].reshape(2, 3))
    with pytest.raises(InvalidPointError):
        image_grid(images, (4, 4))
