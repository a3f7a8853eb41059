"""Implicit manifolds as geomstats spaces: core class, analytic spaces, arithmetic."""

from .analytic import (
    GeomstatsLevelSet,
    ImplicitSphere,
    ImplicitTorus,
    SympyImplicitManifold,
    as_implicit,
    from_sympy,
)
from .arithmetic import (
    IntersectionManifold,
    ProductImplicitManifold,
    UnionManifold,
    intersection,
    product,
    union,
)
from .implicit import ImplicitManifold
from .metric import ImplicitMetric
from .neural import NeuralImplicitManifold

__all__ = [
    "GeomstatsLevelSet",
    "ImplicitManifold",
    "ImplicitMetric",
    "ImplicitSphere",
    "ImplicitTorus",
    "IntersectionManifold",
    "ProductImplicitManifold",
    "NeuralImplicitManifold",
    "SympyImplicitManifold",
    "UnionManifold",
    "as_implicit",
    "from_sympy",
    "intersection",
    "product",
    "union",
]
