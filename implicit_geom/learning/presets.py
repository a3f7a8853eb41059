"""Tuned ``NeuralImplicitManifold`` settings for the built-in data sets.

Shared by the CLI, the tutorials and the benchmarks so that each data set is
learned the same way everywhere (anything not listed: the class defaults).
"""

MDF_PRESETS = {
    "circle": dict(epochs=300),
    # kappa = 2 leaves the far side of each circle nearly empty; the squared
    # norm (with the default compactness term) keeps both curves closed and
    # apart there. (A rank penalty over the whole box would forbid the minima
    # of F inside the circles, i.e. forbid closed curves altogether.)
    "two_circles": dict(epochs=600, norm="l2_squared"),
    "sphere_mixture": dict(epochs=300),
    "flood": dict(epochs=150, batch_size=512),
    "volcano": dict(epochs=150),
    "glycine": dict(epochs=400, hidden=(64, 64, 64)),
}


def mdf_preset(name):
    """Settings for data set ``name`` (a copy; empty for unknown names)."""
    return dict(MDF_PRESETS.get(name, {}))
