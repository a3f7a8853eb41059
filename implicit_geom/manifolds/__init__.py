"""Implicit manifolds as geomstats spaces: core class, analytic spaces, arithmetic,
network-defined manifolds. Geometry only: nothing here imports learning, models
or sampling (the learned manifold's estimator is in :mod:`implicit_geom.learning`)."""

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
from .components import ComponentMap
from .implicit import ImplicitManifold
from .metric import ImplicitMetric
from .neural import MDFNetwork, NetworkImplicitManifold

__all__ = [
    "ComponentMap",
    "GeomstatsLevelSet",
    "ImplicitManifold",
    "ImplicitMetric",
    "ImplicitSphere",
    "ImplicitTorus",
    "IntersectionManifold",
    "ProductImplicitManifold",
    "MDFNetwork",
    "NetworkImplicitManifold",
    "SympyImplicitManifold",
    "UnionManifold",
    "as_implicit",
    "from_sympy",
    "intersection",
    "product",
    "union",
]
