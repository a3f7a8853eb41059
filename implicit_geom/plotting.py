"""Figures: data, learned manifolds, densities and samples (matplotlib, Agg-safe).

Each function draws on a given ``ax`` (or makes a figure) and returns the
figure; :func:`save` writes a PNG atomically. Views by geometry:

- ``euclidean`` (2-D ambient): scatter, the zero set of F as a contour, energy
  heat map;
- ``sphere``: a Mollweide map of longitude/latitude (the globe view);
- ``torus``: the (phi, psi) angle plane;
- anything else: the first three coordinates in 3-D.
"""

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .datasets import sphere_latlon, torus_angles  # noqa: E402


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def new_axes(kind, title=None):
    """A figure with axes suited to ``kind`` (Mollweide for the sphere)."""
    fig = plt.figure(figsize=(7, 4.2) if kind == "sphere" else (5.5, 5))
    if kind == "sphere":
        ax = fig.add_subplot(projection="mollweide")
        ax.grid(True, alpha=0.3)
    elif kind == "ambient3d":
        ax = fig.add_subplot(projection="3d")
    else:
        ax = fig.add_subplot()
    if title:
        ax.set_title(title)
    return fig, ax


def _coords(points, kind, meta=None):
    """2-D plotting coordinates of points for the given geometry."""
    meta = meta or {}
    if kind == "sphere":
        lat, lon = sphere_latlon(torch.as_tensor(points, dtype=torch.float64))
        return np.radians(_np(lon)), np.radians(_np(lat))
    if kind == "torus":
        phi, psi = torus_angles(torch.as_tensor(points, dtype=torch.float64),
                                meta.get("R", 3.0), meta.get("r", 1.0))
        return _np(phi), _np(psi)
    pts = _np(points)
    return pts[:, 0], pts[:, 1]


def scatter(points, kind, ax=None, meta=None, color=None, label=None, size=3, alpha=0.6,
            title=None):
    """Scatter ``points`` in the view of ``kind``; returns the figure."""
    if ax is None:
        fig, ax = new_axes(kind, title)
    else:
        fig = ax.figure
    u, v = _coords(points, kind, meta)
    sc = ax.scatter(u, v, s=size, c=color, alpha=alpha, label=label, linewidths=0)
    if kind == "torus":
        ax.set_xlim(-np.pi, np.pi)
        ax.set_ylim(-np.pi, np.pi)
        ax.set_xlabel("phi")
        ax.set_ylabel("psi")
    elif kind == "euclidean":
        ax.set_aspect("equal")
    if color is not None and not isinstance(color, str):
        fig.colorbar(sc, ax=ax, shrink=0.7)
    return fig


def zero_set_2d(manifold, bounds, ax, resolution=300, color="k"):
    """Contour ``F = 0`` of a manifold in a 2-D ambient space (first component)."""
    (x0, y0), (x1, y1) = bounds
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = torch.as_tensor(np.stack([gx, gy], -1), dtype=torch.float64)
    values = _np(manifold.submersion(grid.reshape(-1, 2)))[:, 0].reshape(gx.shape)
    ax.contour(gx, gy, values, levels=[0.0], colors=color, linewidths=1.2)
    return ax.figure


def energy_heatmap_2d(energy, bounds, ax, resolution=200, cmap="magma"):
    """Unnormalised density ``exp(-E)`` on a 2-D grid (ambient view)."""
    (x0, y0), (x1, y1) = bounds
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = torch.as_tensor(np.stack([gx, gy], -1).reshape(-1, 2), dtype=torch.float64)
    with torch.no_grad():
        e = _np(energy(grid)).reshape(gx.shape)
    dens = np.exp(-(e - e.min()))
    ax.imshow(dens, origin="lower", extent=(x0, x1, y0, y1), cmap=cmap, alpha=0.8)
    return ax.figure


def density_map(points, values, kind, meta=None, title=None):
    """Points coloured by a per-point value (e.g. model density)."""
    return scatter(points, kind, meta=meta, color=_np(values), size=6, alpha=0.9, title=title)


def training_curves(histories, title="training"):
    """Plot per-epoch losses: ``histories`` maps a name to a dict of lists."""
    fig, axes = plt.subplots(1, len(histories), figsize=(5 * len(histories), 3.5),
                             squeeze=False)
    for ax, (name, hist) in zip(axes[0], histories.items()):
        for key, values in hist.items():
            if len(values) and np.isscalar(values[0]):
                ax.plot(values, label=key)
        ax.set_title(f"{title}: {name}")
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def image_grid(images, shape, n_cols=10, title=None):
    """Show flat images (N, H*W) in a grid."""
    imgs = _np(images).reshape(-1, *shape)
    n_rows = int(np.ceil(len(imgs) / n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols, n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, img in zip(axes.ravel(), imgs):
        ax.imshow(img, cmap="gray_r", vmin=0, vmax=max(1.0, float(imgs.max())))
    if title:
        fig.suptitle(title)
    return fig


def save(fig, path):
    """Write ``fig`` as PNG atomically (temp file, then rename) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path
