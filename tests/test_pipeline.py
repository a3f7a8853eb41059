"""The default pipeline shared by the CLI and benchmarks/pipelines.py."""

import numpy as np
import pytest
import torch

from implicit_geom import ImplicitSphere, ImplicitTorus
from implicit_geom.datasets import (Dataset, default_data_dir, load_dataset, sphere_mixture,
                                    vmf_sphere)
from implicit_geom.learning import NeuralImplicitManifold
from implicit_geom.pipeline import (EBM_DEFAULTS, LEARNED_MLE_PRESETS, MLE_DEFAULTS,
                                   build_manifold, ebm_preset, fit_pipeline, mle_preset)


def test_presets_and_scale_of_unknown_data():
    # Catches a preset that leaks between data sets (a shared dict) and a
    # Langevin step that ignores the scale of users' data.
    preset = ebm_preset("two_circles")
    assert preset["chain_init"] == "data" and preset["n_iter"] == EBM_DEFAULTS["n_iter"]
    preset["n_iter"] = 1
    assert ebm_preset("two_circles")["n_iter"] == EBM_DEFAULTS["n_iter"]
    small = ebm_preset("mine", torch.randn(200, 3, dtype=torch.float64))
    large = ebm_preset("mine", 100.0 * torch.randn(200, 3, dtype=torch.float64))
    assert large["step_size"] == pytest.approx(100.0 * small["step_size"], rel=0.2)
    # Users' angles on the analytic torus take glycine's settings, not their spread's.
    assert ebm_preset("dihedrals[residue=P]", large, "torus") == ebm_preset("glycine")


def test_maximum_likelihood_presets():
    # Catches a data set's maximum-likelihood settings that leak into others
    # (a shared dict), that reach the analytic torus (where they made W worse),
    # or that fit_pipeline does not apply on the learned manifold (glycine's
    # lower frequencies, shorter patience and narrower energy).
    assert mle_preset("circle") == MLE_DEFAULTS
    glycine = mle_preset("glycine")
    assert glycine == {**MLE_DEFAULTS, **LEARNED_MLE_PRESETS["glycine"]} != MLE_DEFAULTS
    glycine["patience"] = 99
    assert mle_preset("glycine")["patience"] == LEARNED_MLE_PRESETS["glycine"]["patience"]
    assert mle_preset("glycine", learned=False) == MLE_DEFAULTS
    torus = load_dataset("torus", 60)
    # glycine's stand-in (the built-in set's presets, without the shared data)
    angles = Dataset(torus.points, "glycine", "torus", 3, 2, dict(torus.meta), builtin=True)
    preset = LEARNED_MLE_PRESETS["glycine"]
    # (a 2-epoch MDF does not fit its data: max_distance=None lets the density
    # fit on it anyway; only the presets are checked here)
    learned = fit_pipeline(angles, angles.points, "learned", progress=False, mdf_epochs=2,
                           ebm_iter=2, max_distance=None, mdf_restarts=1)
    assert learned.ebm.energy_net.max_frequency == preset["max_frequency"]
    assert learned.ebm.patience == preset["patience"]
    assert learned.ebm.energy_net.hidden == preset["hidden"]
    analytic = fit_pipeline(angles, angles.points, progress=False, ebm_iter=2)
    assert analytic.kind == "torus"
    assert analytic.ebm.energy_net.max_frequency == MLE_DEFAULTS["max_frequency"]


def test_manifold_choice():
    sphere = load_dataset("sphere_mixture", 50)
    assert isinstance(build_manifold(sphere)[1], ImplicitSphere)
    torus = load_dataset("torus", 50)
    kind, manifold, geometry, _ = build_manifold(torus)
    assert kind == "torus" and isinstance(manifold, ImplicitTorus)
    assert geometry == {"R": torus.meta["R"], "r": torus.meta["r"]}
    kind, manifold, _, notes = build_manifold(sphere, "learned")
    assert kind == "learned" and isinstance(manifold, NeuralImplicitManifold) and not notes
    plain = Dataset(2.0 * sphere_mixture(300) + 1.0, "cloud", "euclidean", 3, None)
    kind, manifold, _, notes = build_manifold(plain)
    assert manifold.codim == 1 and "estimated by local PCA" in notes[0]
    # The note names the parameter to Python callers, the flag on the command line.
    from implicit_geom.cli import _in_cli_terms

    assert "pass intrinsic_dim to set it" in notes[0]
    assert "pass --intrinsic-dim to set it" in _in_cli_terms(notes[0])
    with pytest.raises(ValueError, match="needs 3-D points"):
        build_manifold(load_dataset("circle", 50), "sphere")
    with pytest.raises(ValueError, match="unknown choice='cube'"):
        build_manifold(sphere, "cube")
    noise = Dataset(torch.randn(300, 3, dtype=torch.float64), "noise", "euclidean", 3, None)
    with pytest.raises(ValueError, match="no lower-dimensional structure"):
        build_manifold(noise)
    # --mdf-orient: the orientation settings on a hypersurface, a named error
    # for a curve in 3-D (the orientation term needs codimension 1).
    oriented = build_manifold(plain, mdf_orient=True)[1]
    assert (oriented.mu_orient, oriented.orient_min_contrast) == (10.0, 0.2)
    assert build_manifold(plain)[1].mu_orient == 0.0
    with pytest.raises(ValueError, match="^mdf_orient=True needs a hypersurface"):
        build_manifold(plain, "learned", intrinsic_dim=1, mdf_orient=True)


def test_a_presets_restarts_reach_the_manifold_unless_given():
    # Catches build_manifold overwriting the preset's n_restarts with its own
    # default of 1: glycine's preset (3 oriented fits, one kept unfolded) was
    # then one fit in the CLI and benchmarks/pipelines.py, which folds.
    from implicit_geom.learning.presets import MDF_PRESETS, ORIENTED

    torus = load_dataset("torus", 60)
    # glycine's stand-in (the built-in set's presets, without the shared data)
    angles = Dataset(torus.points, "glycine", "torus", 3, 2, dict(torus.meta), builtin=True)
    preset = MDF_PRESETS["glycine"]
    manifold = build_manifold(angles, "learned")[1]
    assert manifold.n_restarts == preset["n_restarts"] > 1
    assert (manifold.mu_orient, manifold.orient_min_contrast) == \
        (ORIENTED["mu_orient"], ORIENTED["orient_min_contrast"])
    assert build_manifold(angles, "learned", mdf_restarts=1)[1].n_restarts == 1
    # Data sets without restarts in their preset keep the class default.
    circle = build_manifold(load_dataset("circle", 50), "learned")[1]
    assert "n_restarts" not in MDF_PRESETS["circle"] and circle.n_restarts == 1


def test_presets_go_to_built_in_data_sets_only(tmp_path):
    # Catches presets looked up by Dataset.name, which for a file is its stem:
    # a user's glycine.csv of plain points got glycine's three oriented fits
    # of a 64x3 MLP and its maximum-likelihood settings, whatever it held.
    from implicit_geom.learning.presets import MDF_PRESETS

    path = tmp_path / "glycine.csv"
    torus = load_dataset("torus", 60)
    np.savetxt(path, torus.points.numpy(), delimiter=",")
    data = load_dataset(path)
    assert (data.name, data.kind, data.builtin, data.preset_name) == \
        ("glycine", "euclidean", False, None)
    manifold = build_manifold(data, "learned", intrinsic_dim=2)[1]
    generic = NeuralImplicitManifold(3, 1)
    assert (manifold.n_restarts, manifold.mu_orient, manifold.hidden, manifold.epochs) == \
        (1, 0.0, generic.hidden, generic.epochs)
    fitted = fit_pipeline(data, data.points, "learned", intrinsic_dim=2, progress=False,
                          mdf_epochs=2, ebm_iter=2, max_distance=None)
    assert fitted.ebm.energy_net.max_frequency == MLE_DEFAULTS["max_frequency"]
    assert fitted.ebm.energy_net.hidden == EBM_DEFAULTS["hidden"]
    # Built-in sets loaded by name keep theirs.
    assert load_dataset("torus", 10).preset_name == "torus"
    if not (default_data_dir() / "protein" / "dihedrals.csv").is_file():
        pytest.skip("no shared protein data")
    glycine = build_manifold(load_dataset("glycine", 60), "learned")[1]
    assert glycine.n_restarts == MDF_PRESETS["glycine"]["n_restarts"] > 1


def test_fit_pipeline_on_the_sphere_reports_what_it_did():
    data = Dataset(vmf_sphere(200, [0.0, 0.0, 1.0], 5.0), "quakes", "sphere", 3, 2)
    said = []
    fitted = fit_pipeline(data, data.points, progress=False, ebm_iter=3, notify=said.append)
    assert fitted.kind == "sphere" and said == [] and set(fitted.timings) == {"ebm_s"}
    assert len(fitted.ebm.history_["loss"]) == 3


def test_images_are_scored_at_their_closest_points_by_default():
    # Catches `implicit-geom fit digits` refused by the density's default reach
    # of "near M" (5% of the box diagonal): digits lie 0.3 data scales from
    # their learned M, and are seen at their closest points as in the paper,
    # unless max_distance is given.
    digits = load_dataset("digits", 120)
    fitted = fit_pipeline(digits, digits.points, progress=False, mdf_epochs=1, ebm_iter=1)
    assert fitted.ebm.max_distance is None
    given = fit_pipeline(digits, digits.points, progress=False, mdf_epochs=1, ebm_iter=1,
                         max_distance=5.0)
    assert given.ebm.max_distance == 5.0
