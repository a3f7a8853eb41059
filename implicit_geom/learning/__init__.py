"""Learning a manifold from data: MDF objective, negatives, training, topology, checkpoints."""

from .checkpoint import load_checkpoint, save_checkpoint
from .mdf import MDFObjective, constraint_norm, jacobian_singular_values, rank_penalty
from .negatives import LangevinNegativeSampler
from .topology import ComponentReport, count_components
from .trainer import Trainer, cosine_lr

__all__ = [
    "ComponentReport",
    "LangevinNegativeSampler",
    "MDFObjective",
    "Trainer",
    "constraint_norm",
    "cosine_lr",
    "count_components",
    "jacobian_singular_values",
    "load_checkpoint",
    "rank_penalty",
    "save_checkpoint",
]
