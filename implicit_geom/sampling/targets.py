"""The sampling target ("system"): an energy on an implicit manifold.

The target density is ``exp(-E(x))`` with respect to the Riemannian volume
(Hausdorff measure) of ``M = {F = 0}``. No Gram-determinant or other volume
correction is added: RATTLE with the reversibility check samples the Hausdorff
measure exactly (Lelièvre, Rousset & Stoltz 2019).
"""

import itertools
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..exceptions import InvalidPointError
from ..manifolds.analytic import as_implicit
from ..numerics import mlp
from ..numerics.validation import as_points


@dataclass
class ChainState:
    """Everything a constrained step needs at the current points of a batch.

    Attributes
    ----------
    x : torch.Tensor, shape=[B, n]
        Positions (on M).
    energy : torch.Tensor, shape=[B]
        ``E(x)``.
    grad : torch.Tensor, shape=[B, n]
        ``grad E(x)`` (ambient gradient, detached).
    jac : torch.Tensor, shape=[B, k, n]
        Jacobian ``J(x)`` of the defining function; its rows span the normal space.
    residual : torch.Tensor, shape=[B]
        ``|F(x)|``, evaluated, not assumed.
    """

    x: torch.Tensor
    energy: torch.Tensor
    grad: torch.Tensor
    jac: torch.Tensor
    residual: torch.Tensor

    _FIELDS = ("x", "energy", "grad", "jac", "residual")

    def select(self, idx):
        """The sub-batch ``idx`` (index tensor or boolean mask)."""
        return ChainState(*(getattr(self, f)[idx] for f in self._FIELDS))

    def put(self, idx, other):
        """Overwrite rows ``idx`` with ``other`` (in place); returns self."""
        for f in self._FIELDS:
            getattr(self, f)[idx] = getattr(other, f)
        return self

    def where(self, mask, other):
        """Rows of ``other`` where ``mask`` is True, else rows of self (new state)."""
        out = []
        for f in self._FIELDS:
            mine, theirs = getattr(self, f), getattr(other, f)
            m = mask.reshape(-1, *([1] * (mine.ndim - 1)))
            out.append(torch.where(m, theirs, mine))
        return ChainState(*out)

    def clone(self):
        """Independent copy."""
        return ChainState(*(getattr(self, f).clone() for f in self._FIELDS))


#: torch's wording of a dtype mismatch inside an energy ("expected scalar type
#: Double but found Float", "mat1 and mat2 must have the same dtype", ...).
_DTYPE_MISMATCH = re.compile(r"dtype|scalar type|Double|Float|Half", re.IGNORECASE)


def energy_dtype(energy):
    """The dtype an energy evaluates in, or None where it follows its input.

    An ``nn.Module``'s is that of its first floating parameter or buffer; any
    other callable may declare one with a ``dtype`` attribute (a
    ``torch.dtype``). A plain function (``lambda x: -x[:, 2]``) has none.
    """
    if isinstance(energy, nn.Module):
        tensors = itertools.chain(energy.parameters(), energy.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), None)
    dtype = getattr(energy, "dtype", None)
    return dtype if isinstance(dtype, torch.dtype) else None


class ConstrainedTarget:
    """An energy ``E`` on a manifold ``M``: density ``exp(-E)`` w.r.t. the volume of M.

    Parameters
    ----------
    manifold : ImplicitManifold or geomstats LevelSet
        Wrapped with :func:`~implicit_geom.manifolds.analytic.as_implicit`.
    energy : callable or torch.nn.Module, optional
        ``(B, n) -> (B,)`` (``(B, 1)`` is accepted). ``None`` is the zero energy,
        i.e. the uniform distribution on a compact M; it skips autograd entirely.
        Its dtype may differ from the points' (a float64 network on a float32
        manifold): points are cast to the energy's dtype (:func:`energy_dtype`)
        on the way in, energies and gradients back to the points' on the way
        out. An energy that declares no dtype (a plain function) is evaluated
        on the points as they are; one that fails there with torch's dtype
        mismatch (a function of float32 points holding float64 constants) is
        tried once in the other floating dtype (float64, then float32), and
        the dtype that works is kept for every later call. This is the one
        place samplers evaluate an energy.

    Notes
    -----
    Gradients are taken with respect to the points only, with
    ``torch.autograd.grad(E(x).sum(), x)``: parameters of an ``nn.Module`` energy
    never receive ``.grad`` from sampling (persistent contrastive divergence
    differentiates the energy separately).
    """

    def __init__(self, manifold, energy=None):
        if energy is not None and not callable(energy):
            raise TypeError(f"energy must be callable (B, n) -> (B,) or None, got "
                            f"{type(energy).__name__}")
        self.manifold = as_implicit(manifold)
        self.energy_fn = energy
        # Parsed once: an nn.Sequential MLP energy is differentiated by hand.
        self._energy_layers = mlp.mlp_layers(energy)
        self.ambient_dim = self.manifold.ambient_dim
        self.codim = self.manifold.codim
        # The dtype an undeclared energy was found to need (_call_energy).
        self._found_dtype = None

    def value(self, x):
        """``F(x)`` (B, k) alone (no Jacobian)."""
        with torch.no_grad():
            return self.manifold._value(x)

    def value_and_jacobian(self, x):
        """``F(x)`` (B, k) and ``J(x)`` (B, k, n) through the manifold's fast hook."""
        with torch.no_grad():
            return self.manifold._value_and_jacobian(x)

    def _check_energy(self, energy, n_points):
        if energy.shape not in ((n_points,), (n_points, 1)):
            raise InvalidPointError(
                f"the energy returned shape {tuple(energy.shape)} for {n_points} "
                f"points; expected ({n_points},) (or ({n_points}, 1)).")
        return energy.reshape(n_points)

    def _in_energy_dtype(self, x):
        """``x`` cast to the energy's dtype (differentiably; a no-op where they agree)."""
        dtype = energy_dtype(self.energy_fn) or self._found_dtype
        return x if dtype is None else x.to(dtype)

    def _call_energy(self, x):
        """The energy function at ``x`` (in the energy's dtype where it declares
        or was found to need one, else in ``x``'s), result in whatever dtype it
        returns."""
        dtype = energy_dtype(self.energy_fn) or self._found_dtype  # (once: a hot path)
        if dtype is not None:
            return self.energy_fn(x.to(dtype))
        try:
            return self.energy_fn(x)
        except RuntimeError as err:
            if not _DTYPE_MISMATCH.search(str(err)):
                raise
            for dtype in (torch.float64, torch.float32):
                if dtype == x.dtype:
                    continue
                try:
                    out = self.energy_fn(x.to(dtype))
                except RuntimeError:
                    continue
                self._found_dtype = dtype  # tried once: every later call casts
                return out
            raise

    def evaluate(self, x):
        """``E(x)`` of a (B, n) batch, shape (B,), in ``x``'s dtype, differentiable
        (autograd through E and the casts)."""
        energy = self._call_energy(x)
        return self._check_energy(energy, x.shape[0]).to(x.dtype)

    def energy(self, x):
        """``E(x)``, shape (B,), without autograd."""
        if self.energy_fn is None:
            return x.new_zeros(x.shape[0])
        with torch.no_grad():
            return self.evaluate(x)

    def log_density(self, x, project=False, atol=1e-6):
        """Unnormalised log density ``-E(x)`` w.r.t. the volume of M, shape (...,),
        differentiable (autograd through E).

        Parameters
        ----------
        x : array-like, shape=[..., n]
        project : bool
            Evaluate at the closest points of M instead: differentiable in
            ``x`` and in the trainable parameters of F (a learned manifold
            moving under the density), by the implicit-function gradient of
            :meth:`~implicit_geom.manifolds.ImplicitManifold.projection`.
        atol : float
            Without ``project``, points with ``|F| > atol`` raise (no density
            off M).

        Raises
        ------
        InvalidPointError
            Points off M (without ``project``).
        """
        x = as_points(x, self.ambient_dim, "x")
        if project:
            x = self.manifold.projection(x)
        else:
            off = ~(self.manifold.submersion(x).norm(dim=-1) <= atol)
            if bool(off.any()):
                raise InvalidPointError(
                    f"log_density: {int(off.sum())} point(s) are not on the manifold "
                    f"(|F| > {atol:g}); pass project=True to evaluate at their projections.")
        flat = x.reshape(-1, self.ambient_dim)
        if self.energy_fn is None:
            return 0 * x.sum(-1)  # uniform: zero, still attached to x's graph
        return -self.evaluate(flat).reshape(x.shape[:-1])

    def energy_and_grad(self, x):
        """``E(x)`` (B,) and the ambient gradient ``grad E(x)`` (B, n), both detached.

        An ``nn.Sequential`` MLP energy is differentiated by hand
        (:mod:`~implicit_geom.numerics.mlp`, exact, no graph); anything else
        with autograd.
        """
        if self.energy_fn is None:
            return x.new_zeros(x.shape[0]), torch.zeros_like(x)
        if self._energy_layers is not None:
            energy, jac = mlp.value_and_jacobian(self._energy_layers, self._in_energy_dtype(x))
            return (self._check_energy(energy, x.shape[0]).to(x.dtype),
                    jac[:, 0, :].to(x.dtype))
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            energy = self.evaluate(xg)
            # An energy that does not depend on x (a constant: AIS's uniform
            # start) has no graph: its gradient is zero, not autograd's error.
            grad = (torch.autograd.grad(energy.sum(), xg)[0] if energy.requires_grad
                    else torch.zeros_like(xg))
        return energy.detach(), grad.detach()

    def state(self, x, value=None, jac=None):
        """Evaluate a :class:`ChainState` at points ``x`` of shape (B, n).

        ``value`` and ``jac`` (``F(x)`` and ``J(x)``, e.g. from the Newton solve
        that produced ``x``) are used as given instead of being re-evaluated.
        """
        if value is None or jac is None:
            value, jac = self.value_and_jacobian(x)
        energy, grad = self.energy_and_grad(x)
        return ChainState(x=x, energy=energy, grad=grad, jac=jac,
                          residual=value.norm(dim=-1))
