"""Numerical kernels shared by manifolds, samplers and models (torch, batched)."""

from .autodiff import jacobian, jvp, second_directional_derivative
from .linalg import (
    gram_solve,
    normal_combination,
    normal_space_solve,
    tangent_basis,
    tangent_projector,
)
from .newton import NewtonResult, newton_min_norm, solve_along_normals
from .ode import GBSIntegrator
from .validation import as_points, check_finite, check_int

__all__ = [
    "GBSIntegrator",
    "NewtonResult",
    "as_points",
    "check_finite",
    "check_int",
    "gram_solve",
    "jacobian",
    "jvp",
    "newton_min_norm",
    "normal_combination",
    "normal_space_solve",
    "second_directional_derivative",
    "solve_along_normals",
    "tangent_basis",
    "tangent_projector",
]
