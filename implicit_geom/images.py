"""Image data on learned manifolds: sample quality and out-of-distribution scores.

- :class:`ClassifierFeatures` — a scikit-learn MLP classifier trained on labelled
  images; its hidden activations are the feature space of a Fréchet distance
  (the FID recipe, Heusel et al. 2017, with a classifier small enough to train
  in seconds on a CPU) and its predicted probabilities give a confidence score.
- :func:`frechet_distance` — between Gaussians fitted to two feature sets.
- :func:`auroc` — area under the ROC curve of a score separating in- from
  out-of-distribution points (the paper's OOD test with ``|F|``).
- :func:`image_grid` — tiles images for a PNG.
"""

import numpy as np
import torch

from .exceptions import EmptyDataError, InvalidPointError, NotFittedError

__all__ = ["ClassifierFeatures", "auroc", "frechet_distance", "grid_figure", "image_grid"]


def _numpy(x, name, ndim=2):
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != ndim:
        raise InvalidPointError(f"{name} must be {ndim}-dimensional, got shape {x.shape}")
    if x.shape[0] == 0:
        raise EmptyDataError(f"{name} is empty")
    if not np.isfinite(x).all():
        raise InvalidPointError(f"{name} contains NaN or inf values")
    return x


def frechet_distance(features_a, features_b):
    """Fréchet (2-Wasserstein) distance between Gaussians fitted to two feature sets.

    ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with sample means and
    covariances (ddof=1); the quantity FID reports (not its square root).

    Parameters
    ----------
    features_a, features_b : array-like, shape=[N_a, d], [N_b, d]
        At least 2 rows each.

    Returns
    -------
    float
    """
    a, b = _numpy(features_a, "features_a"), _numpy(features_b, "features_b")
    if a.shape[1] != b.shape[1]:
        raise InvalidPointError(f"feature widths differ: {a.shape[1]} and {b.shape[1]}")
    if min(a.shape[0], b.shape[0]) < 2:
        raise EmptyDataError("a Fréchet distance needs at least 2 points per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    norm = np.sqrt((a.shape[0] - 1) * (b.shape[0] - 1))
    # tr (S_a S_b)^(1/2) is the nuclear norm of X_a X_b^T / norm (X the centred
    # data): S_a S_b and (X_a X_b^T)^T (X_a X_b^T) / norm^2 share their nonzero
    # eigenvalues. Via R factors (X = Q R) it costs O(N d^2). Square roots of
    # covariance eigenvalues instead turn the rounding noise (~eps * |S|) of
    # each null direction (fewer points than features, dead ReLU units) into
    # ~sqrt(eps) * |S|: the distance of a set to itself came out -1e-3.
    ra, rb = np.linalg.qr(xa, mode="r"), np.linalg.qr(xb, mode="r")
    trace_root = np.linalg.svd(ra @ rb.T, compute_uv=False).sum() / norm
    value = (np.sum((mu_a - mu_b) ** 2) + np.sum(xa ** 2) / (a.shape[0] - 1)
             + np.sum(xb ** 2) / (b.shape[0] - 1) - 2.0 * trace_root)
    # A squared distance: rounding (~1e-15 relative) must not make it negative.
    return float(max(value, 0.0))


def auroc(scores_in, scores_out):
    """Area under the ROC curve when larger scores should mean out-of-distribution.

    Parameters
    ----------
    scores_in, scores_out : array-like, shape=[N_in], [N_out]

    Returns
    -------
    float
        1: every out-of-distribution score is above every in-distribution one;
        0.5: no separation.
    """
    from sklearn.metrics import roc_auc_score

    s_in = _numpy(scores_in, "scores_in", ndim=1)
    s_out = _numpy(scores_out, "scores_out", ndim=1)
    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    return float(roc_auc_score(labels, np.r_[s_in, s_out]))


class ClassifierFeatures:
    """A small MLP classifier whose hidden activations embed images.

    Parameters
    ----------
    hidden : int
        Width of the hidden (feature) layer.
    max_iter : int
        Adam epochs of scikit-learn's ``MLPClassifier``.
    alpha : float
        L2 penalty.
    seed : int

    Attributes
    ----------
    classifier_ : sklearn.neural_network.MLPClassifier
    """

    def __init__(self, hidden=128, max_iter=500, alpha=1e-3, seed=0):
        self.hidden, self.max_iter, self.alpha, self.seed = int(hidden), int(max_iter), \
            float(alpha), int(seed)
        self.classifier_ = None

    def fit(self, images, labels):
        """Train on flattened images ``(N, n)`` and integer labels ``(N,)``. Returns self."""
        from sklearn.neural_network import MLPClassifier

        x = _numpy(images, "images")
        y = np.asarray(labels)
        if y.shape != (x.shape[0],):
            raise InvalidPointError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
        self.classifier_ = MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=self.alpha,
                                         max_iter=self.max_iter, random_state=self.seed)
        self.classifier_.fit(x, y)
        return self

    def _check(self):
        if self.classifier_ is None:
            raise NotFittedError("call fit first: no classifier trained yet")

    def _images(self, images):
        # Images of another size than the training ones failed in a numpy
        # matmul or inside scikit-learn with a bare ValueError.
        self._check()
        x = _numpy(images, "images")
        width = self.classifier_.n_features_in_
        if x.shape[1] != width:
            raise InvalidPointError(f"images have {x.shape[1]} values, the classifier was "
                                    f"trained on {width}")
        return x

    def features(self, images):
        """Hidden-layer (ReLU) activations, shape ``(N, hidden)``."""
        x = self._images(images)
        w, b = self.classifier_.coefs_[0], self.classifier_.intercepts_[0]
        return np.maximum(x @ w + b, 0.0)

    def predict_proba(self, images):
        """Class probabilities, shape ``(N, n_classes)``."""
        return self.classifier_.predict_proba(self._images(images))

    def accuracy(self, images, labels):
        """Fraction of correctly classified images."""
        x = self._images(images)
        y = np.asarray(labels)
        if y.shape != (x.shape[0],):
            raise InvalidPointError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
        return float(self.classifier_.score(x, y))

    def confidence(self, images):
        """Mean over images of the largest class probability."""
        return float(self.predict_proba(images).max(1).mean())

    def frechet_distance(self, images_a, images_b):
        """:func:`frechet_distance` between the features of two image sets."""
        return frechet_distance(self.features(images_a), self.features(images_b))


def image_grid(images, shape, n_rows=None, pad=1, value_range=(0.0, 1.0)):
    """Tile flattened images into one 2-D array (grey levels) for plotting.

    Parameters
    ----------
    images : array-like, shape=[N, H * W]
    shape : tuple of int
        ``(H, W)`` of one image.
    n_rows : int, optional
        Default: about ``sqrt(N)``.
    pad : int
        Pixels of background between tiles.
    value_range : tuple of float
        Values are clipped to it.

    Returns
    -------
    numpy.ndarray, shape=[rows * (H + pad) - pad, cols * (W + pad) - pad]
    """
    x = _numpy(images, "images")
    height, width = (int(s) for s in shape)
    if x.shape[1] != height * width:
        raise InvalidPointError(f"images have {x.shape[1]} values, not {height} x {width}")
    n = x.shape[0]
    rows = int(n_rows) if n_rows else int(np.ceil(np.sqrt(n)))
    cols = int(np.ceil(n / rows))
    grid = np.full((rows * (height + pad) - pad, cols * (width + pad) - pad),
                   value_range[0], dtype=np.float64)
    tiles = np.clip(x, *value_range).reshape(n, height, width)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        grid[r * (height + pad):r * (height + pad) + height,
             c * (width + pad):c * (width + pad) + width] = tile
    return grid


def grid_figure(panels, shape, n_images=64, title=None):
    """A matplotlib figure with one grid of images per panel, side by side.

    Parameters
    ----------
    panels : dict of str to array-like, shape=[N, H * W]
        Title of each panel and its flattened images (the first ``n_images``).
    shape : tuple of int
        ``(H, W)``.
    n_images : int
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, images) in zip(axes[0], panels.items()):
        ax.imshow(image_grid(_numpy(images, name)[:n_images], shape), cmap="gray_r",
                  vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
