"""One honest evaluation of density models, used by the CLI and every benchmark.

What a user of a model gets is what is measured:

* **held-out NLL** (:func:`held_out_nll`): the model's own normalised log
  density w.r.t. the volume of its manifold, nothing else;
* **W, our protocol** (:func:`w_mass`): the model's probability mass on a
  grid of bins (normalised density times quadrature weights on its own
  manifold: each connected component carries exactly the mass the model gives
  it) against the true mass per bin (synthetic sets: the true density times
  the true manifold's quadrature) or the held-out points;
* **W, the reference notebooks' protocol** (:func:`w_reference`): the raw
  ``exp(-E / T)`` at points covering the model's manifold, each bin weighted by
  its points' mean value, reference limits and granularity, against the true
  density on points covering the true manifold or the held-out points
  (:func:`~implicit_geom.metrics.paper_wasserstein` reproduces the reference
  code's ``wasserstein_between_discretized_densities`` /
  ``wasserstein_discretized_density_to_points``).

No figure here rescales a model's output by data shares or by the truth, and
the truth never normalises a model. :func:`random_split` gives the 80/10/10
splits (tune on the validation part; report on the test part) and
:func:`mean_std` summarises with ``ddof=1``.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from .exceptions import EmptyDataError, ProjectionError, QuadratureCoverageError
from .metrics import discretized_wasserstein, paper_wasserstein
from .numerics.validation import DTYPE, FLAT_AXIS, check_int, padded_box

#: Network-simplex iterations of the exact OT between point clouds.
_EMD_ITER = 10_000_000
__all__ = [
    "REFERENCE_PROTOCOL",
    "OUR_BOXES",
    "WGrid",
    "random_split",
    "mean_std",
    "log_density",
    "held_out_nll",
    "model_mass",
    "truth_mass",
    "w_mass",
    "w_reference",
    "w_samples",
    "bins_for",
    "evaluate_model",
]


@dataclass(frozen=True)
class WGrid:
    """Box and resolution of a binned Wasserstein distance.

    Attributes
    ----------
    low, high : tuple of float
    bins : int
        Bins per axis (the reference code's ``granularity - 1``).
    temperatures : tuple of float
        Temperatures ``T`` of ``exp(-E / T)`` (reference protocol only).
    """

    low: tuple
    high: tuple
    bins: int
    temperatures: tuple = (1.0,)

    @property
    def bounds(self):
        return (torch.tensor(self.low, dtype=DTYPE), torch.tensor(self.high, dtype=DTYPE))


#: The reference notebooks' settings: limits, granularity (bins + 1) and the
#: temperatures the paper reported (flood at T = 2, glycine at T = 3, besides T = 1).
REFERENCE_PROTOCOL = {
    "circle": WGrid((-1.3, -1.3), (1.3, 1.3), 99),
    "two_circles": WGrid((-3.3, -3.3), (3.3, 3.3), 99),
    "flood": WGrid((-1.3,) * 3, (1.3,) * 3, 29, (1.0, 2.0)),
    "glycine": WGrid((-4.1, -4.1, -2.7), (4.1, 4.1, 2.7), 29, (1.0, 3.0)),
}

#: Our protocol's boxes: the true manifold's box padded by 0.3 (the learned
#: manifold of real data: the padded data box, given per call).
OUR_BOXES = {
    "circle": WGrid((-1.3, -1.3), (1.3, 1.3), 99),
    "two_circles": WGrid((-3.1, -1.3), (3.1, 1.3), 99),
    "sphere_mixture": WGrid((-1.3,) * 3, (1.3,) * 3, 29),
    "flood": WGrid((-1.3,) * 3, (1.3,) * 3, 29),
    "volcano": WGrid((-1.3,) * 3, (1.3,) * 3, 29),
    "torus": WGrid((-3.3, -3.3, -1.3), (3.3, 3.3, 1.3), 29),
    "glycine": WGrid((-4.1, -4.1, -2.7), (4.1, 4.1, 2.7), 29),
}


def bins_for(dim):
    """Default bins per axis: 99 in 2-D, 29 in 3-D and above (the reference granularities)."""
    return 99 if dim == 2 else 29


def random_split(n, seed, fractions=(0.8, 0.1, 0.1)):
    """Indices of a random train/validation/test split.

    Parameters
    ----------
    n : int
    seed : int
        The split's seed (benchmarks use the run's seed).
    fractions : three floats summing to 1

    Returns
    -------
    train, val, test : torch.Tensor of int
        Disjoint, together ``range(n)``, each non-empty.

    Raises
    ------
    EmptyDataError
        Fewer than 3 points, or too few for a non-empty training part.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1) > 1e-9 or min(fractions) <= 0:
        raise ValueError(f"fractions must be three positive numbers summing to 1, got {fractions}")
    # int() would silently truncate 10.5 points or seed 1.7 (a different split than asked).
    n, seed = check_int(n, "n", minimum=None), check_int(seed, "seed", minimum=None)
    if n < 3:
        raise EmptyDataError(f"need at least 3 points to split three ways, got {n}")
    perm = torch.as_tensor(np.random.default_rng(int(seed)).permutation(n))
    n_val = max(int(round(fractions[1] * n)), 1)
    n_test = max(int(round(fractions[2] * n)), 1)
    if n_val + n_test >= n:
        # Rounding val and test up to one point each can leave nothing to train on
        # (n=4, fractions (0.2, 0.4, 0.4) gave an empty training part).
        raise EmptyDataError(
            f"{n} points leave no training points after {n_val} validation and {n_test} test "
            f"points (fractions {fractions}); give more points or a larger training fraction")
    return perm[n_val + n_test:], perm[:n_val], perm[n_val:n_val + n_test]


def mean_std(values):
    """Mean and sample standard deviation (``ddof=1``; NaN for one value)."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if values.size > 1 else math.nan
    return float(values.mean()), std


def log_density(model, X):
    """The model's normalised log density at ``X`` (what a user gets), shape (n,).

    Asked through ``score_samples`` (``log_prob`` for a model without it).
    Models on an implicit manifold (constrained EBMs, their unions, the kernel
    and vMF baselines) score the points' closest points on it
    (:meth:`~implicit_geom.models.ConstrainedEBM.on_manifold`).

    Raises
    ------
    ProjectionError, QuadratureCoverageError
        Points that cannot be projected, or (constrained EBMs) whose
        projections lie where the quadrature of ``log Z`` has no nodes.
    """
    from .models.mixture import normalized_log_density

    return normalized_log_density(model, X)


def held_out_nll(model, X):
    """Mean negative log-likelihood of held-out points (nats per point)."""
    return float(-log_density(model, X).mean())


def model_mass(model):
    """Points on the model's manifold and the probability mass each carries.

    Constrained EBMs: the nodes of their quadrature, mass ``w_i p(x_i)``
    (normalised density, so each connected component carries the mass the
    model gives it); a union: its models' masses times the mixture weights;
    the pushforward EBM: decoded latent lattice points, mass ``p_Z(u) du``;
    estimators on an analytic manifold (``manifold`` and ``score_samples``):
    that manifold's quadrature.

    Returns
    -------
    points : torch.Tensor, shape (N, n)
    mass : torch.Tensor, shape (N,)
    """
    from .models import ConstrainedEBM, PushforwardEBM, UnionEBM
    from .models.normalization import manifold_quadrature

    if isinstance(model, UnionEBM):
        parts = [model_mass(m) for m in model.models]
        return (torch.cat([p for p, _ in parts]),
                torch.cat([float(w) * m / m.sum() for (_, m), w in zip(parts, model.weights)]))
    if isinstance(model, ConstrainedEBM):
        rule = model.quadrature()
        with torch.no_grad():
            return rule.points, rule.weights * model.log_prob(rule.points).exp()
    if isinstance(model, PushforwardEBM):
        # The lattice's cells have equal latent volume: mass ~ exp(-E(u)) per point.
        u, z = model.latent_lattice()
        lat = -model.latent_ebm.energy(u)
        return model.decode(z), (lat - lat.max()).exp()
    rule = manifold_quadrature(model.manifold, 256)
    return rule.points, rule.weights * log_density(model, rule.points).exp()


def truth_mass(points, density, weights):
    """The true mass per quadrature node: density times node weight."""
    return torch.as_tensor(points, dtype=DTYPE), torch.as_tensor(density * weights, dtype=DTYPE)


def w_mass(model, target_points, target_mass=None, *, grid):
    """W under our protocol: binned probability masses, exact OT.

    Parameters
    ----------
    model : density model (see :func:`model_mass`), or a pair ``(points, mass)``
    target_points : torch.Tensor, shape (k, n)
        Quadrature nodes of the true manifold (with ``target_mass``) or
        held-out points (without).
    target_mass : torch.Tensor, shape (k,), optional
    grid : WGrid

    Returns
    -------
    float
    """
    points, mass = model if isinstance(model, tuple) else model_mass(model)
    return discretized_wasserstein(
        points, target_points, bins=grid.bins, bounds=grid.bounds, density_a=mass,
        density_b=target_mass, support="centre", cost_scale="grid",
        bin_b=target_mass is not None, aggregate="sum")


def _covering_log_density(model, n_draws, bounds, seed):
    """Points covering the model's manifold in the box and the model's raw log density."""
    from .models import PushforwardEBM, UnionEBM

    if isinstance(model, PushforwardEBM):
        return model.density_on_manifold()
    if isinstance(model, UnionEBM):
        parts = [m.density_on_manifold(n_draws, bounds, seed) for m in model.models]
        points = torch.cat([p for p, _ in parts])
        return points, model.log_prob(points)
    return model.density_on_manifold(n_draws, bounds, seed)


def w_reference(model, target_points, target_density=None, *, grid, temperature=1.0,
                n_draws=None, seed=0):
    """W under the reference notebooks' protocol.

    The model's raw ``exp(-E / T)`` (its unnormalised density at temperature
    ``T``; for a union its mixture density) at points covering its manifold
    inside ``grid``'s box (projected box draws; the pushforward model: its
    decoded latent lattice), each bin weighted by the mean of its points'
    values, against the true density on points covering the true manifold or
    the held-out points; the grid's granularity and limits are the reference's.

    Parameters
    ----------
    model : ConstrainedEBM, UnionEBM, PushforwardEBM
    target_points : torch.Tensor, shape (k, n)
    target_density : torch.Tensor, shape (k,), optional
    grid : WGrid
    temperature : float
    n_draws : int, optional
        Box draws covering the model's manifold (default 20 000 in 2-D,
        100 000 in 3-D).
    seed : int

    Returns
    -------
    float
    """
    dim = target_points.shape[1]
    if n_draws is None:
        n_draws = 20_000 if dim == 2 else 100_000
    points, log_p = _covering_log_density(model, n_draws, grid.bounds, seed)
    dens = ((log_p - log_p.max()) / float(temperature)).exp()
    return paper_wasserstein(points, dens, target_points, target_density, bins=grid.bins,
                             bounds=grid.bounds)


def w_samples(samples, test, bins=None, bounds=None):
    """Binned W between model samples and held-out points (both binned, centroid support)."""
    bins = bins_for(samples.shape[1]) if bins is None else bins
    bounds = (padded_box(torch.cat([samples, test]), 0.05, flat=FLAT_AXIS) if bounds is None
              else bounds)
    return discretized_wasserstein(samples, test, bins=bins, bounds=bounds)


def evaluate_model(model, test, *, n_samples=2000, seed=0, manifold=None, samples=None):
    """The CLI's metrics of a fitted constrained EBM against held-out points.

    Over the held-out points' box padded by 5% (99 bins per axis in 2-D, 29
    in 3-D): ``W_ours`` (the model's masses, where it has a quadrature),
    ``W_reference`` (raw ``exp(-E)`` on points covering its manifold, T = 1),
    ``W_samples`` (``n_samples`` model samples, or the given ``samples``);
    ``test_nll`` (at the held-out points' projections onto M; NaN with the
    reason in ``test_nll_error`` where they cannot be projected or the
    quadrature does not cover them) and its ``log_z_error`` where ``log Z``
    has a quadrature; each component's mass;
    the samples' ``|F|`` and the held-out points' distances to the manifold.

    Returns
    -------
    dict
    """
    from .metrics import distance_to_manifold

    manifold = model.manifold if manifold is None else manifold
    dim = test.shape[1]
    if dim > 3:
        return _evaluate_high_dim(model, test, n_samples, seed, manifold, samples)
    # Flat axes widened: held-out points on a plane (a circle at z = 0) gave a
    # box of no width there, which no point of the learned M fell in
    # (W_reference failed with "x is empty").
    low, high = padded_box(test, 0.05, flat=FLAT_AXIS)
    grid = WGrid(tuple(low.tolist()), tuple(high.tolist()), bins_for(dim))
    if samples is None:
        samples = model.sample(n_samples, seed=seed, progress=False)
    metrics = {"W_reference": w_reference(model, test, grid=grid, seed=seed),
               "W_samples": w_samples(samples, test, bounds=grid.bounds),
               "max_abs_F_samples": float(manifold.submersion(samples).abs().max())}
    if model._has_quadrature():
        norm = model.normalizer()
        metrics.update({"W_ours": w_mass(model, test, grid=grid), "log_z_error": norm.error,
                        "component_mass": [float(v) for v in model.component_mass()]})
        try:
            metrics["test_nll"] = held_out_nll(model, test)
        except (ProjectionError, QuadratureCoverageError) as err:
            # Flagged, never a number the density cannot back.
            metrics["test_nll"] = math.nan
            metrics["test_nll_error"] = f"{type(err).__name__}: {err}"
    dist = distance_to_manifold(test, manifold).as_dict()
    metrics.update({f"test_dist_{k}": v for k, v in dist.items()})
    return metrics


def _evaluate_high_dim(model, test, n_samples, seed, manifold, samples):
    """:func:`evaluate_model` above 3 dimensions (images), where no grid can be binned.

    ``W_samples`` is the exact 2-Wasserstein distance between the sample and
    held-out point clouds (POT, squared Euclidean cost); distances to M come
    from closest-point projections, whose failures are counted
    (``test_dist_failed``) rather than hidden.
    """
    import ot

    if samples is None:
        samples = model.sample(n_samples, seed=seed, progress=False)
    a, b = samples.detach().cpu().double(), test.detach().cpu().double()
    cost = torch.cdist(a, b).square().numpy()
    w2 = float(ot.emd2(np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b)), cost,
                       numItermax=_EMD_ITER)) ** 0.5
    res = manifold.solve_projection(test)
    dist = torch.linalg.vector_norm((test - res.x).detach(), dim=-1)[res.converged].cpu()
    # numpy's median (mean of the two middle values), as distance_to_manifold
    metrics = {"W_samples": w2,
               "max_abs_F_samples": float(manifold.submersion(samples).abs().max()),
               "test_dist_failed": int((~res.converged).sum())}
    if dist.numel():
        metrics.update({"test_dist_median": float(np.median(dist.numpy())),
                        "test_dist_mean": float(dist.mean()),
                        "test_dist_max": float(dist.max())})
    return metrics
