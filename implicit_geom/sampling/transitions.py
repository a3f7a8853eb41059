r"""Composable Metropolis-Hastings moves added to a constrained sampler's iterations.

Local constrained dynamics (Langevin, MALA, HMC) never cross from one
connected component of M to another, so on a disconnected manifold the share
of chains on each piece stays where it started. :class:`ComponentJump` moves
chains between components with an exact Metropolis-Hastings correction, so
that chains (and PCD's persistent buffers) settle at each component's true
mass. Pass moves to any sampler: ``ConstrainedMALA(M, E, moves=[jump])``; each
iteration then runs the sampler's own transition followed by every move.

The jump from ``x`` (on component ``a``) to component ``b`` proposes
``y = x + d_ab + v + J(x)^T lam`` with ``d_ab = c_b - c_a`` the shift between
the components' centres, ``v`` a tangent Gaussian at ``x`` and ``lam`` solving
``F(y) = 0`` along the normals at ``x``. It is the constrained proposal of
Zappa, Holmes-Cerfon & Goodman (2018) plus a constant shift: the Jacobian of
``v -> y`` is the projection of ``T_y`` onto ``T_x`` and that of the reverse
move the projection of ``T_x`` onto ``T_y``; their determinants are equal, so
with the reverse tangent vector ``v' = P_y(x - y + d_ab)`` the acceptance is

.. math:: \min\Big(1, \frac{\pi(y)\, N(v'; 0, s^2)}{\pi(x)\, N(v; 0, s^2)}\Big),

after a reversibility check (the reverse solve from ``y`` must return to
``x``; Newton may find another root) and a check that ``y`` lies on ``b``
(the reverse move then picks ``d_ba = -d_ab`` with the same probability).
Failed solves are counted rejections; nothing off M is emitted.
"""

import torch

from ..numerics.linalg import tangent_projector
from ..numerics.newton import solve_along_normals

__all__ = ["ComponentJump"]


class ComponentJump:
    """Metropolis-Hastings jumps between the connected components of a manifold.

    Parameters
    ----------
    centres : torch.Tensor, shape (C, n)
        A centre per component (e.g. its mean point); a jump shifts a point by
        the difference of two centres, so components that are near-translates
        of each other (two learned circles) give high acceptance.
    label : callable
        ``points (B, n) -> component index (B,)``, a function of position only.
    scale : float
        Standard deviation of the tangent Gaussian added to each jump; it must
        cover the mismatch between a shifted component and its target.
    prob : float
        Probability that a chain attempts a jump at an iteration.
    reverse_tol : float
        Largest ``|x_back - x|`` of the reversibility check.

    Attributes
    ----------
    n_proposed, n_accepted : int
        Jumps attempted and accepted since construction (or :meth:`reset`).
    """

    def __init__(self, centres, label, scale=0.05, prob=0.2, reverse_tol=1e-8):
        centres = torch.as_tensor(centres)
        if centres.ndim != 2 or centres.shape[0] < 2:
            raise ValueError(f"need the centres of at least two components, shape (C, n); got "
                             f"{tuple(centres.shape)}")
        if not callable(label):
            raise TypeError("label must map points (B, n) to component indices (B,)")
        if not scale > 0 or not 0 < prob <= 1:
            raise ValueError(f"need scale > 0 and 0 < prob <= 1, got {scale}, {prob}")
        if not reverse_tol > 0:  # NaN or <= 0 would reject every jump, silently
            raise ValueError(f"reverse_tol must be a positive float, got {reverse_tol!r}")
        if not bool(torch.isfinite(centres).all()):
            raise ValueError("the centres contain NaN or inf")
        self.centres = centres
        self.label = label
        self.scale = float(scale)
        self.prob = float(prob)
        self.reverse_tol = float(reverse_tol)
        self.reset()

    @classmethod
    def from_cover(cls, points, labels, **kwargs):
        """Jumps between the components of labelled points covering M.

        Parameters
        ----------
        points : torch.Tensor, shape (N, n)
            Points on M (e.g. quadrature nodes or projected box draws).
        labels : torch.Tensor of int, shape (N,)
            Their components, ``0..C-1``.
        **kwargs
            ``scale``, ``prob``, ``reverse_tol``.

        Returns
        -------
        ComponentJump
            Centres are the components' mean points; a point's component is
            that of its nearest cover point.
        """
        from scipy.spatial import cKDTree

        labels = torch.as_tensor(labels, dtype=torch.long)
        if points.ndim != 2 or labels.shape != points.shape[:1]:
            raise ValueError(f"need points (N, n) and labels (N,), got {tuple(points.shape)} "
                             f"and {tuple(labels.shape)}")
        n_comp = int(labels.max()) + 1 if labels.numel() else 0
        # A label in 0..C-1 with no point would give that component a NaN
        # centre (the mean of nothing), and every jump to it a NaN proposal.
        counts = torch.bincount(labels.clamp_min(0), minlength=n_comp)
        if bool((labels < 0).any()) or bool((counts == 0).any()):
            raise ValueError(f"labels must number the components 0..C-1, each with at least "
                             f"one point; got counts {counts.tolist()}")
        centres = torch.stack([points[labels == c].mean(0) for c in range(n_comp)])
        tree = cKDTree(points.detach().cpu().numpy())
        table = labels.cpu()

        def label(x):
            return table[torch.as_tensor(tree.query(x.detach().cpu().numpy())[1])].to(x.device)

        return cls(centres, label, **kwargs)

    @property
    def n_components(self):
        """Number of components the jumps connect."""
        return self.centres.shape[0]

    def reset(self):
        """Zero the counters."""
        self.n_proposed = 0
        self.n_accepted = 0

    def __call__(self, sampler, state):
        """One jump attempt per chain with probability ``prob``.

        Parameters
        ----------
        sampler : constrained sampler
            Supplies the target, the Newton options and the random numbers.
        state : ChainState

        Returns
        -------
        ChainState
            Accepted rows moved to their new component.
        """
        x = state.x
        fire = (sampler._rand(x.shape[0], x) < self.prob).nonzero().squeeze(-1)
        if fire.numel() == 0:
            return state
        opts, target = sampler.options, sampler.target
        sub = state.select(fire)
        centres = self.centres.to(x)
        src = self.label(sub.x)
        pick = (sampler._rand(fire.numel(), x) * (self.n_components - 1)).long()
        pick = pick.clamp_max(self.n_components - 2)
        dst = pick + (pick >= src).long()  # uniform over the other components
        shift = centres[dst] - centres[src]
        v = self.scale * tangent_projector(sub.jac, sampler._randn(sub.x), check=False)
        fwd = solve_along_normals(target.value_and_jacobian, sub.x + shift + v, sub.jac,
                                  opts.tol, opts.max_iter, max_halvings=opts.max_halvings)
        # Label only converged points: an unconverged Newton iterate may be
        # NaN/inf or anywhere, and a label function (from_cover's k-d tree)
        # need not accept it.
        ok = fwd.converged
        ok = ok & (self.label(torch.where(ok[:, None], fwd.x, sub.x)) == dst)
        # The reverse move from y: shift -d and the tangent vector that returns to x.
        v_back = tangent_projector(fwd.jac, sub.x - fwd.x + shift, check=False)
        back = solve_along_normals(target.value_and_jacobian, fwd.x - shift + v_back, fwd.jac,
                                   opts.tol, opts.max_iter, max_halvings=opts.max_halvings)
        ok &= back.converged & (torch.linalg.vector_norm(back.x - sub.x, dim=-1)
                                <= max(self.reverse_tol, 1e3 * torch.finfo(x.dtype).eps))
        y = torch.where(ok[:, None], fwd.x, sub.x)
        new = target.state(y, torch.where(ok[:, None], fwd.value, 0.0),
                           torch.where(ok[:, None, None], fwd.jac, sub.jac))
        log_ratio = (sub.energy - new.energy
                     - (v_back.square().sum(-1) - v.square().sum(-1)) / (2 * self.scale**2))
        log_ratio = torch.where(ok & ~torch.isnan(log_ratio), log_ratio, -torch.inf)
        accepted = sampler._rand(fire.numel(), x).log() < log_ratio
        self.n_proposed += int(fire.numel())
        self.n_accepted += int(accepted.sum())
        if not bool(accepted.any()):
            return state
        moved = sub.where(accepted, new)
        return state.clone().put(fire, moved)
