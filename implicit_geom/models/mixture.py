"""Convex mixtures of fitted, normalised densities on one manifold.

If every ``p_k`` is a normalised density on M (w.r.t. its volume), so is
``p = sum_k w_k p_k`` for weights on the simplex: no new normaliser is
needed, and each component keeps the certificate of its own ``log Z``
(:meth:`DensityMixture.log_z_error`). The weights maximise the mixture's
likelihood of points the components were not trained on (a validation
part), by expectation-maximisation: the log-likelihood is concave in the
weights, so EM reaches the global optimum. Mixing models that err in
different places (kernel mixtures that are too peaked between data, smooth
networks that are too flat at data) gives a lower held-out NLL than choosing
the best one.
"""

import math

import torch

from ..exceptions import CheckpointError, NotFittedError
from ..learning.checkpoint import check_manifolds, load_checkpoint, save_checkpoint
from ..learning.estimator import EstimatorMixin
from ..manifolds.analytic import as_implicit
from ..numerics.validation import DTYPE, as_points, check_int

__all__ = ["DensityMixture", "normalized_log_density"]

_CHECKPOINT_KIND = "DensityMixture"


def normalized_log_density(model, X):
    """A fitted model's normalised log density at ``X`` (what a user gets), shape (n,).

    Models with ``score_samples`` (ours all have it) are asked directly: those
    on an implicit manifold score the points' closest points on it
    (:meth:`~implicit_geom.models.ConstrainedEBM.score_samples`: held-out
    points off a learned M are scored at their closest points, and points
    the quadrature of ``log Z`` does not cover raise
    :class:`~implicit_geom.exceptions.QuadratureCoverageError`); other
    models by ``log_prob``.
    """
    if hasattr(model, "score_samples"):
        out = model.score_samples(X)
    else:
        out = model.log_prob(X)
    return torch.as_tensor(out, dtype=DTYPE).reshape(-1)


class DensityMixture(EstimatorMixin):
    """``p(x) = sum_k w_k p_k(x)`` of fitted normalised densities on one manifold.

    Parameters
    ----------
    models : sequence
        Fitted density models on the same manifold (the same object where
        they have a ``manifold``), each with ``log_prob`` or
        ``score_samples`` giving its normalised log density w.r.t. the
        manifold's volume: :class:`~implicit_geom.models.ConstrainedEBM`,
        :class:`~implicit_geom.models.ManifoldKDE`,
        :class:`~implicit_geom.models.VonMisesFisherMixture`, ...
        ``sklearn.base.clone`` shares them: the clone fits only its weights.
    weights : sequence of float, optional
        Fixed weights (normalised); by default equal until :meth:`fit`.
    prior : float
        Dirichlet pseudo-count added to every component's responsibility in
        EM (maximum a posteriori weights; 0: maximum likelihood).
    n_iter : int
        Most EM iterations.
    tol : float
        EM stops when the mean log-likelihood gains less than this.

    Attributes
    ----------
    weights_ : torch.Tensor, shape (K,)
    n_iter_ : int
        EM iterations run by the last :meth:`fit`.
    fit_nll_ : float
        Mean negative log-likelihood of the points :meth:`fit` saw.

    Examples
    --------
    >>> mix = DensityMixture([ebm_a, ebm_b]).fit(X_val)   # doctest: +SKIP
    >>> mix.score_samples(X_test).mean()                   # doctest: +SKIP
    """

    def __init__(self, models, weights=None, *, prior=0.0, n_iter=1000, tol=1e-10):
        self.models = list(models)
        if not self.models:
            raise ValueError("DensityMixture needs at least one model")
        manifolds = [m.manifold for m in self.models if hasattr(m, "manifold")]
        if any(mf is not manifolds[0] for mf in manifolds[1:]):
            # Densities w.r.t. the volumes of different manifolds do not mix.
            raise ValueError("every model of a DensityMixture must live on the same manifold "
                             "object")
        self.manifold = manifolds[0] if manifolds else None
        if not prior >= 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        self.prior, self.n_iter, self.tol = float(prior), int(n_iter), float(tol)
        k = len(self.models)
        w = torch.ones(k, dtype=DTYPE) if weights is None else torch.as_tensor(weights,
                                                                                dtype=DTYPE)
        # (An infinite weight normalised to NaN weights.)
        if (w.shape != (k,) or not bool((w >= 0).all()) or not bool(torch.isfinite(w).all())
                or not float(w.sum()) > 0):
            raise ValueError(f"weights must be {k} non-negative numbers with a positive sum, "
                             f"got {weights}")
        self.weights_ = w / w.sum()
        self.n_iter_, self.fit_nll_ = 0, None

    def __sklearn_clone__(self):
        # The components are the mixture's fitted inputs, not hyper-parameters
        # (only the weights are fitted): a clone shares them. sklearn's default
        # would clone each one unfitted, each with its own copy of the manifold.
        return type(self)(**self.get_params(deep=False))

    @property
    def is_fitted(self):
        """Whether the mixture is ready: its models fitted, and its weights given or
        fitted by :meth:`fit` (uniform ones before a fit are a placeholder)."""
        given = self.get_params(deep=False)["weights"] is not None
        return ((given or self.fit_nll_ is not None)
                and all(getattr(m, "is_fitted", True) for m in self.models))

    @property
    def dim(self):
        return self.manifold.ambient_dim if self.manifold is not None else self.models[0].dim

    def component_log_densities(self, X):
        """Each component's normalised log density at ``X``, shape (n, K)."""
        return torch.stack([normalized_log_density(m, X) for m in self.models], dim=1)

    def fit(self, X, y=None):
        """Maximum-likelihood (or MAP, with ``prior``) weights on points ``X`` by EM.

        ``X`` should be points the components were not trained on (a
        validation part): on training points the most over-fitted component
        would take all the weight.

        Returns
        -------
        self
        """
        log_p = self.component_log_densities(X)
        if not bool(torch.isfinite(log_p).any(dim=1).all()):
            raise ValueError("some points have zero density under every component")
        self.weights_, self.n_iter_, self.fit_nll_ = self._em(log_p)
        return self

    def _em(self, log_p):
        n, k = log_p.shape
        w = torch.full((k,), 1.0 / k, dtype=DTYPE)
        previous, it = math.inf, 0
        for it in range(1, self.n_iter + 1):
            joint = log_p + w.log()
            total = torch.logsumexp(joint, dim=1)
            nll = float(-total.mean())
            if previous - nll < self.tol:
                break
            previous = nll
            resp = (joint - total[:, None]).exp().sum(0) + self.prior
            w = resp / resp.sum()
        nll = float(-torch.logsumexp(log_p + w.log(), dim=1).mean())
        return w, it, nll

    def log_prob(self, x):
        """Normalised log density of the mixture, shape ``x.shape[:-1]``."""
        x = as_points(x, self.dim, "x")
        flat = x.reshape(-1, self.dim)
        return self.score_samples(flat).reshape(x.shape[:-1])

    def score_samples(self, X):
        """Normalised log density at points ``X`` (each component's own scoring), shape (n,)."""
        keep = self.weights_ > 0  # a component without weight is never evaluated
        log_p = torch.stack([normalized_log_density(m, X)
                             for m, on in zip(self.models, keep) if on], dim=1)
        return torch.logsumexp(log_p + self.weights_[keep].log().to(log_p), dim=1)

    def log_z_error(self):
        """Bound on the error of ``log p`` from the components' normalisers.

        ``log p`` is off by at most the largest error of a weighted
        component's ``log Z`` (each term of the sum is off by at most its
        own factor ``exp(err_k)``); models without ``normalizer`` (closed
        forms) count as exact.
        """
        errors = [m.normalizer().error for m, w in zip(self.models, self.weights_)
                  if w > 0 and hasattr(m, "normalizer")]
        return max(errors, default=0.0)

    def sample(self, n_samples, seed=0, **kwargs):
        """Exact mixture sampling: multinomial counts, then each component's ``sample``.

        Parameters
        ----------
        n_samples : int
        seed : int
        **kwargs
            Passed to every component's ``sample`` (e.g. ``n_steps``).

        Returns
        -------
        torch.Tensor, shape (n_samples, n), in random order.
        """
        n_samples = check_int(n_samples, "n_samples")  # 2.5 drew 2
        gen = torch.Generator().manual_seed(int(seed))
        comp = torch.multinomial(self.weights_, n_samples, replacement=True, generator=gen)
        counts = torch.bincount(comp, minlength=len(self.models))
        parts = [torch.as_tensor(m.sample(int(c), seed=int(seed) + 1 + i, **kwargs), dtype=DTYPE)
                 for i, (m, c) in enumerate(zip(self.models, counts)) if c > 0]
        out = torch.cat(parts)
        return out[torch.randperm(out.shape[0], generator=gen).to(out.device)]

    # ----------------------------------------------------------- persistence
    def save(self, path):
        """Save the weights, the settings and every component as
        :meth:`ConstrainedEBM.save` does, in one checkpoint (see :meth:`load`).

        The library's atomic, weights-only checkpoint
        (:mod:`implicit_geom.learning.checkpoint`). The manifold is not stored
        (as for :meth:`ConstrainedEBM.save`), only what identifies it: its
        class, dimensions and a fingerprint of its state, checked on load.

        Raises
        ------
        NotFittedError
            Before :meth:`fit` (uniform placeholder weights) unless weights
            were given, or with an unfitted component.
        TypeError
            A component other than a :class:`~implicit_geom.models.ConstrainedEBM`
            (closed forms, kernel estimates...: nothing to rebuild it from), or
            one :meth:`ConstrainedEBM.save` cannot save.
        """
        from .ebm import ConstrainedEBM

        if not self.is_fitted:
            raise NotFittedError("call fit first (or give weights): an unfitted "
                                 "DensityMixture has no weights to save")
        others = sorted({type(m).__name__ for m in self.models
                         if not isinstance(m, ConstrainedEBM)})
        if others:
            raise TypeError(f"save supports mixtures of ConstrainedEBM models, not of "
                            f"{', '.join(others)}")
        parts = [m._checkpoint() for m in self.models]
        given = self.get_params(deep=False)["weights"]
        config = {"models": [c for c, _ in parts],
                  "weights": None if given is None else
                  torch.as_tensor(given, dtype=DTYPE).reshape(-1).tolist(),
                  "prior": self.prior, "n_iter": self.n_iter, "tol": self.tol,
                  "n_iter_": self.n_iter_, "fit_nll_": self.fit_nll_,
                  # Every component's record holds it (one manifold object):
                  # the first one's, not computed again.
                  "manifold": parts[0][0]["manifold"]}
        payload = {"models": [p for _, p in parts], "weights_": self.weights_}
        save_checkpoint(path, _CHECKPOINT_KIND, config, payload)

    @classmethod
    def load(cls, path, manifold, check_manifold=True):
        """Rebuild a saved mixture on ``manifold`` (every component on that one object).

        ``check_manifold=False`` loads onto a manifold whose identity differs
        from the saved one with a warning instead (see :meth:`ConstrainedEBM.load`).

        Each component comes back a :class:`ConstrainedEBM` (a product as
        :meth:`IntersectionEBM.load`), in its saved dtype; the weights, the
        settings and the last fit's ``n_iter_`` and ``fit_nll_`` as saved.

        Raises
        ------
        CheckpointError
            Missing, unreadable, corrupt, foreign or incompatible file, or a
            manifold other than the saved one (its class, dimension or state).
        """
        from .ebm import ConstrainedEBM

        config, record = load_checkpoint(path, _CHECKPOINT_KIND, required=("models", "weights_"))
        manifold = as_implicit(manifold)  # once: the components share the object
        check_manifolds([config.get("manifold")], [manifold], path, "the mixture was saved on",
                        check_manifold=check_manifold)
        configs, records, weights = config.get("models"), record["models"], record["weights_"]
        if not (isinstance(configs, list) and isinstance(records, list) and configs
                and len(configs) == len(records) and isinstance(weights, torch.Tensor)
                and weights.shape == (len(records),) and bool(torch.isfinite(weights).all())
                and bool((weights >= 0).all())
                and abs(float(weights.sum()) - 1) < 1e-9):
            raise CheckpointError(f"checkpoint {path} has a corrupt list of models or weights")
        models = [ConstrainedEBM._from_checkpoint(c, r, manifold, path, check_manifold=None)
                  for c, r in zip(configs, records)]
        try:
            model = cls(models, weights=config.get("weights"), prior=config["prior"],
                        n_iter=config["n_iter"], tol=config["tol"])
            model.n_iter_ = int(config["n_iter_"])
            fit_nll = config["fit_nll_"]
            model.fit_nll_ = None if fit_nll is None else float(fit_nll)
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from err
        model.weights_ = weights.to(DTYPE)  # as saved (fitted, or the given ones normalised)
        if not model.is_fitted:
            raise CheckpointError(f"checkpoint {path} holds an unfitted DensityMixture")
        return model
