"""Dual-averaging step size: reaches the target acceptance of a known curve."""

import math

import pytest

from implicit_geom.sampling import DualAveragingStepSize


@pytest.mark.parametrize("target", [0.5, 0.8])
def test_converges_to_step_with_target_acceptance(target):
    # Acceptance exp(-h^2) decreases with h; the solution is h* = sqrt(-log target).
    adapter = DualAveragingStepSize(0.01, target)
    h = 0.01
    for _ in range(2000):
        h = adapter.update(math.exp(-h * h))
    exact = math.sqrt(-math.log(target))
    assert adapter.final_step_size == pytest.approx(exact, rel=0.02)


def test_failed_iterations_shrink_the_step():
    adapter = DualAveragingStepSize(1.0, 0.6)
    for _ in range(50):
        adapter.update(float("nan"))  # every chain failed: counts as 0
    assert adapter.final_step_size < 0.1


def test_bad_settings():
    with pytest.raises(ValueError):
        DualAveragingStepSize(0.1, 1.5)
    with pytest.raises(ValueError):
        DualAveragingStepSize(0.0, 0.5)
