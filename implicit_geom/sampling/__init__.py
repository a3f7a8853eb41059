"""Constrained samplers on implicit manifolds (targets, RATTLE steps, MCMC, diagnostics).

>>> from implicit_geom.sampling import ConstrainedLangevin, ConstrainedMALA, ConstrainedHMC
>>> sampler = ConstrainedMALA(manifold, energy, step_size=0.1, seed=0)
>>> samples, info = sampler.sample(x0, n_steps=500, n_warmup=200)
"""

from .adaptation import DualAveragingStepSize
from .diagnostics import SamplerInfo, effective_sample_size, monte_carlo_estimate
from .integrators import SolverOptions, StepStatus, rattle_step
from .samplers import EMIT_TOL, ConstrainedHMC, ConstrainedLangevin, ConstrainedMALA
from .targets import ChainState, ConstrainedTarget
from .transitions import ComponentJump

__all__ = [
    "EMIT_TOL",
    "ChainState",
    "ComponentJump",
    "ConstrainedHMC",
    "ConstrainedLangevin",
    "ConstrainedMALA",
    "ConstrainedTarget",
    "DualAveragingStepSize",
    "SamplerInfo",
    "SolverOptions",
    "effective_sample_size",
    "StepStatus",
    "monte_carlo_estimate",
    "rattle_step",
]
