"""implicit_geom: learned (implicit) manifolds as first-class geomstats spaces."""

from ._backend import ensure_pytorch_backend

ensure_pytorch_backend()

from .exceptions import (  # noqa: E402
    BackendError,
    CheckpointError,
    ComponentError,
    ConditioningWarning,
    CurvatureError,
    DataError,
    DifferentiationError,
    DisconnectedError,
    EmptyDataError,
    FitWarning,
    GeodesicError,
    ImplicitGeomError,
    InvalidPointError,
    NormalizationError,
    NotFittedError,
    ParameterError,
    ParameterMessage,
    ProjectionError,
    QuadratureCoverageError,
    SingularJacobianError,
    TrainingDivergedError,
)
from .manifolds import (  # noqa: E402
    GeomstatsLevelSet,
    ImplicitManifold,
    ImplicitMetric,
    ImplicitSphere,
    ImplicitTorus,
    IntersectionManifold,
    NetworkImplicitManifold,
    ProductImplicitManifold,
    UnionManifold,
    as_implicit,
    from_sympy,
    intersection,
    product,
    union,
)
from .learning import NeuralImplicitManifold  # noqa: E402  (the estimator; geometry above)
from .threads import set_threads  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "GeomstatsLevelSet",
    "ImplicitManifold",
    "ImplicitMetric",
    "ImplicitSphere",
    "ImplicitTorus",
    "IntersectionManifold",
    "NetworkImplicitManifold",
    "NeuralImplicitManifold",
    "ProductImplicitManifold",
    "UnionManifold",
    "as_implicit",
    "from_sympy",
    "intersection",
    "product",
    "union",
    "BackendError",
    "CheckpointError",
    "ComponentError",
    "ConditioningWarning",
    "CurvatureError",
    "DataError",
    "DifferentiationError",
    "DisconnectedError",
    "EmptyDataError",
    "FitWarning",
    "GeodesicError",
    "ImplicitGeomError",
    "InvalidPointError",
    "NormalizationError",
    "NotFittedError",
    "ParameterError",
    "ParameterMessage",
    "ProjectionError",
    "QuadratureCoverageError",
    "SingularJacobianError",
    "TrainingDivergedError",
    "set_threads",
]
