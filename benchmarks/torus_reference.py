"""Independent reference for geodesic distances on a torus of revolution.

Geodesics are solved as boundary-value problems in the intrinsic coordinates
(phi around the axis, theta around the tube), where the metric is
``ds^2 = (R + r cos theta)^2 dphi^2 + r^2 dtheta^2``, with scipy's
``solve_bvp`` -- nothing here shares code or method with
:mod:`implicit_geom` (ambient coordinates, graph guess, spectral path
straightening). A pair's distance is the minimum over the winding classes of
the lifted end point ``(dphi + 2 pi k, dtheta + 2 pi j)``. A class can hold
several geodesics (on the positively curved outer half, a path can pass above
or below), so each class's BVP is seeded with its shortest path in a fine
16-neighbour grid graph over the universal cover (metric edge lengths) and,
for far pairs, with that path mirrored across the straight line (the other
side of the tube); every class whose grid length is within 5% of the best one
is solved.

Run:  python benchmarks/torus_reference.py [--n 200] [--jobs 2]
(writes ``benchmarks/results/torus_reference_<n>_<seed>.npz``).
"""

import argparse
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy.integrate import solve_bvp

RESULTS = Path(__file__).resolve().parent / "results"


def _rhs(R, r):
    def fun(t, y):
        theta, dphi, dtheta = y[1], y[2], y[3]
        rho = R + r * np.cos(theta)
        return np.vstack([dphi, dtheta, 2 * r * np.sin(theta) * dtheta * dphi / rho,
                          -rho * np.sin(theta) * dphi**2 / r])

    def jac(t, y):
        theta, dphi, dtheta = y[1], y[2], y[3]
        s, c = np.sin(theta), np.cos(theta)
        rho = R + r * c
        out = np.zeros((4, 4, len(t)))
        out[0, 2] = out[1, 3] = 1.0
        out[2, 1] = 2 * r * dtheta * dphi * (c * rho + r * s * s) / rho**2
        out[2, 2] = 2 * r * s * dtheta / rho
        out[2, 3] = 2 * r * s * dphi / rho
        out[3, 1] = -(-r * s * s + rho * c) * dphi**2 / r
        out[3, 2] = -2 * rho * s * dphi / r
        return out

    return fun, jac


def _bc_jac(ya, yb):
    ja = np.zeros((4, 4))
    jb = np.zeros((4, 4))
    ja[0, 0] = ja[1, 1] = 1.0
    jb[2, 0] = jb[3, 1] = 1.0
    return ja, jb


class _CoverGrid:
    """Regular grid over a patch of the universal cover around a source.

    Nodes are ``(phi_a + i dphi, theta_a + j dtheta)``; edges join each node to
    its 16 neighbours (king and knight moves) with the metric length of the
    straight segment in (phi, theta) (Simpson's rule along it). Dijkstra on it
    gives, for every lift of a target, an approximate shortest path *in that
    winding class* -- the seed of the class's boundary-value problem.
    """

    def __init__(self, theta_a, R, r, half_turns=3, per_turn=128):
        from scipy.sparse import coo_matrix

        self.step = 2 * np.pi / per_turn
        self.half = half_turns * per_turn // 2 + 2
        size = 2 * self.half + 1
        self.size = size
        ii, jj = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
        rows, cols, w = [], [], []
        moves = [(1, 0), (0, 1), (1, 1), (1, -1), (2, 1), (1, 2), (2, -1), (1, -2)]
        for di, dj in moves:
            i2, j2 = ii + di, jj + dj
            ok = (i2 >= 0) & (i2 < size) & (j2 >= 0) & (j2 < size)
            a, b = ii[ok], jj[ok]
            th = theta_a + (np.stack([b, b + 0.5 * dj, b + dj]) - self.half) * self.step
            rho = R + r * np.cos(th)
            seg = np.sqrt((rho * di * self.step) ** 2 + (r * dj * self.step) ** 2)
            rows.append(a * size + b)
            cols.append(i2[ok] * size + j2[ok])
            w.append((seg[0] + 4 * seg[1] + seg[2]) / 6)
        n = size * size
        mat = coo_matrix((np.concatenate(w), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(n, n)).tocsr()
        self.matrix = mat + mat.T

    def shortest(self):
        from scipy.sparse.csgraph import dijkstra

        centre = self.half * self.size + self.half
        return dijkstra(self.matrix, indices=centre, return_predecessors=True)

    def node(self, dphi, dtheta):
        i = int(round(dphi / self.step)) + self.half
        j = int(round(dtheta / self.step)) + self.half
        if not (0 <= i < self.size and 0 <= j < self.size):
            return None
        return i * self.size + j

    def path(self, pred, node):
        out = [node]
        while pred[out[-1]] >= 0:
            out.append(pred[out[-1]])
        out = np.array(out[::-1])
        ij = np.stack([out // self.size - self.half, out % self.size - self.half], -1)
        return ij * self.step


def _solve_seeded(a, b, R, r, seed, tol):
    """Geodesic length from angles ``a`` to the lifted end ``b``, BVP seeded by a path."""
    fun, jac = _rhs(R, r)
    seed = np.asarray(seed, dtype=float)
    # Parametrise the seed by its metric arc length.
    mid = 0.5 * (seed[1:] + seed[:-1])
    rho = R + r * np.cos(a[1] + mid[:, 1])
    seg = np.sqrt((rho * np.diff(seed[:, 0])) ** 2 + (r * np.diff(seed[:, 1])) ** 2)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    if len(seed) < 2 or s[-1] <= 0:  # the target's lift is the source's grid node
        s = np.linspace(0.0, 1.0, len(seed)) if len(seed) > 1 else np.array([0.0, 1.0])
        seed = seed if len(seed) > 1 else np.zeros((2, 2))
    s /= s[-1]
    t = np.linspace(0.0, 1.0, 17)
    ang = np.stack([np.interp(t, s, seed[:, 0]), np.interp(t, s, seed[:, 1])])
    ang[0] += a[0] + np.linspace(0, b[0] - a[0] - ang[0, -1], 17)
    ang[1] += a[1] + np.linspace(0, b[1] - a[1] - ang[1, -1], 17)
    y = np.vstack([ang, np.gradient(ang, t, axis=1)])

    def bc(ya, yb):
        return np.array([ya[0] - a[0], ya[1] - a[1], yb[0] - b[0], yb[1] - b[1]])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sol = solve_bvp(fun, bc, t, y, fun_jac=jac, bc_jac=_bc_jac, tol=tol, max_nodes=20000)
    if not sol.success:
        return np.inf
    # The geodesic has constant speed; integrate it anyway (a check of the solve).
    tt = np.linspace(0.0, 1.0, 4001)
    yy = sol.sol(tt)
    speed = np.sqrt((R + r * np.cos(yy[1])) ** 2 * yy[2] ** 2 + r**2 * yy[3] ** 2)
    if speed.std() > 1e-5 * speed.mean():
        return np.inf  # not a geodesic to the accuracy we rely on
    return float(np.trapezoid(speed, tt) if hasattr(np, "trapezoid") else np.trapz(speed, tt))


def source_distances(a, targets, R, r, window=0.05, tol=1e-8, mirror_beyond=4.0):
    """Reference distances from angles ``a`` to each row of ``targets``.

    For each target, every lift ``(dphi + 2 pi k, dtheta + 2 pi j)``,
    ``k, j in {-1, 0, 1}``, whose grid distance is within ``window`` of the
    best lift's is solved as a BVP seeded by its grid path (and, beyond a
    grid length of ``mirror_beyond``, by that path mirrored in theta), and the
    shortest converged geodesic is kept.

    Returns
    -------
    dist : numpy.ndarray, shape=[T]
    n_failed : numpy.ndarray of int, shape=[T]
        Seeded lifts whose BVP failed (0: every candidate was solved).
    """
    grid = _CoverGrid(a[1], R, r)
    gdist, pred = grid.shortest()
    wrap = lambda d: (d + np.pi) % (2 * np.pi) - np.pi  # noqa: E731
    out = np.full(len(targets), np.inf)
    failed = np.zeros(len(targets), dtype=int)
    for t, b in enumerate(targets):
        d0 = np.array([wrap(b[0] - a[0]), wrap(b[1] - a[1])])
        lifts = []
        for k in (-1, 0, 1):
            for j in (-1, 0, 1):
                lift = d0 + 2 * np.pi * np.array([k, j])
                node = grid.node(*lift)
                if node is not None and np.isfinite(gdist[node]):
                    lifts.append((gdist[node], lift, node))
        best_grid = min(lift[0] for lift in lifts)
        for g, lift, node in sorted(lifts, key=lambda x: x[0]):
            if g > (1 + window) * best_grid:
                break
            path = grid.path(pred, node)
            seeds = [path]
            if g > mirror_beyond:
                # Far pairs can have two geodesics in one class, passing above
                # and below (e.g. over the top or under the bottom of the
                # tube and back): also seed with the grid path mirrored in
                # theta about the straight line.
                straight = np.linspace(0.0, 1.0, len(path))[:, None] * path[-1]
                seeds.append(np.stack([path[:, 0], 2 * straight[:, 1] - path[:, 1]], -1))
            for seed in seeds:
                length = _solve_seeded(a, a + lift, R, r, seed, tol)
                if np.isfinite(length):
                    out[t] = min(out[t], length)
                else:
                    failed[t] += 1
    return out, failed


def pair_distance(a, b, R, r, **kwargs):
    """Reference distance between two points given by angles (see :func:`source_distances`)."""
    dist, failed = source_distances(np.asarray(a), np.asarray(b)[None], R, r, **kwargs)
    return float(dist[0]), int(failed[0])


def _rows(args):
    angles, rows, R, r = args
    out = []
    for i in rows:
        if i + 1 < len(angles):
            dist, failed = source_distances(angles[i], angles[i + 1:], R, r)
            out += [(i, i + 1 + t, dist[t], failed[t]) for t in range(len(dist))]
    return out


def distance_matrix(angles, R, r, jobs=1, progress=True):
    """Reference distance matrix of points given by angles ``(phi, theta)``, shape (N, 2).

    Returns
    -------
    dist : numpy.ndarray, shape=[N, N]
    n_failed : numpy.ndarray of int, shape=[N, N]
        Unresolved classes per pair (see :func:`pair_distance`).
    """
    angles = np.asarray(angles, dtype=float)
    n = len(angles)
    # Interleave rows so that the chunks have similar work.
    chunks = [list(range(k, n, 4 * jobs)) for k in range(4 * jobs)]
    dist, failed = np.zeros((n, n)), np.zeros((n, n), dtype=int)
    tasks = [(angles, rows, R, r) for rows in chunks]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = pool.map(_rows, tasks)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(tasks), desc="torus reference")
        for chunk in results:
            for i, j, length, n_fail in chunk:
                dist[i, j] = dist[j, i] = length
                failed[i, j] = failed[j, i] = n_fail
    return dist, failed


def glycine_angles(n, seed=0):
    """Angles of ``n`` random glycine residues of the built-in set (R=3, r=1)."""
    from implicit_geom.datasets import load_dataset, torus_angles

    data = load_dataset("glycine", n_samples=n, seed=seed)
    phi, theta = torus_angles(data.points, data.meta["R"], data.meta["r"])
    return data, np.stack([phi.numpy(), theta.numpy()], -1)


def load_or_compute(n=200, seed=0, jobs=1, path=None, progress=True):
    """Cached reference for ``n`` glycine residues; recomputed when the points differ."""
    data, angles = glycine_angles(n, seed)
    R, r = data.meta["R"], data.meta["r"]
    path = Path(path) if path is not None else RESULTS / f"torus_reference_{n}_{seed}.npz"
    if path.exists():
        cached = np.load(path)
        if cached["angles"].shape == angles.shape and np.allclose(cached["angles"], angles):
            return data, cached["dist"], cached["failed"]
    dist, failed = distance_matrix(angles, R, r, jobs=jobs, progress=progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, angles=angles, dist=dist, failed=failed)
    return data, dist, failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    _, dist, failed = load_or_compute(args.n, args.seed, args.jobs)
    off = dist[np.triu_indices(args.n, 1)]
    print(f"{off.size} pairs: distance range [{off.min():.4f}, {off.max():.4f}], "
          f"unresolved classes {int(np.triu(failed, 1).sum())}")


if __name__ == "__main__":
    main()
