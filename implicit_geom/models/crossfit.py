"""K-fold cross-fitting of constrained EBMs: selection and a geometric-mean ensemble.

Choosing between energy families (say a plain MLP and one with Fourier
features) on one small validation part is a coin flip when their held-out
NLLs differ by less than its standard error, and the early-stopped fit
varies with the part held out. Cross-fitting uses every point once for
validation: each family is fitted K times, each time early-stopped on one
fold and trained on the others; the family with the lowest mean held-out NLL
over all points is chosen, and its K members are combined into one density
``p ~ (prod_k p_k)^(1/K)`` (the mean of their energies), normalised again by
the manifold's quadrature.

The geometric mean of normalised densities loses nothing pointwise: by
Hölder's inequality its normaliser ``Z = int prod_k p_k^(1/K) <= 1``, so
``log p(x) >= mean_k log p_k(x)`` at every point of M. It averages out the
members' fold-to-fold variance, which matters most where a density is used
away from the points that validated it: on an intersection with another
manifold (:class:`~implicit_geom.models.IntersectionEBM`), only the factors'
values on a curve of measure zero count.
"""

import math

import numpy as np
import torch

from ..manifolds.analytic import as_implicit
from .ebm import ConstrainedEBM, _check_data
from .energy_nets import SumEnergy
from .mixture import normalized_log_density

__all__ = ["cross_fit_ebm"]


def cross_fit_ebm(manifold, X, candidates, *, n_folds=5, seed=0, **ebm_kwargs):
    """Choose an energy family by K-fold cross-validation and average its fold fits.

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
        The manifold of every member (one object).
    X : array-like, shape (n_samples, n)
        All the data; each point is held out by exactly one fold.
    candidates : dict of str to callable
        ``name -> make(fold)`` returning a fresh energy network (``torch.nn.Module``
        mapping (B, n) to (B,)) for fold ``fold`` (e.g. seeded per fold).
    n_folds : int
        K >= 2 (at most the number of points).
    seed : int
        Seed of the fold assignment and of the members.
    **ebm_kwargs
        Settings of every member's :class:`ConstrainedEBM` (a ``patience``
        makes each member early-stop on its held-out fold); the ensemble keeps
        them too (sampling settings).

    Returns
    -------
    ConstrainedEBM
        Fitted: its energy is ``SumEnergy`` of the chosen members with weights
        ``1/K``, its box, probes and component weights come from all of ``X``.
        Extra attributes: ``cv_nll_`` (dict: family -> mean held-out NLL over
        all points), ``choice_`` (the chosen family), ``members_`` (its K fitted
        models) and ``folds_`` (K index tensors of the held-out points).

    Raises
    ------
    ValueError
        No candidates, ``n_folds`` outside ``[2, n_samples]``, or no candidate
        with a finite cross-validated NLL.
    """
    manifold = as_implicit(manifold)
    X = _check_data(X, manifold.ambient_dim)
    n = X.shape[0]
    if not candidates:
        raise ValueError("cross_fit_ebm needs at least one candidate energy family")
    if not 2 <= int(n_folds) <= n:
        raise ValueError(f"n_folds must be in [2, {n}] (the number of points), got {n_folds}")
    perm = torch.as_tensor(np.random.default_rng(int(seed)).permutation(n), device=X.device)
    folds = [perm[k::int(n_folds)] for k in range(int(n_folds))]
    scores, members = {}, {}
    for name, make in candidates.items():
        fits, total = [], 0.0
        for k, held in enumerate(folds):
            keep = torch.ones(n, dtype=torch.bool, device=X.device)
            keep[held] = False
            model = ConstrainedEBM(manifold, make(k), seed=seed, **ebm_kwargs)
            model.fit(X[keep], X[held])
            # What a user of the member gets on points it never saw.
            total -= float(normalized_log_density(model, X[held]).sum())
            fits.append(model)
        # A non-finite score (NaN included) never wins.
        scores[name], members[name] = (total / n if math.isfinite(total) else math.inf), fits
    choice = min(scores, key=scores.get)  # ties: the first candidate listed
    if not math.isfinite(scores[choice]):
        raise ValueError(f"no candidate has a finite cross-validated NLL: {scores}")
    chosen = members[choice]
    k = len(chosen)
    energy = SumEnergy([m.energy_net for m in chosen], weights=[1.0 / k] * k)
    model = ConstrainedEBM(manifold, energy, seed=seed, **ebm_kwargs)
    model._adopt(X)
    model.cv_nll_, model.choice_, model.members_, model.folds_ = scores, choice, chosen, folds
    return model
