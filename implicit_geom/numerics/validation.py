"""Input checks: every public entry point converts and validates through here."""

import math
import numbers

import torch

from ..exceptions import EmptyDataError, InvalidPointError

DTYPE = torch.float64


def check_int(value, name, minimum=1, message=None):
    """``value`` as a Python int, checked: an integer (numpy's and integral floats
    such as ``3.0`` included) at least ``minimum``.

    One rule for every count and seed: ``int()`` alone would truncate 2.7 to 2
    (another grid, split or chain length than asked) and turn ``True`` into 1.

    Raises
    ------
    ValueError
        Booleans, strings, non-integral or non-finite numbers, values below ``minimum``
        (``message`` replaces the default text).
    """
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()  # a 0-d tensor or numpy scalar
    ok = (not isinstance(value, bool)
          and (isinstance(value, numbers.Integral)
               or (isinstance(value, numbers.Real) and math.isfinite(value)
                   and float(value).is_integer()))
          and (minimum is None or value >= minimum))
    if not ok:
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(message or f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def check_finite(tensor, name="point"):
    """Raise :class:`InvalidPointError` if ``tensor`` has NaN or inf entries."""
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).reshape(-1, tensor.shape[-1]).any(-1)
        first = int(bad.nonzero()[0, 0]) if bad.any() else 0
        raise InvalidPointError(
            f"{name} contains NaN or inf values (first bad entry at flat batch "
            f"index {first} of {bad.numel()})."
        )
    return tensor


def as_points(point, ambient_dim, name="point", allow_empty=False, dtype=None):
    """Convert ``point`` to a float tensor of shape ``(..., ambient_dim)`` and check it.

    Parameters
    ----------
    point : array-like, shape=[..., ambient_dim]
    ambient_dim : int
    name : str
        Used in error messages.
    allow_empty : bool
        Whether a batch with zero points is accepted.
    dtype : torch.dtype, optional
        Target dtype; default float64 (float tensors keep their own dtype).

    Returns
    -------
    point : torch.Tensor, shape=[..., ambient_dim]
    """
    if not torch.is_tensor(point):
        try:
            point = torch.as_tensor(point, dtype=dtype or DTYPE)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InvalidPointError(f"{name} cannot be converted to a tensor: {err}") from err
    elif dtype is not None:
        point = point.to(dtype)
    elif not point.is_floating_point():
        point = point.to(DTYPE)
    if point.ndim == 0 or point.shape[-1] != ambient_dim:
        raise InvalidPointError(
            f"{name} must have shape (..., {ambient_dim}); got {tuple(point.shape)}."
        )
    if point.numel() == 0 and not allow_empty:
        raise EmptyDataError(f"{name} is empty (shape {tuple(point.shape)}).")
    return check_finite(point, name)


#: Coordinates beyond this size are refused by :func:`check_spread`: their
#: squares (distances, variances, norms) overflow float64 (above 1.3e154)
#: once summed over many points.
MAX_COORDINATE = 1e150
#: A spread below this is refused by :func:`check_spread`: its square underflows.
MIN_SPREAD = 1e-150


def check_spread(points, name="X"):
    """Refuse ``points`` (N, n) from which no length scale can be computed in float64.

    Fits standardise by the points' spread and work with squared distances:
    all points equal (also when they differ only below float64's resolution
    at their magnitude), coordinates whose squares overflow or a spread whose
    square underflows failed only after training (a NaN loss, no zero set in
    a box of no width). Flat axes are fine (a circle at z = 0 in R^3).

    Raises
    ------
    InvalidPointError
        Naming ``name`` and what is degenerate.
    """
    largest = float(points.abs().max())
    if largest > MAX_COORDINATE:
        raise InvalidPointError(
            f"{name} has coordinates as large as {largest:.3g}: beyond {MAX_COORDINATE:.0e} "
            "their squares overflow float64; rescale the data (to unit spread)")
    spread = float((points.max(0).values - points.min(0).values).max())
    if spread == 0:
        raise InvalidPointError(
            f"all {points.shape[0]} points of {name} are equal (to float64 precision): they "
            "have no spread to fit a manifold or a density to")
    if spread < MIN_SPREAD:
        raise InvalidPointError(
            f"{name} spreads over only {spread:.3g}: below {MIN_SPREAD:.0e} its square "
            "underflows float64; rescale the data (to unit spread)")
    return points


def as_point_list(points, ambient_dim, name="points"):
    """:func:`as_points` for a list of points, shape ``(N, ambient_dim)`` exactly:
    a pairwise matrix of a batch of batches would otherwise be the matrix of
    its flattened points, silently."""
    points = as_points(points, ambient_dim, name)
    if points.ndim != 2:
        raise InvalidPointError(
            f"{name} must have shape (N, {ambient_dim}); got {tuple(points.shape)}."
        )
    return points


def broadcast_points(*tensors, names=None):
    """``torch.broadcast_tensors`` for user inputs: incompatible batch shapes
    raise :class:`InvalidPointError` naming the arguments, not torch's
    ``RuntimeError``."""
    try:
        return torch.broadcast_tensors(*tensors)
    except RuntimeError as err:
        names = names or [f"argument {i}" for i in range(len(tensors))]
        shapes = ", ".join(f"{name} {tuple(t.shape)}" for name, t in zip(names, tensors))
        raise InvalidPointError(
            f"batch shapes do not broadcast: {shapes} (leading dimensions must be "
            "equal or 1)."
        ) from err


#: A box axis along which points vary by at most this fraction of the widest
#: axis is flat (:func:`padded_box`'s ``flat``: the MDF's box, the evaluation's).
FLAT_AXIS = 1e-9


def padded_box(points, fraction, min_width=0.0, flat=None):
    """Bounding box of ``points`` (N, n) widened by ``fraction`` of its size per side.

    ``min_width`` keeps degenerate (flat) axes from giving an empty box.
    ``flat``: an axis whose extent is at most this fraction of the widest
    one's is given the widest extent, centred on the points (points on an
    axis-aligned plane, a circle at z = 0 in R^3: a manifold fitted to them is
    never exactly flat, and a box of no width along that axis misses it).
    """
    lo, hi = points.min(0).values, points.max(0).values
    pad = fraction * (hi - lo).clamp_min(min_width)
    low, high = lo - pad, hi + pad
    if flat is not None:
        width = hi - lo
        widest = width.max()
        thin = width <= flat * widest
        if bool(thin.any()):
            half = (0.5 + fraction) * widest
            centre = (lo + hi) / 2
            low, high = torch.where(thin, centre - half, low), torch.where(thin, centre + half, high)
    return low, high
