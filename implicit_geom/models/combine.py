"""Densities under manifold arithmetic (Ross et al. 2023, Sec. 5).

On an intersection ``M1 ∩ M2`` the natural combination of two densities is
their product, ``p ~ p1 p2``, i.e. the *sum* of the energies restricted to the
intersection; on a union ``M1 ∪ M2`` it is a mixture
``p = w1 p1 + w2 p2`` of the normalised component densities.
"""

import math
import warnings

import torch

from ..exceptions import CheckpointError, ComponentError, NotFittedError
from ..learning.checkpoint import check_manifolds, load_checkpoint, save_checkpoint
from ..learning.estimator import EstimatorMixin
from ..manifolds.analytic import as_implicit
from ..manifolds.arithmetic import UnionManifold, intersection, union
from ..numerics.validation import as_points, check_int
from .closest import closest_points, resolve_max_distance
from .ebm import ConstrainedEBM
from .energy_nets import SumEnergy

__all__ = ["IntersectionEBM", "UnionEBM", "combine_densities"]

_CHECKPOINT_KIND = "UnionEBM"


class IntersectionEBM(ConstrainedEBM):
    """Product density ``exp(-(E_1 + E_2 + ...))`` on the intersection of the models' manifolds.

    Parameters
    ----------
    *models : ConstrainedEBM
        Fitted models, one per manifold.
    **kwargs
        Overrides of the sampling settings (``step_size``, ``sampler``, ``seed``...);
        by default those of the first model, with the smallest step size.

    Raises
    ------
    TypeError
        Factors whose energies have different dtypes (their sum would mix them).
    """

    def __init__(self, *models, **kwargs):
        if len(models) < 2 or not all(isinstance(m, ConstrainedEBM) for m in models):
            raise TypeError("IntersectionEBM needs at least two ConstrainedEBM models")
        dtypes = {m._param().dtype for m in models}
        if len(dtypes) > 1:  # SumEnergy would crash with a torch dtype mismatch
            raise TypeError(f"the factors' energies have different dtypes "
                            f"({', '.join(sorted(map(str, dtypes)))}): move them to one, "
                            "e.g. model.energy_net.to(torch.float64)")
        first = models[0]
        kwargs.setdefault("sampler", first.sampler)
        kwargs.setdefault("step_size", min(m.step_size for m in models))
        kwargs.setdefault("seed", first.seed)
        kwargs.setdefault("n_mcmc_steps", first.n_mcmc_steps)
        manifold = intersection(*[m.manifold for m in models])
        super().__init__(manifold, SumEnergy([m.energy_net for m in models]), **kwargs)
        boxes = [m._box for m in models if m._box is not None]
        if boxes:
            # Noise for new chains: the box enclosing every model's data.
            self._box = (torch.stack([b[0] for b in boxes]).amin(0),
                         torch.stack([b[1] for b in boxes]).amax(0))
        # Ready to use: the factors are fitted, log Z comes from the
        # intersection's own quadrature (a traced curve) or AIS.
        self._fitted = all(m.is_fitted for m in models)  # (a frozen energy is ready)
        # A factor fitted with component weights has the density
        # exp(-E_net - (log Z_c - log w_c)) on its component c: the product
        # needs those offsets, or each piece of the intersection gets the
        # mass of the bare networks instead of the factors' learned weights.
        self._factors = [m for m in models if m.component_log_weights_ is not None
                         or isinstance(m, IntersectionEBM) and m._factors]

    def _factor_offsets(self, x):
        out = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for m in self._factors:
            out = out + m._offsets(x.detach()).to(out)
        return out

    def _log_z_energy(self, x):
        return self.energy_net(x) + self._factor_offsets(x)

    def _offsets(self, x):
        return super()._offsets(x) + self._factor_offsets(x)

    def save(self, path):
        """Save as a :class:`ConstrainedEBM` with the summed energy (see :meth:`load`).

        Raises
        ------
        TypeError
            A factor with learned component weights: its offsets (constant
            on each of its components) are not part of the summed energy.
        """
        super().save(path)

    def _checkpoint(self):
        # Here, not in save: a union saving this product as one of its pieces checks too.
        if self._factors:
            raise TypeError("cannot save a product with factors fitted with component weights "
                            "(their per-component offsets are not in the summed energy)")
        return super()._checkpoint()

    @classmethod
    def load(cls, path, manifold, check_manifold=True):
        """A saved product density, rebuilt on ``manifold`` (the intersection).

        The factors themselves are not stored, only their summed energy: the
        result is a :class:`ConstrainedEBM` with that energy.
        """
        return ConstrainedEBM.load(path, manifold, check_manifold=check_manifold)


class UnionEBM(EstimatorMixin):
    """Mixture ``sum_i w_i p_i`` of normalised densities on the union of their manifolds.

    Parameters
    ----------
    *models : ConstrainedEBM
        Fitted models on manifolds of equal dimension.
    weights : sequence of float, optional
        Mixture weights (normalised; default equal).
    log_partitions : sequence of float, optional
        ``log Z_i`` of each model's energy; by default each model's own
        (:meth:`ConstrainedEBM.log_partition`: quadrature on curves and
        surfaces, learned or analytic, AIS elsewhere).
    max_distance : "auto", float or None
        Farthest a held-out point may lie from the union (see
        :class:`ConstrainedEBM`; ``"auto"``: 5% of the diagonal of the union's box).

    Raises
    ------
    ComponentError
        Models whose manifolds share a part of positive measure (see
        :meth:`~implicit_geom.manifolds.UnionManifold.check_pieces_disjoint`).
    """

    def __init__(self, *models, weights=None, log_partitions=None, max_distance="auto"):
        if len(models) < 2 or not all(isinstance(m, ConstrainedEBM) for m in models):
            raise TypeError("UnionEBM needs at least two ConstrainedEBM models")
        self.models = list(models)
        self.manifold = union(*[m.manifold for m in models])
        # Models on overlapping manifolds: a point of the shared part would be
        # scored by one model only (ComponentError instead).
        self.manifold.check_pieces_disjoint()
        w = torch.ones(len(models)) if weights is None else torch.as_tensor(
            weights, dtype=torch.float64)
        if w.shape != (len(models),) or not bool((w > 0).all()) or not torch.isfinite(w).all():
            raise ValueError(f"weights must be {len(models)} positive numbers, got {weights}")
        self.weights = (w / w.sum()).to(torch.float64)
        if log_partitions is not None and len(log_partitions) != len(models):
            raise ValueError("need one log partition per model")
        self.log_partitions = (None if log_partitions is None
                               else [float(v) for v in log_partitions])
        resolve_max_distance(self.manifold, max_distance)  # a bad value fails here
        self.max_distance = max_distance

    @property
    def dim(self):
        return self.manifold.ambient_dim

    @property
    def is_fitted(self):
        """Whether every model of the union is ready (a union has no fit of its own)."""
        return all(m.is_fitted for m in self.models)

    def log_prob(self, x):
        """Normalised log density of the mixture at points of the union.

        Each point is assigned to its active component (the one it lies on).
        """
        x = as_points(x, self.dim, "x")
        flat = x.reshape(-1, self.dim)
        with torch.no_grad():
            idx = self.manifold.component_index(flat)
        if self.log_partitions is None:  # each model's own normalised density
            parts = [m.log_prob(flat) for m in self.models]
        else:
            parts = [-m.energy(flat) - lz for m, lz in zip(self.models, self.log_partitions)]
        per_model = torch.stack([math.log(float(w)) + p for w, p in zip(self.weights, parts)])
        out = per_model.gather(0, idx[None].to(per_model.device))[0]
        return out.reshape(x.shape[:-1])

    def score_samples(self, X):
        """Normalised log density at the closest points of ``X`` on the union,
        shape (n,), as :meth:`ConstrainedEBM.score_samples` scores points off
        its M.

        Raises
        ------
        NotFittedError
            A model of the union is not fitted.
        ProjectionError, InvalidPointError, QuadratureCoverageError
            See :meth:`ConstrainedEBM.on_manifold` (``max_distance`` of the union).
        """
        if not self.is_fitted:
            raise NotFittedError("call fit first: a model of the union is not fitted")
        # float64 before projecting (as_points keeps a float32 tensor's dtype).
        X = as_points(X, self.dim, "X", dtype=torch.float64).reshape(-1, self.dim)
        # The nearest piece's closest point (|F_i| of pieces of other scales
        # would not tell the nearest piece of a point off M).
        near = closest_points(self.manifold, X, "held-out points", self.max_distance)
        with torch.no_grad():
            idx = self.manifold.component_index(near)
        for k, model in enumerate(self.models):
            mask = idx == k
            if bool(mask.any()):
                model.check_covered(near[mask], "held-out points")
        return self.log_prob(near)

    def energy(self, x):
        """``-log p(x)`` of the normalised mixture."""
        return -self.log_prob(x)

    def save(self, path):
        """Save the mixture weights, the log partitions if given, and every
        model as :meth:`ConstrainedEBM.save` does, in one checkpoint (see :meth:`load`).

        The pieces' manifolds are not stored (as for :meth:`ConstrainedEBM.save`):
        save a learned one with its own ``save``.

        Raises
        ------
        TypeError
            A model :meth:`ConstrainedEBM.save` cannot save.
        """
        parts = [m._checkpoint() for m in self.models]
        config = {"models": [c for c, _ in parts], "log_partitions": self.log_partitions,
                  "max_distance": self.max_distance,
                  # What identifies each model's piece: load checks the pieces it
                  # is given against them (swapped pieces paired densities with
                  # the wrong pieces).
                  # (each model's record holds its piece's: not computed twice)
                  "pieces": [c["manifold"] for c, _ in parts]}
        payload = {"models": [p for _, p in parts], "weights": self.weights}
        save_checkpoint(path, _CHECKPOINT_KIND, config, payload)

    @classmethod
    def load(cls, path, manifold, check_manifold=True):
        """Rebuild a saved union on ``manifold``: the union of the pieces
        (``union(M1, M2, ...)``) or a sequence of them, in the saved models' order.

        Each model comes back a :class:`ConstrainedEBM` (a product piece with
        its summed energy, as :meth:`IntersectionEBM.load`), in its saved dtype.
        ``check_manifold=False`` loads pieces whose identity differs from the
        saved one with a warning instead (see :meth:`ConstrainedEBM.load`).

        Raises
        ------
        CheckpointError
            Missing, unreadable, corrupt or incompatible file, a number of
            pieces other than the saved models', or a piece other than the
            one its model was saved on (its class, dimension or state:
            parameters, centre, radius...), e.g. pieces in another order.
        """
        config, record = load_checkpoint(path, _CHECKPOINT_KIND, required=("models", "weights"))
        if isinstance(manifold, UnionManifold):
            pieces = list(manifold.components)
        elif isinstance(manifold, (list, tuple)):
            pieces = list(manifold)
        else:
            raise TypeError("manifold must be the union of the pieces or a list of them, "
                            f"got {type(manifold).__name__}")
        configs, records, weights = config.get("models"), record["models"], record["weights"]
        if not (isinstance(configs, list) and isinstance(records, list)
                and len(configs) == len(records) and isinstance(weights, torch.Tensor)
                and weights.shape == (len(records),)):
            raise CheckpointError(f"checkpoint {path} has a corrupt list of models")
        if len(pieces) != len(records):
            raise CheckpointError(f"{path} holds a union of {len(records)} models, "
                                  f"got {len(pieces)} manifolds")
        pieces = [as_implicit(p) for p in pieces]
        if "pieces" in config:
            check_manifolds(config["pieces"], pieces, path, check_manifold=check_manifold)
        else:
            # A checkpoint from before the pieces were recorded: loaded
            # unchecked, with a warning. Refusing it would leave a valid fit
            # unreadable (nothing else is wrong with the file, and nothing can
            # be recorded now that the fit is gone); saving the loaded union
            # again records the pieces it was given.
            warnings.warn(f"{path} was saved without its pieces' fingerprints: cannot check "
                          "that the pieces are the saved models' own, in order; save it again "
                          "to record them", UserWarning, stacklevel=2)
        # (Each model's own record of its manifold says what "pieces" said.)
        models = [ConstrainedEBM._from_checkpoint(c, r, m, path, check_manifold=None)
                  for c, r, m in zip(configs, records, pieces)]
        try:
            model = cls(*models, weights=weights, log_partitions=config.get("log_partitions"),
                        max_distance=config.get("max_distance", "auto"))
        except (TypeError, ValueError) as err:
            if isinstance(err, ComponentError):  # the caller's pieces overlap
                raise
            raise CheckpointError(f"{path}: incompatible checkpoint ({err})") from err
        model.weights = weights.to(torch.float64)  # as saved (not renormalised)
        return model

    def sample(self, n_samples, n_steps=200, seed=0, **kwargs):
        """Exact mixture sampling: multinomial counts, then each model's sampler.

        Returns
        -------
        torch.Tensor, shape (n_samples, n), in random order.
        """
        n_samples = check_int(n_samples, "n_samples")  # 2.5 drew 2
        gen = torch.Generator().manual_seed(int(seed))
        comp = torch.multinomial(self.weights, n_samples, replacement=True, generator=gen)
        counts = torch.bincount(comp, minlength=len(self.models))
        parts = [m.sample(int(c), n_steps=n_steps, seed=int(seed) + i, **kwargs)
                 for i, (m, c) in enumerate(zip(self.models, counts)) if c > 0]
        out = torch.cat(parts)
        return out[torch.randperm(out.shape[0], generator=gen).to(out.device)]


def combine_densities(operation, *models, **kwargs):
    """Combine fitted constrained EBMs under manifold arithmetic.

    Parameters
    ----------
    operation : {"intersection", "union"}
        Product of densities on the intersection, or mixture on the union.
    *models : ConstrainedEBM
    **kwargs
        Passed to :class:`IntersectionEBM` or :class:`UnionEBM`.
    """
    if operation == "intersection":
        return IntersectionEBM(*models, **kwargs)
    if operation == "union":
        return UnionEBM(*models, **kwargs)
    raise ValueError(f"operation must be 'intersection' or 'union', got {operation!r}")
