"""Densities on manifolds: constrained EBMs, baselines and normalising constants."""

from .ambient import AmbientEBM
from .baselines import ManifoldKDE, VonMisesFisherMixture
from .combine import IntersectionEBM, UnionEBM, combine_densities
from .crossfit import cross_fit_ebm
from .ebm import ConstrainedEBM, EnergyModel, contrastive_divergence_loss
from .energy_nets import (
    AnchoredVMFEnergy,
    EnergyMLP,
    FourierFeatures,
    PolynomialEnergy,
    SumEnergy,
)
from .mixture import DensityMixture, normalized_log_density
from .normalization import (
    LogPartition,
    Quadrature,
    ais_log_partition,
    box_quadrature,
    circle_quadrature,
    component_log_partitions,
    has_quadrature,
    log_partition,
    log_partition_error,
    manifold_quadrature,
    monte_carlo_log_partition,
    sphere_quadrature,
    surface_mesh_quadrature,
    torus_quadrature,
    traced_curve_quadrature,
    tube_volumes,
)
from .pushforward import Autoencoder, PushforwardEBM

__all__ = [
    "AmbientEBM",
    "AnchoredVMFEnergy",
    "Autoencoder",
    "ConstrainedEBM",
    "DensityMixture",
    "EnergyMLP",
    "EnergyModel",
    "FourierFeatures",
    "IntersectionEBM",
    "LogPartition",
    "ManifoldKDE",
    "PolynomialEnergy",
    "PushforwardEBM",
    "Quadrature",
    "SumEnergy",
    "UnionEBM",
    "VonMisesFisherMixture",
    "ais_log_partition",
    "box_quadrature",
    "circle_quadrature",
    "combine_densities",
    "component_log_partitions",
    "contrastive_divergence_loss",
    "cross_fit_ebm",
    "has_quadrature",
    "log_partition",
    "log_partition_error",
    "manifold_quadrature",
    "monte_carlo_log_partition",
    "normalized_log_density",
    "sphere_quadrature",
    "surface_mesh_quadrature",
    "torus_quadrature",
    "traced_curve_quadrature",
    "tube_volumes",
]
