"""Gragg-Bulirsch-Stoer (GBS) extrapolation integrator for batched autonomous ODEs.

Geodesics of an implicit manifold solve a smooth ODE in the ambient space. A
second-order method would need thousands of steps to reach 1e-10 over a path of
length 2.5; GBS extrapolates the modified-midpoint rule in h^2 and reaches that
accuracy with a few macro steps, choosing its order per step from the difference
of the last two extrapolants (the standard Deuflhard order control, simplified
to a fixed step sequence).

The levels of the extrapolation table (midpoint rules with 2, 4, 6, ... substeps
over the same macro step) are independent of each other, so they run side by
side: round k evaluates the right-hand side once, on the k-th substep of every
level still going, stacked into one batch (Rauber & Ruenger's parallel
extrapolation). A macro step then costs ``n_max + 1`` sequential evaluations
instead of ``1 + 2 + 4 + ... + n_max``: the right-hand sides here (autograd
through F, small batches) cost about the same for 8 rows per point as for one.
"""

import math

import torch

from ..exceptions import GeodesicError


class GBSIntegrator:
    """Integrate ``dz/dt = rhs(z)`` for a batch of states ``z`` of shape (B, D).

    ``rhs`` must be row-wise (each row's derivative depends on that row only):
    it is called on the rows of several extrapolation levels stacked together.

    Parameters
    ----------
    rtol, atol : float
        Per-macro-step tolerance on the extrapolation error estimate.
    sequence : tuple of int
        Substep counts of the modified-midpoint rule (even numbers).
    max_macro_steps : int
        Cap on accepted plus rejected macro steps over one integration.
    """

    def __init__(self, rtol=1e-12, atol=1e-12, sequence=(2, 4, 6, 8, 10, 12, 14, 16),
                 max_macro_steps=400):
        self.rtol = rtol
        self.atol = atol
        self.sequence = tuple(sequence)
        self.max_macro_steps = max_macro_steps
        self.n_rhs_evals = 0  # right-hand sides evaluated (rows / batch size)
        self.n_rhs_calls = 0  # sequential calls of rhs (each on stacked levels)
        self._tops = {}  # levels needed last time, by step size (see integrate)
        self._ratio_cache = {}

    def _macro_step(self, rhs, z, H, top, f0):
        """One extrapolated step with levels ``0 .. top-1`` run side by side,
        from ``z`` with ``f0 = rhs(z)``.

        Returns ``(z_new, converged, level)``; ``level`` is the first level
        whose extrapolation error estimate is within tolerance.
        """
        ns = self.sequence[:top]
        b, d = z.shape
        h = torch.tensor([H / n for n in ns], dtype=z.dtype, device=z.device)[:, None, None]
        prev = z.expand(top, b, d).clone()  # (levels, B, D)
        cur = prev + h * f0
        finals = [None] * top
        first = 0  # levels first.. still need f (n_j >= k); n_j increases with j
        for k in range(1, ns[-1] + 1):
            while ns[first] < k:
                first += 1
            f = rhs(cur[first:].reshape(-1, d)).reshape(top - first, b, d)
            self.n_rhs_evals += top - first
            self.n_rhs_calls += 1
            if ns[first] == k:  # this level's last substep: the smoothing step
                finals[first] = 0.5 * (cur[first] + prev[first] + h[first] * f[0])
                f, lo = f[1:], first + 1
            else:
                lo = first
            if lo < top:
                new = prev[lo:] + 2 * h[lo:] * f
                prev[lo:] = cur[lo:]
                cur[lo:] = new
        # Aitken-Neville extrapolation in h^2, one column of the table at a
        # time for all levels at once (the same arithmetic as entry by entry,
        # in a few batched operations).
        col = torch.stack(finals)  # T_{j,0}, j = 0 .. top-1
        diag, below = [col[0]], [None]  # T_{j,j} and T_{j,j-1}
        for q in range(1, top):
            below.append(col[1])
            col = col[1:] + (col[1:] - col[:-1]) / self._ratios(top, q, z)
            diag.append(col[0])
        for j in range(1, top):
            scale = self.atol + self.rtol * diag[j].abs()
            if bool(((diag[j] - below[j]).abs() / scale).amax() <= 1.0):
                return diag[j], True, j
        return diag[-1], False, top - 1

    def _ratios(self, top, q, like):
        """``(n_j / n_{j-q})^2 - 1`` for j = q .. top-1, shaped to divide a column."""
        key = (top, q, like.dtype, like.device)
        out = self._ratio_cache.get(key)
        if out is None:
            ns = self.sequence
            out = torch.tensor([(ns[j] / ns[j - q]) ** 2 - 1.0 for j in range(q, top)],
                               dtype=like.dtype, device=like.device)[:, None, None]
            self._ratio_cache[key] = out
        return out

    def integrate(self, rhs, z0, t_final=1.0, n_steps=1):
        """Integrate from 0 to ``t_final`` starting with ``n_steps`` equal macro steps.

        Raises
        ------
        GeodesicError
            If the step cap is reached or the state becomes non-finite.
        """
        z = z0
        t = 0.0
        H = t_final / max(int(n_steps), 1)
        n_levels = len(self.sequence)
        # Start from the levels a step of this size (H times the state's
        # rate, in half octaves) needed last time: geodesics of one manifold
        # are alike, but short and long steps (an exp of a small update, a
        # log's long shots) need different levels, and one remembered level
        # for both would make every other step a retry.
        top = f0 = None
        for _ in range(self.max_macro_steps):
            if t >= t_final * (1 - 1e-14):
                return z
            H = min(H, t_final - t)
            if f0 is None:  # (a retried step starts from the same state)
                f0 = rhs(z)
                self.n_rhs_evals += 1
                self.n_rhs_calls += 1
            key = _size_key(H, f0)
            top = self._tops.get(key, n_levels if top is None else top)
            z_new, ok, level = self._macro_step(rhs, z, H, top, f0)
            if ok and bool(torch.isfinite(z_new).all()):
                z, t, f0 = z_new, t + H, None
                # One level above the one that converged is run next time.
                top = self._tops[key] = min(n_levels, level + 2)
                # Converging at a low level means the step can grow; at the
                # top, that it should shrink.
                if level <= 3:
                    H *= 2.0
                elif level >= n_levels - 2:
                    H *= 0.7
            elif top < n_levels:
                top = self._tops[key] = n_levels  # retry the same step with every level
            else:
                H *= 0.25
        raise GeodesicError(
            f"geodesic integration did not finish within {self.max_macro_steps} macro "
            f"steps (reached t={t:.3g} of {t_final}); the curvature may be extreme or "
            "the path leaves the region where F is a submersion."
        )


def n_macro_steps(speed, arc_per_step=1.0):
    """Initial number of macro steps for paths of the given (max) speed."""
    return max(1, math.ceil(float(speed) / arc_per_step))


def _size_key(H, rate):
    """Half-octave class of a macro step: ``H`` times the largest rate."""
    size = abs(H) * float(rate.abs().amax()) if rate.numel() else 0.0
    return math.floor(2 * math.log2(size)) if size > 0 else None
