"""The implicit-geom command line: fit/sample/evaluate/plot, errors, atomic folders."""

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from implicit_geom.cli import main
from implicit_geom.datasets import default_data_dir

FAST = ["--no-progress", "--n-eval", "200", "--ebm-iter", "30"]


@pytest.fixture(scope="module")
def learned_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "circles"
    code = main(["fit", "two_circles", "--out", str(out), "--n-samples", "400",
                 "--mdf-epochs", "30", *FAST])
    assert code == 0
    return out


def test_fit_writes_a_complete_model_folder(learned_model):
    names = {p.name for p in learned_model.iterdir()}
    assert {"config.json", "manifold", "ebm.pt", "test.npy", "samples.npy", "history.json",
            "metrics.json"} <= names
    history = json.loads((learned_model / "history.json").read_text())
    assert len(history["EBM"]["loss"]) == 30 and len(history["manifold"]["loss"]) == 30
    metrics = json.loads((learned_model / "metrics.json").read_text())
    assert metrics["max_abs_F_samples"] <= 1e-9
    assert metrics["W_samples"] >= 0 and metrics["test_dist_median"] >= 0
    # The evaluation module's protocols: the model's masses and its raw density.
    assert 0 <= metrics["W_ours"] <= 1 and 0 <= metrics["W_reference"] <= 1
    assert math.isfinite(metrics["test_nll"]) and metrics["log_z_error"] < 0.01
    config = json.loads((learned_model / "config.json").read_text())
    assert config["manifold"] == "learned" and config["n_test"] == 80


def test_sample_evaluate_plot(learned_model, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["sample", str(learned_model), "--n", "50", "--out", str(out),
                 "--no-progress"]) == 0
    # Written under a temporary name, published with the usual permissions
    # (not mkstemp's private 0600), like the model folder itself (not 0700).
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask
    assert learned_model.stat().st_mode & 0o777 == 0o777 & ~mask
    pts = np.loadtxt(out, delimiter=",", skiprows=1)
    assert pts.shape == (50, 2)
    capsys.readouterr()
    assert main(["evaluate", str(learned_model), "--n-eval", "100"]) == 0
    assert "test_dist_median" in json.loads(capsys.readouterr().out)
    assert main(["plot", str(learned_model), "--out", str(tmp_path / "fig"), "--n", "100"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == ["data.png", "density.png", "manifold.png", "samples.png", "training.png"]
    assert all((tmp_path / "fig" / p).stat().st_size > 5000 for p in pngs)
    assert (tmp_path / "fig" / "data.png").stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.skipif(not (default_data_dir() / "earth" / "volcano.csv").exists(),
                    reason="shared data not present")
def test_volcano_on_the_sphere_with_globe_plot(tmp_path):
    out = tmp_path / "volcano"
    assert main(["fit", str(default_data_dir() / "earth" / "volcano.csv"), "--out", str(out),
                 *FAST]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["manifold"] == "sphere"
    assert "test_nll" in json.loads((out / "metrics.json").read_text())
    assert main(["plot", str(out), "--n", "200"]) == 0
    assert (out / "figures" / "samples.png").stat().st_size > 5000


def test_errors_are_one_line_and_leave_nothing_behind(tmp_path, capsys):
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("a,b\n1,2\nx,3\n")
    out = tmp_path / "model"
    assert main(["fit", str(bad_csv), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("implicit-geom: error:") and "\n" not in err and "row" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad_csv]
    assert main(["fit", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["fit", "two_circles", "--out", str(out), "--manifold", "cube"]) == 2
    assert "unknown --manifold" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a model folder" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fit"])  # argparse usage error


def test_existing_folder_needs_overwrite(learned_model, capsys):
    assert main(["fit", "two_circles", "--out", str(learned_model), *FAST]) == 2
    assert "already exists" in capsys.readouterr().err
    assert Path(learned_model, "config.json").exists()


# ------------------------------------------------------- users' own files
def _png_names(folder):
    return sorted(p.name for p in Path(folder).glob("*.png"))


def test_headerless_latlon_file_fit_evaluate_plot(tmp_path, capsys):
    # A '#' comment, then bare "lat,lon" rows: read as the sphere (and said
    # so), evaluated with the reading it was fitted with, drawn as a globe.
    from implicit_geom.datasets import sphere_latlon, vmf_sphere

    lat, lon = sphere_latlon(vmf_sphere(300, [1.0, 1.0, 0.5], 8.0, seed=0))
    path = tmp_path / "quakes.csv"
    path.write_text("# source: a test\n" + "".join(f"{a:.4f},{o:.4f}\n" for a, o in zip(lat, lon)))
    out = tmp_path / "model"
    assert main(["fit", str(path), "--out", str(out), *FAST]) == 0
    printed = capsys.readouterr().out
    assert "as latitude, longitude in degrees" in printed and "no header" in printed
    assert "(pass --coords xyz to read plain 2-D points)" in printed  # the flag, not coords=
    config = json.loads((out / "config.json").read_text())
    assert config["manifold"] == "sphere" and config["n_train"] + config["n_test"] == 300
    assert main(["evaluate", str(out), "--data", str(path), "--n-eval", "100"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["test_nll"] > 0
    assert main(["plot", str(out), "--n", "100"]) == 0
    assert _png_names(out / "figures") == ["data.png", "density.png", "globe.png", "samples.png",
                                           "training.png"]


def test_dihedral_csv_filtered_to_one_residue_reaches_the_torus(tmp_path, capsys):
    rng = np.random.default_rng(0)
    rows = [f"{res},{rng.vonmises(-1.2, 4):.3f},{rng.vonmises(2.5, 4):.3f}"
            for res in ["G", "P"] * 150]
    path = tmp_path / "dihedrals.csv"
    path.write_text("# phi, psi in radians\nresidue,phi,psi\n" + "\n".join(rows) + "\n")
    out = tmp_path / "model"
    assert main(["fit", str(path), "--where", "residue=P", "--out", str(out), *FAST]) == 0
    assert "150 rows" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert config["manifold"] == "torus" and config["n_train"] + config["n_test"] == 150
    assert config["meta"]["axes"] == ["phi", "psi"]
    assert main(["plot", str(out), "--n", "100"]) == 0
    assert "density.png" in _png_names(out / "figures")
    # Catches `evaluate --data` of a file without the model's columns failing
    # with "no column 'residue'" when no --where was given: the inherited
    # reading options are named.
    other = tmp_path / "samples.csv"
    other.write_text("x0,x1,x2\n3.5,0.5,0.8\n-2.5,1.0,0.9\n")
    capsys.readouterr()
    assert main(["evaluate", str(out), "--data", str(other), "--n-eval", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert "no column 'residue'" in err and "with --where residue=P;" in err and "\n" not in err


def test_evaluate_data_inherits_the_models_reading_only_when_unambiguous(tmp_path, capsys):
    # Catches evaluate --data reading a new file with the model's --coords
    # angles --degrees silently: a file of radians (which reads as angles on
    # its own too) was taken as degrees. Either reading alone is used and
    # said; both, differently, is refused.
    rng = np.random.default_rng(1)
    phi, psi = rng.vonmises(-1.2, 4, 200), rng.vonmises(2.5, 4, 200)
    degrees = tmp_path / "deg.csv"
    degrees.write_text("phi,psi\n" + "".join(f"{a:.3f},{b:.3f}\n" for a, b in
                                                zip(np.degrees(phi), np.degrees(psi))))
    radians = tmp_path / "rad.csv"
    radians.write_text("phi,psi\n" + "".join(f"{a:.4f},{b:.4f}\n" for a, b in zip(phi, psi)))
    out = tmp_path / "model"
    assert main(["fit", str(degrees), "--coords", "angles", "--degrees", "--out", str(out),
                 *FAST]) == 0
    capsys.readouterr()
    ev = ["evaluate", str(out), "--n-eval", "20", "--no-progress"]
    # The model's layout: read like its data (on its own, degrees are out of range), said.
    assert main([*ev, "--data", str(degrees)]) == 0
    said = capsys.readouterr().out
    assert "--data is read like the model's data, with --coords angles --degrees" in said
    assert "as angles in degrees" in said
    # Radians read both ways, differently: refused, naming the options.
    assert main([*ev, "--data", str(radians)]) == 2
    err = capsys.readouterr().err.strip()
    assert "reads one way with the model's reading options (--coords angles --degrees) and " \
           "another on its own" in err and "--coords auto" in err and "\n" not in err
    # A typed --coords auto reads it on its own.
    assert main([*ev, "--data", str(radians), "--coords", "auto"]) == 0
    said = capsys.readouterr().out
    assert "as angles in radians" in said and "like the model's data" not in said
    # A built-in data set takes none of the model's file options (it was refused:
    # "--coords, ... read data files", options never typed).
    # The built-in torus (R=2) lies up to 1 from this model's (R=3): refused as
    # far from M (it was scored at its projections), until --max-distance none.
    assert main([*ev, "--data", "torus", "--n-samples", "50"]) == 2
    assert "held-out points lie farther than --max-distance" in capsys.readouterr().err
    assert main([*ev, "--data", "torus", "--n-samples", "50", "--max-distance", "none"]) == 0


def test_plain_xyz_file_learns_a_surface_of_estimated_dimension(tmp_path, capsys):
    from implicit_geom.datasets import sphere_mixture

    path = tmp_path / "cloud.xyz"
    np.savetxt(path, (2.0 * sphere_mixture(300, seed=0) + 1.0).numpy())
    out = tmp_path / "model"
    fit = ["fit", str(path), "--out", str(out), "--mdf-epochs", "3", "--no-progress",
           "--n-eval", "100", "--ebm-iter", "5", "--mdf-restarts", "2",
           "--mdf-jobs", "2", "--mdf-orient", "--mdf-selection", "conditioning"]
    # Three epochs learn no surface through the data: the density refuses to
    # see them at their far "closest points" (catches the old silent fit on
    # projections up to 0.96 away), naming the option, leaving no folder.
    assert main(fit) == 2
    err = capsys.readouterr().err
    assert "training points lie farther than --max-distance 0.396" in err
    assert "Set --max-distance None" in err and not out.exists()  # (any case)
    assert main([*fit, "--max-distance", "none"]) == 0
    printed = capsys.readouterr().out
    assert "plain 3-D points" in printed and "intrinsic dimension 2, estimated" in printed
    assert json.loads((out / "config.json").read_text())["manifold"] == "learned"
    # --mdf-restarts reaches the estimator (and its checkpoint).
    from implicit_geom.learning import NeuralImplicitManifold

    saved = NeuralImplicitManifold.load(out / "manifold")
    assert saved.n_restarts == 2 and saved.get_config()["n_restarts"] == 2
    assert saved.n_jobs == 2  # and so does --mdf-jobs
    assert saved.restart_selection == "conditioning"  # and --mdf-selection
    # So does --mdf-orient (the orientation settings of learning.presets.ORIENTED).
    assert (saved.mu_orient, saved.orient_min_contrast) == (10.0, 0.2)
    assert main(["plot", str(out), "--n", "50"]) == 0
    assert _png_names(out / "figures") == ["data.png", "density.png", "samples.png",
                                           "training.png"]


@pytest.mark.parametrize("extra, message", [
    ([], "is not numeric; pick the coordinate columns with --columns"),
    (["--where", "residue=Z"], "no rows with 'residue' = 'Z'; its values: G"),
    (["--coords", "angles", "--columns", "phi"], "needs 2 columns"),
    # Catches --degrees with --coords xyz answered about latitude/longitude:
    # it says how the file is read and what to do.
    (["--coords", "xyz", "--degrees"], "read as plain coordinates (--coords xyz), which have "
                                       "no unit: drop --degrees"),
])
def test_file_reading_errors_are_one_line(tmp_path, capsys, extra, message):
    path = tmp_path / "d.csv"
    path.write_text("G,-1.4,2.9\nG,1.5,0.3\n" if not extra else "residue,phi,psi\nG,-1,2\nG,1,0\n")
    out = tmp_path / "model"
    assert main(["fit", str(path), "--out", str(out), *extra, *FAST]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("implicit-geom: error:") and "\n" not in err and message in err
    assert not out.exists()


def test_threads_option_sets_torch_threads(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        # An error after parsing still runs under the requested thread count.
        assert main(["evaluate", str(tmp_path), "--threads", "2"]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path), "--threads", "0"])
    for bad in ("0", "-2", "x"):  # --mdf-jobs: a positive count or -1
        with pytest.raises(SystemExit):
            main(["fit", "glycine", "--out", str(tmp_path / "m"), "--mdf-jobs", bad])
    assert "got '-2'" in capsys.readouterr().err


def test_demo_runs_end_to_end(tmp_path, capsys):
    # The README's main job through its own command (tiny settings): catches
    # a demo path that breaks while fit and plot alone still work.
    out = tmp_path / "demo"
    # (--max-distance none: three epochs learn circles the data are far from)
    assert main(["demo", "--quick", "--out", str(out), "--n-samples", "300", "--mdf-epochs", "3",
                 "--ebm-iter", "3", "--n-eval", "100", "--no-progress",
                 "--max-distance", "none"]) == 0
    assert "manifold.png" in _png_names(out / "figures")
    assert json.loads((out / "config.json").read_text())["data_name"] == "two_circles"


@pytest.mark.parametrize("option", [["--manifold", "sphere"], ["--intrinsic-dim", "1"]])
def test_demo_refuses_options_it_cannot_honour(tmp_path, capsys, option):
    # Catches demo listing --manifold and --intrinsic-dim in its --help and
    # then silently running the learned two circles whatever they said.
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--out", str(tmp_path / "demo"), *option])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_overwrite_replaces_only_model_folders(tmp_path, capsys):
    # Catches --overwrite (which demo always sets) deleting whatever --out
    # names: a folder of the user's files was renamed away and removed, a
    # data file replaced by a model folder (and left behind as a hidden
    # .NAME.old-PID file).
    tiny = ["--n-samples", "100", "--mdf-epochs", "2", "--ebm-iter", "2", "--n-eval", "50",
            "--no-progress"]
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    for target in (folder, data):
        assert main(["fit", "two_circles", "--out", str(target), "--overwrite", *tiny]) == 2
        err = capsys.readouterr().err
        assert "is not a model folder" in err and "\n" not in err.strip()
    assert (folder / "notes.txt").read_text() == "keep me\n"
    assert data.read_text() == "x,y\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "mine"]


@pytest.mark.parametrize("config, message", [
    ({"format": "implicit_geom.model/1"}, "no 'manifold'"),
    ([1, 2], "not a JSON object"),
    ({"format": "implicit_geom.model/1", "manifold": "torus", "data_kind": "torus",
      "data_name": "t", "geometry": {}}, "bad 'geometry'"),
    ({"format": "implicit_geom.model/1", "manifold": "cube", "data_kind": "x",
      "data_name": "t"}, "unknown manifold"),
    ({"format": "implicit_geom.model/1", "manifold": "sphere", "data_kind": "sphere",
      "data_name": "t", "samples": 5}, "'samples' is not a JSON object"),
])
def test_corrupt_config_is_one_line(tmp_path, capsys, config, message):
    # Catches a config.json that parses but lacks what load_model reads
    # (KeyError / AttributeError tracebacks instead of a one-line error).
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["evaluate", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("implicit-geom: error:") and message in err and "\n" not in err


def test_sample_checks_the_output_suffix_before_sampling(tmp_path, capsys):
    # Catches a bad --out suffix being reported only after the (possibly
    # long) sampling: it is checked first, even before the model is read.
    assert main(["sample", str(tmp_path / "no_model"), "--out", str(tmp_path / "s.txt")]) == 2
    assert "--out must end in .csv or .npy" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    ["fit", "two_circles", "--n-eval", "0"], ["fit", "two_circles", "--ebm-iter", "-1"],
    ["fit", "two_circles", "--mdf-epochs", "0"], ["fit", "two_circles", "--n-samples", "0"],
    ["fit", "two_circles", "--intrinsic-dim", "0"], ["fit", "two_circles", "--mdf-restarts", "0"],
    ["sample", "M", "--out", "s.csv", "--n", "0"], ["plot", "M", "--n", "-3"],
    ["evaluate", "M", "--n-eval", "0"],
])
def test_counts_are_checked_when_parsed(tmp_path, capsys, argv):
    # Catches counts <= 0 reaching the pipeline: `fit --n-eval 0` trained in
    # full, then failed with "both point sets must be non-empty", naming no
    # option; --intrinsic-dim 0 was reported as "codim=3".
    argv = [str(tmp_path / a) if a in ("M", "s.csv") else a for a in argv]
    if argv[0] == "fit":
        argv += ["--out", str(tmp_path / "model"), "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "expected a positive integer" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


@pytest.mark.parametrize("value", ["-1", str(2 ** 70), "1.5", "x"])
def test_seed_is_checked_when_parsed(tmp_path, capsys, value):
    # Catches --seed -1 failing in numpy ("expected non-negative integer") and
    # 2**70 in torch ("Overflow when unpacking long long"), naming no option.
    with pytest.raises(SystemExit) as exc:
        main(["fit", "two_circles", "--out", str(tmp_path / "model"), "--seed", value])
    assert exc.value.code == 2
    assert "argument --seed: expected an integer in [0, 2**63)" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_evaluate_needs_two_points(learned_model, capsys):
    # Catches `evaluate --data two_circles --n-samples 1` failing in the
    # metrics with "x is empty (shape (0, 2))".
    assert main(["evaluate", str(learned_model), "--data", "two_circles", "--n-samples", "1",
                 "--n-eval", "10", "--no-progress"]) == 2
    assert ("--data two_circles gives 1 point (--n-samples 1): evaluate needs at least 2"
            in capsys.readouterr().err)
    one = learned_model.parent / "one.csv"
    one.write_text("1.0,0.5\n")
    assert main(["evaluate", str(learned_model), "--data", str(one), "--n-eval", "10",
                 "--no-progress"]) == 2
    assert f"--data {one} gives 1 point: evaluate needs at least 2" in capsys.readouterr().err


def test_fit_refuses_one_point_naming_the_file(tmp_path, capsys, monkeypatch):
    # Catches `fit` on a one-row file failing with train_test_split's "need at
    # least 2 points to split, got 1", naming neither the file nor what it needs.
    from implicit_geom import cli

    def trained(*args, **kwargs):
        raise AssertionError("trained on one point")

    monkeypatch.setattr(cli, "fit_pipeline", trained)
    one = tmp_path / "one.csv"
    one.write_text("1.0,2.0,3.0\n")
    out = tmp_path / "a" / "b" / "model"
    assert main(["fit", str(one), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{one} gives 1 point: fit needs at least 2, points to train on and held-out" in err
    assert "to split" not in err and not (tmp_path / "a").exists()
    assert main(["fit", "two_circles", "--n-samples", "1", "--out", str(out)]) == 2
    assert "two_circles gives 1 point (--n-samples 1): fit needs at least 2" in \
        capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_a_file_named_like_a_built_in_set_gets_no_preset(tmp_path, capsys, monkeypatch):
    # Catches presets looked up by the data's name, which for a file is its
    # stem: any glycine.csv got glycine's three fits (and --mdf-selection was
    # accepted for them), whatever it held.
    from implicit_geom import cli

    seen = {}

    def trained(data, *args, **kwargs):
        seen["data"] = data
        raise cli.CLIError("trained")

    monkeypatch.setattr(cli, "fit_pipeline", trained)
    path = tmp_path / "glycine.csv"
    rng = np.random.default_rng(0)
    np.savetxt(path, rng.normal(size=(40, 3)), delimiter=",")
    argv = ["fit", str(path), "--out", str(tmp_path / "m"), "--no-progress"]
    assert main([*argv, "--mdf-selection", "conditioning"]) == 2
    assert "on several restarts" in capsys.readouterr().err and not seen
    assert main(argv) == 2 and "trained" in capsys.readouterr().err
    assert seen["data"].name == "glycine" and seen["data"].preset_name is None
    if not (default_data_dir() / "protein" / "dihedrals.csv").is_file():
        pytest.skip("no shared protein data")
    # The built-in set keeps its preset: several restarts, so the option is taken.
    assert main(["fit", "glycine", "--manifold", "learned", "--out", str(tmp_path / "m"),
                 "--mdf-selection", "conditioning", "--no-progress"]) == 2
    assert "trained" in capsys.readouterr().err and seen["data"].preset_name == "glycine"


def test_evaluate_refuses_data_of_another_dimension(learned_model, capsys):
    # Guards the one dimension check of evaluate --data (_evaluation_data's):
    # 3-D points against the 2-D model are refused, naming both dimensions.
    assert main(["evaluate", str(learned_model), "--data", "torus", "--n-samples", "20",
                 "--n-eval", "10", "--no-progress"]) == 2
    assert "--data has 3-D points, the model 2-D ones" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1", "2", "-0.1", "nan", "x"])
def test_test_fraction_is_checked_when_parsed(tmp_path, capsys, value):
    # Catches --test-fraction out of (0, 1) failing after the data were read,
    # with "test_fraction must be in (0, 1)", which names no option.
    with pytest.raises(SystemExit) as exc:
        main(["fit", "two_circles", "--out", str(tmp_path / "model"), "--test-fraction", value])
    assert exc.value.code == 2
    assert "argument --test-fraction: expected a number in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()


def test_missing_or_corrupt_arrays_name_the_file(learned_model, tmp_path, capsys):
    # Catches numpy's messages ("EOF: reading array header...", "[Errno 2]...",
    # "contains pickled (object) data") that did not say which file of the
    # model folder is broken.
    import shutil

    model = tmp_path / "model"
    shutil.copytree(learned_model, model)
    (model / "test.npy").write_bytes((learned_model / "test.npy").read_bytes()[:100])
    assert main(["evaluate", str(model), "--n-eval", "20", "--no-progress"]) == 2
    assert "test.npy is corrupt or unreadable" in capsys.readouterr().err
    (model / "test.npy").unlink()
    assert main(["evaluate", str(model), "--n-eval", "20", "--no-progress"]) == 2
    assert "test.npy is missing" in capsys.readouterr().err
    shutil.copy(learned_model / "test.npy", model / "test.npy")
    (model / "samples.npy").write_text("junk\n")
    n = str(json.loads((model / "config.json").read_text())["samples"]["n"])
    assert main(["plot", str(model), "--n", n, "--out", str(tmp_path / "fig")]) == 2
    assert "samples.npy is corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, command, message", [
    ("test.npy", np.ones((4, 3)), "evaluate", "test.npy is corrupt: expected 2-D points"),
    ("test.npy", np.ones((4, 3)), "plot", "test.npy is corrupt: expected 2-D points"),
    ("test.npy", np.full((4, 2), np.nan), "evaluate", "test.npy is corrupt: it has NaN"),
    ("samples.npy", np.ones((4, 3)), "plot", "samples.npy is corrupt: expected 2-D points"),
    ("history.json", "{junk", "plot", "history.json is corrupt: Expecting property name"),
    ("history.json", "[1]", "plot", "history.json is corrupt: not a JSON object"),
    ("history.json", '{"EBM": {"loss": 3}}', "plot", "history.json is corrupt: not a JSON"),
])
def test_corrupt_model_files_are_one_line(learned_model, tmp_path, capsys, name, content,
                                          command, message):
    # Catches a model folder's arrays of the wrong dimension or with NaN, and a
    # broken history.json, ending in tracebacks (RuntimeError from torch,
    # AttributeError) or in errors naming no file.
    import shutil

    model = tmp_path / "model"
    shutil.copytree(learned_model, model)
    if isinstance(content, str):
        (model / name).write_text(content)
    else:
        np.save(model / name, content)
    n = str(json.loads((model / "config.json").read_text())["samples"]["n"])
    argv = ([command, str(model), "--n", n, "--out", str(tmp_path / "fig")] if command == "plot"
            else [command, str(model), "--n-eval", "10"])
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("implicit-geom: error:") and message in err and "\n" not in err


def test_failed_plot_writes_no_figure(learned_model, tmp_path, capsys, monkeypatch):
    # Catches plot writing its figures one by one into --out: a failure at the
    # last (the training curves) left new data/samples/density figures beside
    # old ones, and the folders it created.
    from implicit_geom import plotting

    def broken(*args, **kwargs):
        raise OSError("cannot draw")

    monkeypatch.setattr(plotting, "training_curves", broken)
    n = str(json.loads((learned_model / "config.json").read_text())["samples"]["n"])
    out = tmp_path / "a" / "figs"
    assert main(["plot", str(learned_model), "--n", n, "--out", str(out), "--no-progress"]) == 2
    assert "cannot draw" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "data.png").write_bytes(b"old")
    assert main(["plot", str(learned_model), "--n", n, "--out", str(tmp_path / "old"),
                 "--no-progress"]) == 2
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["data.png"]
    assert (tmp_path / "old" / "data.png").read_bytes() == b"old"


def test_library_advice_names_the_cli_flags(tmp_path, capsys, monkeypatch):
    # Catches the learning code's ConditioningWarning telling a CLI user to
    # "refit with n_restarts=3" (the flag is --mdf-restarts) and errors naming
    # load_dataset's parameters; the library keeps its own names.
    from implicit_geom import ConditioningWarning, cli
    from implicit_geom.learning import NeuralImplicitManifold

    def folded_fit(*args, **kwargs):
        model = NeuralImplicitManifold(2)
        model.conditioning_ = 0.0  # what fit scored: a fold
        model._warn_if_folded()
        raise cli.CLIError("stop")

    monkeypatch.setattr(cli, "fit_pipeline", folded_fit)
    with pytest.warns(ConditioningWarning) as record:
        assert main(["fit", "two_circles", "--out", str(tmp_path / "m"), "--n-samples", "50",
                     "--no-progress"]) == 2
    message = str(record[0].message)
    assert "refit with --mdf-restarts 3" in message and "another --seed" in message
    assert "n_restarts" not in message
    path = tmp_path / "pts.csv"
    path.write_text("x,y\n1,2\n3,4\n5,1\n")
    assert main(["fit", str(path), "--n-samples", "10", "--out", str(tmp_path / "m")]) == 2
    assert "--n-samples 10 exceeds the 3 points" in capsys.readouterr().err
    assert main(["fit", "two_circles", "--degrees", "--out", str(tmp_path / "m")]) == 2
    assert "--coords, --columns, --where and --degrees read data files" in \
        capsys.readouterr().err
    # Settings without a flag are said to be the Python API's, not left as advice to follow.
    from implicit_geom import NormalizationError

    err = NormalizationError("the density rises ...; raise {quadrature_resolution}",
                             params=("quadrature_resolution",))
    assert str(err) == "the density rises ...; raise quadrature_resolution"
    said = cli._in_cli_terms(err)
    assert said.endswith("raise quadrature_resolution (quadrature_resolution is a setting of "
                         "the Python API; implicit-geom has no option for it)")
    # Catches a parameter counted as named where the template has it only as
    # literal text in doubled braces (an escaped path): the note said
    # "quadrature_resolution is a setting of the Python API" of a message
    # that names no such setting.
    err = NormalizationError("cannot write '/tmp/{{quadrature_resolution}}.npz'; "
                             "another {seed}", params=("seed", "quadrature_resolution"))
    assert cli._in_cli_terms(err) == \
        "cannot write '/tmp/{quadrature_resolution}.npz'; another --seed"
    # Text alone is never rewritten: only the parameters an error lists are named.
    assert cli._in_cli_terms(ValueError("n_samples=3 or another seed")) == \
        "n_samples=3 or another seed"
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("argv, kwargs, python, cli_text", [
    # load_dataset's file options on a built-in data set
    (["two_circles", "--degrees"], {"degrees": True},
     "coords, columns, where and degrees read data files",
     "--coords, --columns, --where and --degrees read data files"),
    # --degrees on plain coordinates
    (["PTS", "--coords", "xyz", "--degrees"], {"coords": "xyz", "degrees": True},
     "degrees=True applies to angles (coords='angles')",
     "--degrees applies to angles (--coords angles)"),
    # a non-numeric column read as coordinates
    (["MIXED"], {}, "pick the coordinate columns with columns (and rows with "
     "where='COL=VALUE'), or say how to read them with coords",
     "pick the coordinate columns with --columns (and rows with --where COL=VALUE), or say "
     "how to read them with --coords"),
    (["PTS", "--coords", "angles", "--columns", "x"], {"coords": "angles", "columns": "x"},
     "coords='angles' needs 2 columns", "--coords angles needs 2 columns"),
    (["PTS", "--n-samples", "10"], {"n_samples": 10}, "n_samples=10 exceeds the 3 points",
     "--n-samples 10 exceeds the 3 points"),
])
def test_messages_name_parameters_in_python_and_flags_in_the_cli(tmp_path, capsys, argv, kwargs,
                                                                 python, cli_text):
    # Catches load_dataset's messages naming CLI flags (--columns, --degrees)
    # to Python callers, and the CLI naming Python parameters: the error lists
    # its parameters (params) and each caller names them its own way.
    from implicit_geom import ImplicitGeomError
    from implicit_geom.datasets import load_dataset

    files = {"PTS": "x,y\n1,2\n3,4\n5,1\n", "MIXED": "a,b\nG,2\nP,3\n"}
    for name, text in files.items():
        (tmp_path / f"{name}.csv").write_text(text)
    argv = [str(tmp_path / f"{a}.csv") if a in files else a for a in argv]
    with pytest.raises(ImplicitGeomError) as err:
        load_dataset(argv[0], **kwargs)
    assert python in str(err.value) and "--" not in str(err.value) and err.value.params
    assert main(["fit", *argv, "--out", str(tmp_path / "m"), "--no-progress"]) == 2
    said = capsys.readouterr().err
    assert cli_text in said and "\n" not in said.strip() and python not in said
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("option", [["--mdf-restarts", "1"], ["--mdf-epochs", "5"],
                                    ["--mdf-orient"], ["--mdf-jobs", "2"],
                                    ["--mdf-selection", "conditioning"],
                                    ["--intrinsic-dim", "1"]])
def test_fit_refuses_learned_options_where_nothing_is_learned(tmp_path, capsys, option):
    # Catches fit on angle data (the analytic torus, no MDF) ignoring the
    # --mdf-* options (and --intrinsic-dim) silently; refused before training.
    path = tmp_path / "angles.csv"
    path.write_text("phi,psi\n" + "".join(f"{a},{-a}\n" for a in range(-90, 90, 9)))
    out = tmp_path / "model"
    assert main(["fit", str(path), "--degrees", "--out", str(out), *option]) == 2
    err = capsys.readouterr().err
    assert f"{option[0]} sets the fit of a learned manifold, but nothing is learned" in err
    assert "analytic torus" in err and "--manifold learned" in err
    assert not out.exists()


@pytest.mark.parametrize("option, restarts", [
    (["--mdf-selection", "conditioning"], []), (["--mdf-jobs", "2"], ["--mdf-restarts", "1"]),
    (["--mdf-jobs", "-1", "--mdf-selection", "agreement"], [])])
def test_fit_refuses_restart_options_with_one_restart(tmp_path, capsys, monkeypatch, option,
                                                      restarts):
    # Catches --mdf-selection and --mdf-jobs N > 1 doing nothing with a single
    # restart (the default): refused before training, naming the flags.
    from implicit_geom import cli

    def trained(*args, **kwargs):
        raise cli.CLIError("trained")

    monkeypatch.setattr(cli, "fit_pipeline", trained)
    out = tmp_path / "model"
    assert main(["fit", "two_circles", "--n-samples", "50", "--out", str(out), *option,
                 *restarts, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "on several restarts" in err and "pass --mdf-restarts 2 or more" in err
    assert all(o in err for o in option if o.startswith("--"))
    assert ("--mdf-restarts 1" in err) and "\n" not in err.strip()
    assert not out.exists()
    # --mdf-jobs 1 is the default's meaning: accepted.
    assert main(["demo", "--out", str(out), "--mdf-jobs", "1", "--n-samples", "50",
                 "--no-progress"]) == 2 and "trained" in capsys.readouterr().err


def test_fit_leaves_restarts_to_the_preset(tmp_path, capsys, monkeypatch):
    # Catches fit passing --mdf-restarts' absence on as 1, which overwrote a
    # preset's restarts (glycine's 3: one fit, which folds), and refusing
    # --mdf-selection where the preset has several restarts.
    from implicit_geom import cli
    from implicit_geom.learning import presets

    seen = {}

    def trained(*args, **kwargs):
        seen.update(kwargs)
        raise cli.CLIError("trained")

    monkeypatch.setattr(cli, "fit_pipeline", trained)
    monkeypatch.setitem(presets.MDF_PRESETS, "two_circles", dict(epochs=5, n_restarts=3))
    argv = ["fit", "two_circles", "--n-samples", "50", "--out", str(tmp_path / "m"),
            "--no-progress"]
    assert main([*argv, "--mdf-selection", "conditioning"]) == 2
    assert "trained" in capsys.readouterr().err and seen["mdf_restarts"] is None
    assert main([*argv, "--mdf-restarts", "1"]) == 2 and seen["mdf_restarts"] == 1


def test_evaluate_refuses_data_options_without_data(tmp_path, capsys):
    # Catches evaluate's --n-samples and reading options, which read --data,
    # being ignored silently without it (checked before the model is read).
    assert main(["evaluate", str(tmp_path), "--n-samples", "5", "--where", "a=b"]) == 2
    assert "--n-samples, --where read --data; pass --data FILE" in capsys.readouterr().err


def test_out_is_checked_before_sampling(learned_model, tmp_path, capsys, monkeypatch):
    # Catches sample/plot failing on an --out that cannot be written only
    # after the (slow) sampling: any sampling here fails the test.
    from implicit_geom.models import ConstrainedEBM

    def no_sampling(*args, **kwargs):
        raise AssertionError("sampled before checking --out")

    monkeypatch.setattr(ConstrainedEBM, "sample", no_sampling)
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["sample", str(learned_model), "--out", str(blocker / "sub" / "s.csv")]) == 2
    assert f"cannot be created: {blocker} is a file" in capsys.readouterr().err
    (tmp_path / "d.npy").mkdir()
    assert main(["sample", str(learned_model), "--out", str(tmp_path / "d.npy")]) == 2
    assert "is a folder; name a file" in capsys.readouterr().err
    assert main(["plot", str(learned_model), "--n", "7", "--out", str(blocker / "figs")]) == 2
    assert f"cannot be created: {blocker} is a file" in capsys.readouterr().err
    # A trailing slash names a folder: Path() dropped it and a file x.npy was written.
    assert main(["sample", str(learned_model), "--out", f"{tmp_path / 'x.npy'}/"]) == 2
    assert "x.npy/ names a folder (it ends in /); name a file" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npy", "file"]


def test_python_dash_m_runs_the_cli(tmp_path):
    # Catches `python -m implicit_geom` failing ("No module named
    # implicit_geom.__main__").
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "implicit_geom", "sample", str(tmp_path),
                          "--out", "s.txt"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--out must end in .csv or .npy" in run.stderr


def test_failed_fit_removes_the_folders_it_created(tmp_path, capsys, monkeypatch):
    # Catches fit creating --out's missing parent folders before training and
    # leaving them behind, empty, when the fit failed.
    from implicit_geom import cli

    def failing_fit(*args, **kwargs):
        raise cli.CLIError("stop")

    monkeypatch.setattr(cli, "fit_pipeline", failing_fit)
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "a" / "b" / "model", tmp_path / "kept" / "c" / "model"):
        assert main(["fit", "two_circles", "--out", str(out), "--n-samples", "50",
                     "--no-progress"]) == 2
        assert "stop" in capsys.readouterr().err
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]  # an existing folder stays


def test_failed_sample_removes_the_folders_it_created(learned_model, tmp_path, capsys,
                                                     monkeypatch):
    # Catches sample creating --out's missing parent folders and leaving them
    # behind when writing the file failed (fit removed its own already).
    import torch

    from implicit_geom.models import ConstrainedEBM

    monkeypatch.setattr(ConstrainedEBM, "sample",
                        lambda self, n, **kw: torch.zeros(n, 2, dtype=torch.float64))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    monkeypatch.setattr(np, "savetxt", full_disk)
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "a" / "b" / "s.npy", tmp_path / "kept" / "c" / "s.csv"):
        assert main(["sample", str(learned_model), "--n", "5", "--out", str(out),
                     "--no-progress"]) == 2
        assert "No space left on device" in capsys.readouterr().err
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]  # an existing folder stays


@pytest.mark.parametrize("argv, n_eval", [
    (["--quick", "--n-eval", "800"], 800), (["--quick"], 500), ([], 2000),
    (["--n-eval", "300"], 300)])
def test_demo_honours_a_typed_n_eval(tmp_path, monkeypatch, argv, n_eval):
    # Catches demo --quick lowering a typed --n-eval above 500 to 500 silently
    # (its default 2000 could not be told from a typed value).
    from implicit_geom import cli

    seen = {}
    monkeypatch.setattr(cli, "fit", lambda args: seen.update(fit=args.n_eval))
    monkeypatch.setattr(cli, "plot", lambda args: seen.update(plot=args.n) or 0)
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress", *argv]) == 0
    assert seen == {"fit": n_eval, "plot": n_eval}


@pytest.mark.parametrize("command", ["plot", "evaluate"])
def test_no_progress_reaches_the_sampling(learned_model, tmp_path, monkeypatch, command):
    # Catches plot and evaluate drawing their samples with progress=False
    # whatever --no-progress said (the option had no effect).
    from implicit_geom import cli
    from implicit_geom.models import ConstrainedEBM

    seen = []

    def sample(self, n, **kwargs):
        seen.append(kwargs.get("progress"))
        raise cli.CLIError("stop")

    monkeypatch.setattr(ConstrainedEBM, "sample", sample)
    n = ["--n", "7", "--out", str(tmp_path / "fig")] if command == "plot" else ["--n-eval", "7"]
    assert main([command, str(learned_model), *n]) == 2
    assert main([command, str(learned_model), *n, "--no-progress"]) == 2
    assert seen == [True, False]


def test_evaluate_has_no_intrinsic_dim(learned_model, capsys):
    # Catches evaluate accepting --intrinsic-dim and ignoring it (the model
    # fixes the manifold): argparse now refuses it.
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(learned_model), "--intrinsic-dim", "1"])
    assert exc.value.code == 2 and "unrecognized arguments" in capsys.readouterr().err


@pytest.mark.parametrize("data, extra, how", [
    ("lat,lon\n10,20\n-35.5,170\n60,-120\n", ["--coords", "latlon"], "(--coords latlon)"),
    ("lat,lon\n10,20\n-35.5,170\n60,-120\n", [], "(by --coords auto: latitude/longitude "
                                                 "columns)"),
    ("10,20\n-35.5,170\n60,-120\n", [], "(by --coords auto: no header, values in "
                                        "latitude/longitude ranges)")])
def test_degrees_with_latitude_longitude_is_refused(tmp_path, capsys, data, extra, how):
    # Catches --degrees accepted and ignored on latitude/longitude (always
    # degrees): a headerless file of two angles in degrees went onto the sphere
    # though --degrees said angles were meant. Refused before any work.
    path = tmp_path / "d.csv"
    path.write_text(data)
    out = tmp_path / "model"
    assert main(["fit", str(path), "--degrees", "--out", str(out), *extra, *FAST]) == 2
    err = capsys.readouterr().err
    assert (f"error: --degrees applies to angles (--coords angles), but {path} is read as "
            f"latitude/longitude {how}, which are always in degrees: drop --degrees, or pass "
            "--coords angles if the columns are angles") in err
    assert not out.exists()


@pytest.mark.parametrize("points, message", [
    (np.ones((50, 3)), "all 50 points of the data ({path}) are equal (to float64 precision)"),
    (np.ones((50, 2)), "all 50 points of the data ({path}) are equal (to float64 precision)"),
    (1 + 1e-17 * np.eye(50, 2), "all 50 points of the data ({path}) are equal"),
    (1e200 * np.eye(50, 2), "the data ({path}) has coordinates as large as 1e+200: beyond "
                            "1e+150 their squares overflow float64; rescale the data"),
    (1e-200 * np.eye(50, 2), "the data ({path}) spreads over only 1e-200: below 1e-150 its "
                             "square underflows float64; rescale the data")])
def test_degenerate_data_are_refused_before_training(tmp_path, capsys, monkeypatch, points,
                                                     message):
    # Catches data without a usable spread failing only after training (a NaN
    # loss at epoch 0 for 1e200, no zero set for 1e-200) or, in 3-D, being said
    # to show "no lower-dimensional structure"; the error names the file.
    from implicit_geom.learning import NeuralImplicitManifold

    def no_training(*args, **kwargs):
        raise AssertionError("trained on degenerate data")

    monkeypatch.setattr(NeuralImplicitManifold, "fit", no_training)
    path = tmp_path / "d.csv"
    np.savetxt(path, points, delimiter=",", fmt="%.17g")
    out = tmp_path / "model"
    assert main(["fit", str(path), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "error: " + message.format(path=path) in err and "\n" not in err.strip()
    assert not out.exists() and list(tmp_path.iterdir()) == [path]


def test_flat_data_on_a_plane_are_fitted_and_evaluated(tmp_path, capsys):
    # Catches legitimate flat data (a circle in the plane z = 0 of R^3) failing
    # after training with "x is empty": the evaluation box had no width in z,
    # and no point of the (never exactly flat) learned circle fell in it.
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    path = tmp_path / "circle.csv"
    np.savetxt(path, np.c_[np.cos(t), np.sin(t), np.zeros_like(t)], delimiter=",")
    out = tmp_path / "model"
    assert main(["fit", str(path), "--out", str(out), "--mdf-epochs", "40",
                 "--max-distance", "none", *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["W_reference"] < 0.1 and 0 <= metrics["W_samples"] < 0.1
