"""Figures: data, learned manifolds, densities and samples (matplotlib, Agg-safe).

Each function draws on a given ``ax`` (or makes a figure) and returns the
figure; :func:`save` writes a PNG atomically. Views by geometry:

- ``euclidean`` (2-D ambient): scatter, the zero set of F as a contour, energy
  heat map;
- ``sphere``: a Mollweide map of longitude/latitude, and a shaded 3-D globe
  (:func:`globe`);
- ``torus``: the (phi, psi) angle plane (a Ramachandran plot for dihedrals);
- anything else: the first three coordinates in 3-D.

:func:`density_heatmap` draws a density over the whole angle chart of the
sphere or the torus, per unit of chart area (steradian, radian squared).
"""

import math

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use(os.environ.get("MPLBACKEND", "Agg"))
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ._io import usual_mode  # noqa: E402
from .datasets import sphere_embed, sphere_latlon, torus_angles, torus_embed  # noqa: E402


def _np(x):
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def new_axes(kind, title=None):
    """A figure with axes suited to ``kind`` (Mollweide for the sphere)."""
    fig = plt.figure(figsize=(7, 4.2) if kind == "sphere" else (5.5, 5))
    if kind == "sphere":
        ax = fig.add_subplot(projection="mollweide")
        ax.grid(True, alpha=0.3)
        ax.set_xticks(np.radians(np.arange(-120, 121, 60)))
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
    if kind == "ambient3d":
        pts = _np(points)
        sc = ax.scatter(pts[:, 0], pts[:, 1], pts[:, 2], s=size, c=color, alpha=alpha,
                        label=label, linewidths=0)
        # Equal scales on the three axes: a learned sphere should look round.
        ax.set_box_aspect(tuple(np.ptp(pts[:, :3], axis=0).clip(min=1e-9)))
    else:
        sc = ax.scatter(u, v, s=size, c=color, alpha=alpha, label=label, linewidths=0)
    _label_axes(ax, kind, meta)
    if kind == "euclidean":
        ax.set_aspect("equal")
    if color is not None and not isinstance(color, str):
        fig.colorbar(sc, ax=ax, shrink=0.7)
    return fig


def _label_axes(ax, kind, meta=None):
    meta = meta or {}
    if kind == "torus":
        names = meta.get("axes") or ["phi", "psi"]
        ax.set_xlim(-np.pi, np.pi)
        ax.set_ylim(-np.pi, np.pi)
        ticks = [-np.pi, -np.pi / 2, 0, np.pi / 2, np.pi]
        ax.set_xticks(ticks, ["-π", "-π/2", "0", "π/2", "π"])
        ax.set_yticks(ticks, ["-π", "-π/2", "0", "π/2", "π"])
        ax.set_xlabel(f"{names[0]} (rad)")
        ax.set_ylabel(f"{names[1]} (rad)")
        ax.set_aspect("equal")
    elif kind == "sphere":
        ax.set_xlabel("longitude")
        ax.set_ylabel("latitude")


def _chart(kind, meta, resolution):
    """Cell edges, cell-centre points on M, and the area of M per unit of chart area."""
    meta = meta or {}
    if kind == "sphere":
        lon = np.linspace(-np.pi, np.pi, 2 * resolution + 1)
        lat = np.linspace(-np.pi / 2, np.pi / 2, resolution + 1)
        lat_c, lon_c = np.meshgrid(0.5 * (lat[1:] + lat[:-1]), 0.5 * (lon[1:] + lon[:-1]),
                                   indexing="ij")
        points = sphere_embed(np.degrees(lat_c), np.degrees(lon_c))
        # The unit sphere's area is in steradians: density per steradian as is.
        return lon, lat, points, np.ones_like(lat_c)
    if kind == "torus":
        R, r = meta.get("R", 3.0), meta.get("r", 1.0)
        edges = np.linspace(-np.pi, np.pi, resolution + 1)
        centres = 0.5 * (edges[1:] + edges[:-1])
        psi_c, phi_c = np.meshgrid(centres, centres, indexing="ij")
        points = torus_embed(phi_c, psi_c, R, r)
        # dA = r (R + r cos psi) dphi dpsi: density per rad^2 of the angles.
        return edges, edges, points, r * (R + r * np.cos(psi_c))
    raise ValueError(f"density_heatmap draws the sphere or the torus, not {kind!r}")


def _colour_norm(values, spread=100.0, decades=3):
    """A linear colour scale, or a logarithmic one over ``decades`` below the maximum
    when the density is sharply peaked (maximum over ``spread`` times the median):
    a linear scale would show such a density as one bright cell on black."""
    from matplotlib.colors import LogNorm, Normalize

    top = float(np.max(values))
    if top > 0 and top > spread * float(np.median(values)):
        return LogNorm(vmin=top * 10.0 ** -decades, vmax=top, clip=True), " (log scale)"
    return Normalize(vmin=0.0, vmax=top if top > 0 else 1.0), ""


def density_heatmap(log_density, kind, meta=None, resolution=120, ax=None, title=None,
                    normalized=True, cmap="viridis"):
    """Density of a model over the angle chart of the sphere or the torus.

    Parameters
    ----------
    log_density : callable
        Points on M ``(B, 3) -> (B,)`` log density w.r.t. the area of M
        (normalised or not).
    kind : {"sphere", "torus"}
        Drawn over longitude/latitude (Mollweide) or the (phi, psi) square.
    meta : dict, optional
        Torus radii ``R``, ``r`` and axis names ``axes``.
    resolution : int
        Cells along the latitude (sphere) or each angle (torus).
    normalized : bool
        Label the colour scale as a density per steradian / rad^2; else the
        values are scaled to a maximum of 1.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if ax is None:
        fig, ax = new_axes(kind, title)
    else:
        fig = ax.figure
    u, v, points, area = _chart(kind, meta, int(resolution))
    with torch.no_grad():
        logp = _np(log_density(points.reshape(-1, points.shape[-1]))).reshape(area.shape)
    values = np.exp(logp) * area if normalized else np.exp(logp - logp.max()) * area
    if not normalized:
        values = values / values.max()
    norm, scale = _colour_norm(values)
    mesh = ax.pcolormesh(u, v, values, cmap=cmap, norm=norm, shading="flat", rasterized=True)
    unit = ("per steradian" if kind == "sphere" else "per rad²") if normalized else "(max 1)"
    fig.colorbar(mesh, ax=ax, shrink=0.7, label=f"density {unit}{scale}")
    _label_axes(ax, kind, meta)
    return fig


def globe(log_density, points=None, resolution=90, title=None, azimuths=(-60, 120),
          cmap="viridis"):
    """A density on the unit sphere as a shaded 3-D globe, seen from two sides.

    Parameters
    ----------
    log_density : callable
        ``(B, 3) -> (B,)`` on the unit sphere.
    points : torch.Tensor, shape (N, 3), optional
        Data drawn on the globe (those on the visible side).
    resolution : int
        Cells along the latitude.
    azimuths : sequence of float
        Viewing longitudes (degrees) of the panels.

    Returns
    -------
    matplotlib.figure.Figure
    """
    lat = np.linspace(-math.pi / 2, math.pi / 2, resolution + 1)
    lon = np.linspace(-math.pi, math.pi, 2 * resolution + 1)
    lat_g, lon_g = np.meshgrid(lat, lon, indexing="ij")
    xyz = sphere_embed(np.degrees(lat_g), np.degrees(lon_g)).numpy()
    mid_lat, mid_lon = 0.5 * (lat[1:] + lat[:-1]), 0.5 * (lon[1:] + lon[:-1])
    c_lat, c_lon = np.meshgrid(mid_lat, mid_lon, indexing="ij")
    centres = sphere_embed(np.degrees(c_lat), np.degrees(c_lon))
    with torch.no_grad():
        logp = _np(log_density(centres.reshape(-1, 3))).reshape(c_lat.shape)
    values = np.exp(logp - logp.max())
    norm, scale = _colour_norm(values)
    colours = plt.get_cmap(cmap)(norm(values))
    fig = plt.figure(figsize=(4.2 * len(azimuths) + 1, 4.5))
    elev = 20.0
    for i, azim in enumerate(azimuths):
        ax = fig.add_subplot(1, len(azimuths), i + 1, projection="3d")
        # Only the near side is drawn on top of the surface (below), so a
        # fixed drawing order is right and depth sorting would only hide it.
        ax.computed_zorder = False
        ax.plot_surface(xyz[..., 0], xyz[..., 1], xyz[..., 2], facecolors=colours,
                        rstride=1, cstride=1, linewidth=0, antialiased=False, shade=False,
                        zorder=1)
        # matplotlib does not hide what lies behind the sphere: draw only the
        # near side of the graticule and of the data.
        view = sphere_embed(elev, azim).numpy()
        for g in range(-60, 61, 30):  # parallels
            line = sphere_embed(np.full(181, g), np.linspace(-180, 180, 181)).numpy() * 1.005
            _front_line(ax, line, view)
        for g in range(-180, 180, 30):  # meridians
            line = sphere_embed(np.linspace(-90, 90, 91), np.full(91, g)).numpy() * 1.005
            _front_line(ax, line, view)
        if points is not None:
            pts = _np(points)
            front = pts @ view > 0.05
            ax.scatter(*(1.01 * pts[front]).T, s=4, c="white", alpha=0.9, linewidths=0,
                       depthshade=False, zorder=3)
        ax.view_init(elev=elev, azim=azim)
        ax.set_box_aspect((1, 1, 1), zoom=1.35)
        ax.set_axis_off()
        ax.set_title(f"seen from longitude {(azim + 180) % 360 - 180:.0f}°", fontsize=9)
    mappable = plt.cm.ScalarMappable(norm=norm, cmap=cmap)
    mappable.set_array(values)
    fig.colorbar(mappable, ax=fig.axes, shrink=0.6, label=f"density (max 1){scale}")
    if title:
        fig.suptitle(title)
    return fig


def _front_line(ax, line, view):
    """Plot the pieces of a polyline on the sphere that face ``view``."""
    visible = line @ view > 0
    start = None
    for j in range(len(line) + 1):
        if j < len(line) and visible[j]:
            start = j if start is None else start
        elif start is not None:
            if j - start > 1:
                ax.plot(*line[start:j].T, color="white", lw=0.4, alpha=0.5, zorder=2)
            start = None


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
        usual_mode(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
        plt.close(fig)
    return path
