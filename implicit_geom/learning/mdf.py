"""Training objective of a manifold-defining function (Ross et al., 2023, sec. 3.1).

For a network F: R^n -> R^k the loss on a data batch x+ and negatives x- is

    mean N(F(x+)) - w_neg mean N(F(x-)) + mu R(x+) + beta mean |F(x-)|^2,

where N is the chosen norm of the constraint vector and R is a hinge on the
singular values of the Jacobian outside [s_min, s_max]. The rank term keeps F
a submersion on the data (so its zero set is a manifold there and Newton
projections are well conditioned) and stops F from shrinking to zero
everywhere; the negative term raises F where the zero set strays from the
data; the beta term keeps that push bounded.

For a hypersurface (k = 1) with outward normals n(x+) of the data (see
:mod:`.orientation`) an orientation term ``mu_orient mean relu(s_min - dF/dn)^2``
asks F to grow outwards through every data point, which fixes the sign pattern
of F globally: inside negative, outside positive.
"""

from dataclasses import asdict, dataclass

import torch

from ..numerics import autodiff

NORMS = ("l1", "l2", "l2_squared")


def constraint_norm(values, norm="l2"):
    """Per-point size of the constraint vector ``F(x)``, shape ``(B,)``.

    Parameters
    ----------
    values : torch.Tensor, shape=[B, k]
    norm : {"l1", "l2", "l2_squared"}
    """
    if norm == "l1":
        return values.abs().sum(-1)
    if norm == "l2":
        # vector_norm's gradient is 0 (not NaN) at F = 0.
        return torch.linalg.vector_norm(values, dim=-1)
    if norm == "l2_squared":
        return values.square().sum(-1)
    raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


def _svdvals(jac):
    """Singular values of Jacobians ``(..., k, n)``, shape ``(..., k)``, decreasing."""
    if jac.shape[-2] == 1:  # codim 1: the only singular value is |grad F|
        return torch.linalg.vector_norm(jac, dim=(-2, -1)).unsqueeze(-1)
    return torch.linalg.svdvals(jac)


def jacobian_singular_values(f, x, create_graph=True):
    """Values and exact singular values of the Jacobian of ``f`` at each point.

    Parameters
    ----------
    f : callable, (B, n) -> (B, k)
    x : torch.Tensor, shape=[B, n]
    create_graph : bool
        Keep the singular values differentiable
        (:func:`~implicit_geom.numerics.autodiff.jacobian`).

    Returns
    -------
    values : torch.Tensor, shape=[B, k]
    singular_values : torch.Tensor, shape=[B, k]
        In decreasing order.
    """
    values, jac = autodiff.jacobian(f, x, create_graph=create_graph)
    return values, _svdvals(jac)


def rank_penalty(singular_values, s_min, s_max):
    """Mean squared hinge of the singular values outside ``[s_min, s_max]``."""
    low = torch.relu(s_min - singular_values)
    high = torch.relu(singular_values - s_max)
    return (low.square() + high.square()).sum(-1).mean()


def orientation_penalty(jacobian, normals, s_min):
    """Mean squared hinge of the slope of a scalar F along oriented normals below ``s_min``.

    Parameters
    ----------
    jacobian : torch.Tensor, shape=[B, 1, n]
    normals : torch.Tensor, shape=[B, n]
        Outward unit normals; zero rows (no orientation known) are left out.
    s_min : float

    Returns
    -------
    torch.Tensor, scalar
        0 when no row has a normal.
    """
    known = (normals != 0).any(-1)
    slope = (jacobian[..., 0, :] * normals).sum(-1)[known]
    if slope.numel() == 0:
        return jacobian.new_zeros(())
    return torch.relu(s_min - slope).square().mean()


@dataclass
class MDFObjective:
    """The MDF loss with its weights.

    Parameters
    ----------
    s_min, s_max : float
        Band for the Jacobian's singular values on data.
    mu : float
        Weight of the rank (singular value) penalty.
    w_neg : float
        Weight of the negative-sample term.
    beta : float
        Weight of the squared size of F on negatives.
    mu_box : float
        Weight of the same singular-value penalty at uniform points of the box
        around the data, with lower bound ``box_s_min`` (an extension of the
        paper, after the eikonal term of implicit geometric regularisation,
        Gropp et al., 2020). It keeps F distance-like away from the data and
        helps the zero set close through sparsely sampled regions, but a
        positive lower bound forbids critical points of F, and every closed
        component encloses one, so it can create a separating spurious piece;
        off (0) by default.
    box_s_min : float
        Lower singular value bound of the box term.
    mu_orient : float
        Weight of the orientation term (codim 1, needs outward normals of the
        data): the slope of F along each normal should be at least ``s_min``.
        The rank term fixes ``|grad F|`` only, so on each side of the data F may
        be negative or positive, and the two sides of a sparsely sampled closed
        curve can settle with different signs, a mismatch the zero set repairs
        by leaving the data (open curves, channels between components, an
        extra hull around them); negatives, which push ``|F|``, cannot undo a
        sign change. Fixing the side fixes the topology. Off (0) by default.
    norm : {"l1", "l2", "l2_squared"}
        Norm of the constraint vector in the positive and negative terms.
    rank_batch : int
        Rows of each data batch on which the Jacobian terms (rank and
        orientation) are evaluated: the first ``rank_batch`` ones (batches are
        shuffled, so a random subset); 0 uses the whole batch. The Jacobian of a
        map with k outputs costs k backward passes, which dominates a step at
        large codimension (images); the singular values are smooth in x, so a
        subset of each batch keeps them in band over the data.
    """

    s_min: float = 1.0
    s_max: float = 10.0
    mu: float = 10.0
    w_neg: float = 0.1
    beta: float = 0.1
    mu_box: float = 0.0
    box_s_min: float = 0.2
    mu_orient: float = 0.0
    norm: str = "l2"
    rank_batch: int = 0

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        if not 0 <= self.box_s_min <= self.s_max:
            raise ValueError(f"need 0 <= box_s_min <= s_max, got {self.box_s_min}")
        if not 0 < self.s_min <= self.s_max:
            raise ValueError(f"need 0 < s_min <= s_max, got {self.s_min}, {self.s_max}")
        for name in ("mu", "w_neg", "beta", "mu_box", "mu_orient", "rank_batch"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def as_dict(self):
        """The weights as a plain dict."""
        return asdict(self)

    def __call__(self, f, x_pos, x_neg=None, x_box=None, normals=None):
        """Loss and its terms (detached floats) for one batch.

        Parameters
        ----------
        f : callable, (B, n) -> (B, k)
        x_pos : torch.Tensor, shape=[B, n]
            Data.
        x_neg : torch.Tensor, shape=[B', n], optional
            Negative samples (no negative terms if None or ``w_neg == beta == 0``).
        x_box : torch.Tensor, shape=[B'', n], optional
            Points spread over the box (no box term if None or ``mu_box == 0``).
        normals : torch.Tensor, shape=[B, n], optional
            Outward unit normals of the data, zero where unknown (no
            orientation term if None or ``mu_orient == 0``).

        Returns
        -------
        loss : torch.Tensor, scalar
        terms : dict of float
            ``positive``, ``negative``, ``rank``, ``neg_sq``, ``box_rank``,
            ``orientation`` and ``sv_min`` (the smallest Jacobian singular value
            on the batch).

        Raises
        ------
        ValueError
            Normals for a map with more than one output.
        """
        orient = normals is not None and self.mu_orient > 0
        split = self.rank_batch if 0 < self.rank_batch < x_pos.shape[0] else x_pos.shape[0]
        graph = self.mu > 0 or orient
        values, jac = autodiff.jacobian(f, x_pos[:split], create_graph=graph)
        if not graph:  # the Jacobian's values come detached: the positive term needs F's graph
            values = f(x_pos[:split])
        if split < x_pos.shape[0]:
            values = torch.cat([values, f(x_pos[split:])])
            normals = None if normals is None else normals[:split]
        sv = _svdvals(jac)
        positive = constraint_norm(values, self.norm).mean()
        rank = rank_penalty(sv, self.s_min, self.s_max)
        loss = positive + self.mu * rank
        orientation = torch.zeros_like(rank)
        if orient:
            if values.shape[-1] != 1:
                raise ValueError("outward normals need a hypersurface (codim 1), got "
                                 f"{values.shape[-1]} outputs")
            orientation = orientation_penalty(jac, normals, self.s_min)
            loss = loss + self.mu_orient * orientation
        negative = neg_sq = torch.zeros((), dtype=values.dtype, device=values.device)
        if x_neg is not None and (self.w_neg > 0 or self.beta > 0):
            neg_values = f(x_neg.detach())
            negative = constraint_norm(neg_values, self.norm).mean()
            neg_sq = neg_values.square().sum(-1).mean()
            loss = loss - self.w_neg * negative + self.beta * neg_sq
        box_rank = torch.zeros_like(negative)
        if x_box is not None and self.mu_box > 0:
            _, box_sv = jacobian_singular_values(f, x_box)
            box_rank = rank_penalty(box_sv, self.box_s_min, self.s_max)
            loss = loss + self.mu_box * box_rank
        terms = {
            "positive": float(positive.detach()),
            "negative": float(negative.detach()),
            "rank": float(rank.detach()),
            "neg_sq": float(neg_sq.detach()),
            "box_rank": float(box_rank.detach()),
            "orientation": float(orientation.detach()),
            "sv_min": float(sv.detach().min()),
        }
        return loss, terms
