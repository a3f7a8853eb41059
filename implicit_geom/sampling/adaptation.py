"""Dual-averaging step-size adaptation (Hoffman & Gelman 2014, Alg. 5)."""

import math


class DualAveragingStepSize:
    """Adapt one global step size so that the mean acceptance statistic hits a target.

    The statistic fed to :meth:`update` is the acceptance probability averaged
    over all chains of one iteration (failed steps count as 0); with hundreds of
    batched chains this average is nearly noise-free, so one global step size
    adapts faster and more stably than per-chain ones, and keeps all chains on
    the same (after warm-up, fixed) kernel.

    Parameters
    ----------
    step_size : float
        Initial step size ``h0``; the iterates shrink toward ``mu = log(10 h0)``.
    target_accept : float
        In (0, 1).
    gamma, t0, kappa : float
        Hoffman & Gelman's defaults (0.05, 10, 0.75).
    """

    def __init__(self, step_size, target_accept, gamma=0.05, t0=10.0, kappa=0.75):
        if not 0.0 < target_accept < 1.0:
            raise ValueError(f"target_accept must lie in (0, 1), got {target_accept}")
        if not step_size > 0:
            raise ValueError(f"step_size must be positive, got {step_size}")
        self.target_accept = float(target_accept)
        self.gamma, self.t0, self.kappa = gamma, t0, kappa
        self.mu = math.log(10.0 * step_size)
        self.log_step = math.log(step_size)
        self.log_step_bar = 0.0
        self.error_bar = 0.0
        self.n_updates = 0

    def update(self, accept_stat):
        """Take one adaptation step; returns the step size to use next."""
        self.n_updates += 1
        t = self.n_updates
        if not math.isfinite(accept_stat):
            accept_stat = 0.0
        w = 1.0 / (t + self.t0)
        self.error_bar = (1 - w) * self.error_bar + w * (self.target_accept - accept_stat)
        self.log_step = self.mu - math.sqrt(t) / self.gamma * self.error_bar
        eta = t ** (-self.kappa)
        self.log_step_bar = eta * self.log_step + (1 - eta) * self.log_step_bar
        return math.exp(self.log_step)

    @property
    def final_step_size(self):
        """The averaged step size, used after warm-up."""
        return math.exp(self.log_step_bar) if self.n_updates else math.exp(self.log_step)
