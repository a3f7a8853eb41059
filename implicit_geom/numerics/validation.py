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


def padded_box(points, fraction, min_width=0.0):
    """Bounding box of ``points`` (N, n) widened by ``fraction`` of its size per side.

    ``min_width`` keeps degenerate (flat) axes from giving an empty box.
    """
    lo, hi = points.min(0).values, points.max(0).values
    pad = fraction * (hi - lo).clamp_min(min_width)
    return lo - pad, hi + pad
