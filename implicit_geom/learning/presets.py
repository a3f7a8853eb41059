"""Tuned ``NeuralImplicitManifold`` settings for the built-in data sets.

Shared by the CLI, the tutorials and the benchmarks so that each data set is
learned the same way everywhere (anything not listed: the class defaults).
"""

MDF_PRESETS = {
    "circle": dict(epochs=300),
    # kappa = 2 leaves the far side of each circle nearly empty; the squared
    # norm and stronger negatives keep the two curves apart there.
    "two_circles": dict(epochs=600, radial=0.0, mu_box=1.0, box_s_min=1.0, w_neg=0.3,
                        norm="l2_squared", lr=2e-2),
    "sphere_mixture": dict(epochs=300),
    "flood": dict(epochs=150, batch_size=512),
    "volcano": dict(epochs=150),
    "glycine": dict(epochs=400, hidden=(64, 64, 64)),
}


def mdf_preset(name):
    """Settings for data set ``name`` (a copy; empty for unknown names)."""
    return dict(MDF_PRESETS.get(name, {}))
