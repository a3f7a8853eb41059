"""Figures of implicit_geom.plotting."""

import warnings

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from implicit_geom import plotting  # noqa: E402
from implicit_geom.datasets import sphere_embed  # noqa: E402


def test_globe_draws_without_deprecation_warnings():
    # Catches np.array(tensor) in globe(): numpy's DeprecationWarning (__array__
    # without copy=) under `python -W default -m implicit_geom.cli plot`.
    points = sphere_embed(torch.tensor([10.0, -20.0]), torch.tensor([30.0, 200.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        fig = plotting.globe(lambda x: torch.zeros(len(x), dtype=x.dtype), points,
                             resolution=8, azimuths=(0.0, 180.0))
    assert len(fig.axes) >= 2
    matplotlib.pyplot.close(fig)
