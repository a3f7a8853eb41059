"""Per-run diagnostics of the constrained samplers and Monte Carlo error estimates."""

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..metrics import effective_sample_size


@dataclass
class SamplerInfo:
    """What one ``sample``/``run`` call did.

    Counters cover the iterations after warm-up (all of them, not only the
    thinned ones that were kept).

    Attributes
    ----------
    acceptance_rate : torch.Tensor, shape=[n_chains]
        Fraction of iterations whose proposal was accepted (for the unadjusted
        sampler: whose step succeeded).
    n_projection_failures : torch.Tensor of int, shape=[n_chains]
        Steps rejected because a position solve did not converge.
    n_nonreversible : torch.Tensor of int, shape=[n_chains]
        Steps rejected by the reversibility check.
    max_abs_F : float
        Largest ``|F|`` over every emitted sample (evaluated, not assumed).
    step_size : float
        Step size used after warm-up.
    ess : torch.Tensor or None, shape=[n]
        Effective sample size of each ambient coordinate's mean over the kept
        samples (:func:`implicit_geom.metrics.effective_sample_size`); None for
        ``run`` or fewer than 4 kept samples.
    wall_time : float
        Seconds for the whole call.
    n_steps, n_warmup, thin : int
    mean_accept_prob : float
        Average Metropolis-Hastings acceptance probability after warm-up.
    """

    acceptance_rate: torch.Tensor
    n_projection_failures: torch.Tensor
    n_nonreversible: torch.Tensor
    max_abs_F: float
    step_size: float
    ess: Optional[torch.Tensor]
    wall_time: float
    n_steps: int
    n_warmup: int
    thin: int
    mean_accept_prob: float

    @property
    def n_chains(self):
        """Number of chains."""
        return self.acceptance_rate.numel()

    def summary(self):
        """Chain-aggregated figures as a plain dict (JSON-friendly)."""
        return {
            "n_chains": self.n_chains,
            "n_steps": self.n_steps,
            "n_warmup": self.n_warmup,
            "step_size": self.step_size,
            "acceptance_rate": float(self.acceptance_rate.mean()),
            "mean_accept_prob": self.mean_accept_prob,
            "n_projection_failures": int(self.n_projection_failures.sum()),
            "n_nonreversible": int(self.n_nonreversible.sum()),
            "max_abs_F": self.max_abs_F,
            "min_ess": None if self.ess is None else float(self.ess.min()),
            "wall_time": self.wall_time,
        }


def monte_carlo_estimate(values):
    """Mean of a scalar statistic over chains and its Monte Carlo standard error.

    Parameters
    ----------
    values : torch.Tensor, shape=[n_steps, n_chains]
        The statistic evaluated on the samples.

    Returns
    -------
    mean : float
    se : float
        ``std / sqrt(ESS)`` with the multi-chain ESS of the statistic.
    ess : float
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.ndim != 2:
        raise ValueError(f"values must have shape (n_steps, n_chains), got {tuple(values.shape)}")
    ess = float(effective_sample_size(values.unsqueeze(-1).cpu())[0])
    std = float(values.std())
    se = std / math.sqrt(ess) if ess > 0 else math.inf
    return float(values.mean()), se, ess
