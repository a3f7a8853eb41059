"""Per-run diagnostics of the constrained samplers, effective sample sizes and
Monte Carlo error estimates."""

import math
from dataclasses import dataclass
from typing import Optional

import torch


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
        samples (:func:`effective_sample_size`); None for
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


def _autocovariance(x: torch.Tensor) -> torch.Tensor:
    """Biased autocovariance along dim 0 of every column, via FFT.

    Zero-padding to at least 2n turns the FFT's circular correlation into the
    linear one.
    """
    n = x.shape[0]
    centred = x - x.mean(dim=0, keepdim=True)
    size = 1 << (2 * n - 1).bit_length()
    spectrum = torch.fft.rfft(centred, n=size, dim=0)
    return torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=0)[:n] / n


def effective_sample_size(chains) -> torch.Tensor:
    """Effective sample size of the mean, per dimension, for MCMC chains.

    Uses the multi-chain autocorrelation estimate of Stan (Vehtari et al.,
    2021, eq. 10: within-chain autocovariances combined with the between-chain
    variance) truncated with Geyer's (1992) initial monotone sequence: the
    sums ``P_k = rho_2k + rho_2k+1`` are kept up to the first non-positive
    one and made non-increasing, and ``tau = -1 + 2 sum_k P_k``. This is
    ArviZ's ``ess(method="mean")`` without rank normalisation (Stan's extra
    one-lag tail correction is omitted). As in Stan, ``tau`` is bounded below
    by ``1 / log10(n_steps * n_chains)``.

    Parameters
    ----------
    chains : torch.Tensor or array_like, shape (n_steps, n_chains, d) or (n_steps,)
        A 1-d input is one chain of a scalar. Needs ``n_steps >= 4``.

    Returns
    -------
    torch.Tensor, shape (d,)
        ESS of each dimension (NaN for a dimension that is constant).
    """
    x = torch.as_tensor(chains, dtype=torch.float64)
    if x.ndim == 1:
        x = x[:, None, None]
    if x.ndim != 3:
        raise ValueError(f"chains must have shape (n_steps, n_chains, d), got {tuple(x.shape)}")
    n, m, d = x.shape
    if n < 4:
        raise ValueError(f"need at least 4 steps per chain, got {n}")
    if not torch.isfinite(x).all():
        raise ValueError("chains contain NaN or inf")

    acov = _autocovariance(x)  # (n, m, d)
    chain_var = acov[0] * n / (n - 1)  # unbiased within-chain variances, (m, d)
    within = chain_var.mean(dim=0)
    var_plus = within * (n - 1) / n
    if m > 1:
        var_plus = var_plus + x.mean(dim=0).var(dim=0)
    rho = 1.0 - (within - acov.mean(dim=1)) / var_plus  # (n, d); rho[0] == 1

    n_pairs = n // 2
    pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2, d).sum(dim=1)  # P_k, (n_pairs, d)
    # Initial positive sequence: keep P_k while all of P_0..P_k are positive.
    positive = torch.cumprod((pairs > 0).to(torch.float64), dim=0)
    # Initial monotone sequence: running minimum of the kept sums.
    monotone = torch.cummin(pairs, dim=0).values
    tau = -1.0 + 2.0 * (monotone * positive).sum(dim=0)
    tau = torch.clamp(tau, min=1.0 / math.log10(n * m))
    ess = n * m / tau
    return torch.where(var_plus > 0, ess, torch.full_like(ess, float("nan")))
