"""How the density models see points: at their closest points on M, and only
near M.

A density on M scores a point off M (a learned M fits its data only
approximately) at its closest point. A point far from M is no such
perturbation: projecting it would return the density of some other place,
a silent wrong answer, so it is refused with :class:`InvalidPointError`.
"""

import math

import torch

from ..exceptions import InvalidPointError, naming_points

# Default reach of "near M": this share of the diagonal of M's box. On the
# unit sphere (box [-1.5, 1.5]^3) points farther than 0.26 from it are refused;
# data on a learned M lie ~1e-3 from it.
AUTO_SHARE = 0.05


def resolve_max_distance(manifold, max_distance="auto"):
    """The largest accepted distance to M: ``max_distance`` itself, or for
    ``"auto"`` :data:`AUTO_SHARE` of the diagonal of ``manifold.bounds``
    (``inf`` where M has no box: a plain callable without ``bounds``);
    ``None`` turns the check off (``inf``)."""
    if max_distance is None:
        return math.inf
    if isinstance(max_distance, str):
        if max_distance != "auto":
            raise ValueError(f"max_distance must be 'auto', a positive number or None, "
                             f"got {max_distance!r}")
        bounds = getattr(manifold, "bounds", None)
        if bounds is None:
            return math.inf
        lo, hi = (torch.as_tensor(b, dtype=torch.float64) for b in bounds)
        return AUTO_SHARE * float((hi - lo).norm())
    value = float(max_distance)
    if not value > 0:  # (also refuses NaN)
        raise ValueError(f"max_distance must be 'auto', a positive number or None, "
                         f"got {max_distance!r}")
    return value


def closest_points(manifold, X, what="points", max_distance="auto"):
    """Closest points of the flat batch ``X`` on M (no autograd).

    Raises
    ------
    ProjectionError
        Points that cannot be projected (naming ``what``).
    InvalidPointError
        Points farther than ``max_distance`` (see :func:`resolve_max_distance`)
        from M.
    """
    with torch.no_grad(), naming_points(what):
        Y = manifold.projection(X)
    limit = resolve_max_distance(manifold, max_distance)
    if math.isfinite(limit) and X.shape[0]:
        with torch.no_grad():
            dist = (X - Y).norm(dim=-1)
        far = dist > limit
        if bool(far.any()):
            raise InvalidPointError(
                f"{int(far.sum())} of {far.numel()} {what} lie farther than "
                f"{{max_distance={limit:.3g}}} from {getattr(manifold, 'name', 'M')} (up to "
                f"{float(dist.max()):.3g}, first at index {int(far.nonzero()[0, 0])}): a "
                "density on M scores a point at its closest point only near M (on a learned "
                "M: does it fit these points?). Set {max_distance=None} (or a larger "
                "{max_distance}) to score such points anyway.", params=("max_distance",))
    return Y
