"""Densities on manifolds: constrained EBMs, baselines and normalising constants."""

from .ambient import AmbientEBM, box_langevin
from .combine import IntersectionEBM, UnionEBM, combine_densities
from .ebm import ConstrainedEBM, EnergyModel, contrastive_divergence_loss
from .energy_nets import EnergyMLP
from .normalization import (
    Quadrature,
    box_quadrature,
    circle_quadrature,
    has_quadrature,
    log_partition,
    manifold_quadrature,
    monte_carlo_log_partition,
    sphere_quadrature,
    torus_quadrature,
)
from .pushforward import Autoencoder, PushforwardEBM

__all__ = [
    "AmbientEBM",
    "Autoencoder",
    "ConstrainedEBM",
    "EnergyMLP",
    "EnergyModel",
    "IntersectionEBM",
    "PushforwardEBM",
    "Quadrature",
    "UnionEBM",
    "box_langevin",
    "box_quadrature",
    "circle_quadrature",
    "combine_densities",
    "contrastive_divergence_loss",
    "has_quadrature",
    "log_partition",
    "manifold_quadrature",
    "monte_carlo_log_partition",
    "sphere_quadrature",
    "torus_quadrature",
]
