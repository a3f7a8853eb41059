"""Implicit manifolds as geomstats spaces: core class, analytic spaces, arithmetic."""

from .analytic import (
    GeomstatsLevelSet,
    ImplicitSphere,
    ImplicitTorus,
    SympyImplicitManifold,
    as_implicit,
    from_sympy,
)
from .arithmetic import IntersectionManifold, UnionManifold, intersection, union
from .implicit import ImplicitManifold
from .metric import ImplicitMetric

__all__ = [
    "GeomstatsLevelSet",
    "ImplicitManifold",
    "ImplicitMetric",
    "ImplicitSphere",
    "ImplicitTorus",
    "IntersectionManifold",
    "SympyImplicitManifold",
    "UnionManifold",
    "as_implicit",
    "from_sympy",
    "intersection",
    "union",
]
