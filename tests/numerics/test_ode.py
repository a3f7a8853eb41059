"""The GBS extrapolation integrator."""

import math

import pytest
import torch

from implicit_geom.exceptions import GeodesicError
from implicit_geom.numerics.ode import GBSIntegrator


def oscillator(z):
    return torch.stack([z[:, 1], -z[:, 0]], dim=-1)


def test_harmonic_oscillator_to_high_accuracy_in_few_steps():
    integ = GBSIntegrator(rtol=1e-12, atol=1e-12)
    z0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t = 2.5
    z = integ.integrate(oscillator, z0, t_final=t)
    exact = torch.tensor([[math.cos(t), -math.sin(t)], [2 * math.sin(t), 2 * math.cos(t)]],
                         dtype=torch.float64)
    torch.testing.assert_close(z, exact, rtol=0, atol=1e-11)
    assert integ.n_rhs_evals < 600
    # The levels run side by side: far fewer sequential calls than evaluations.
    assert integ.n_rhs_calls < integ.n_rhs_evals / 3


def test_step_cap_raises_geodesic_error():
    integ = GBSIntegrator(rtol=1e-14, atol=1e-14, sequence=(2, 4), max_macro_steps=3)
    with pytest.raises(GeodesicError, match="did not finish"):
        integ.integrate(lambda z: z**2, torch.ones(1, 1, dtype=torch.float64), t_final=2.0)
