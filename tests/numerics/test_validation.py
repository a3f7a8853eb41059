"""The one integer check every count, resolution and seed goes through."""

import math

import numpy as np
import pytest
import torch

from implicit_geom.numerics.validation import check_int


def test_check_int_accepts_integers_of_any_kind():
    # Catches: numpy / 0-d tensor counts refused (np.int64(3) once read "must be an int,
    # got 3"), or integral floats treated differently by different entry points.
    for value in (3, np.int64(3), np.int32(3), 3.0, np.float64(3.0), torch.tensor(3)):
        out = check_int(value, "n")
        assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [2.7, True, "3", None, math.nan, math.inf, -math.inf,
                                   np.bool_(True), torch.tensor([3])])
def test_check_int_refuses_what_int_would_silently_change(value):
    # Catches: int() truncating 2.7 to 2, True counting as 1, inf raising OverflowError
    # and NaN a bare conversion error instead of a message naming the argument.
    with pytest.raises(ValueError, match="n must be an integer"):
        check_int(value, "n")


def test_check_int_bounds():
    # Catches: the minimum ignored (a zero chain length or resolution accepted).
    assert check_int(0, "n", minimum=0) == 0
    assert check_int(-5, "seed", minimum=None) == -5
    with pytest.raises(ValueError, match=r"n must be an integer >= 2, got 1"):
        check_int(1, "n", minimum=2)
    with pytest.raises(ValueError, match="custom"):
        check_int(0, "n", message="custom")
