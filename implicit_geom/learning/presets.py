"""Tuned ``NeuralImplicitManifold`` settings for the built-in data sets.

Shared by the CLI, the tutorials and the benchmarks so that each data set is
learned the same way everywhere (anything not listed: the class defaults).
"""

MDF_PRESETS = {
    "circle": dict(epochs=300),
    # kappa = 2 leaves the far side of each circle nearly empty, and the side
    # of the data on which F is negative is then settled by chance: channels
    # between the circles, open arcs, an extra hull. Outward normals fix it
    # (two closed curves for each of the benchmark's seeds 0-9). (A rank
    # penalty over the whole box would forbid the minima of F inside the
    # circles, i.e. forbid closed curves.)
    "two_circles": dict(epochs=600, mu_orient=10.0),
    "sphere_mixture": dict(epochs=300),
    "flood": dict(epochs=150, batch_size=512),
    "volcano": dict(epochs=150),
    "glycine": dict(epochs=400, hidden=(64, 64, 64)),
}


def mdf_preset(name):
    """Settings for data set ``name`` (a copy; empty for unknown names)."""
    return dict(MDF_PRESETS.get(name, {}))
