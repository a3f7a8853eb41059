"""Learning a manifold from data: the MDF estimator (NeuralImplicitManifold), its
objective, negatives, orientation, training, topology, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .mdf import (
    MDFObjective,
    constraint_norm,
    jacobian_singular_values,
    orientation_penalty,
    rank_penalty,
)
from .estimator import EstimatorMixin
from .mdf_estimator import NeuralImplicitManifold
from .negatives import LangevinNegativeSampler
from .orientation import outward_normals, pca_normals
from .topology import ComponentReport, count_components
from .trainer import Trainer, cosine_lr

__all__ = [
    "ComponentReport",
    "EstimatorMixin",
    "LangevinNegativeSampler",
    "MDFObjective",
    "NeuralImplicitManifold",
    "Trainer",
    "constraint_norm",
    "cosine_lr",
    "count_components",
    "jacobian_singular_values",
    "load_checkpoint",
    "orientation_penalty",
    "outward_normals",
    "pca_normals",
    "rank_penalty",
    "save_checkpoint",
]
