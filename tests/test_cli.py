"""The implicit-geom command line: fit/sample/evaluate/plot, errors, atomic folders."""

import json
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
    assert {"config.json", "manifold", "ebm.pt", "test.npy", "metrics.json"} <= names
    metrics = json.loads((learned_model / "metrics.json").read_text())
    assert metrics["max_abs_F_samples"] <= 1e-9
    assert metrics["W"] >= 0 and metrics["test_dist_median"] >= 0
    assert 0 <= metrics["W_density"] <= 1
    config = json.loads((learned_model / "config.json").read_text())
    assert config["manifold"] == "learned" and config["n_test"] == 80


def test_sample_evaluate_plot(learned_model, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["sample", str(learned_model), "--n", "50", "--out", str(out),
                 "--no-progress"]) == 0
    pts = np.loadtxt(out, delimiter=",", skiprows=1)
    assert pts.shape == (50, 2)
    capsys.readouterr()
    assert main(["evaluate", str(learned_model), "--n-eval", "100"]) == 0
    assert "test_dist_median" in json.loads(capsys.readouterr().out)
    assert main(["plot", str(learned_model), "--out", str(tmp_path / "fig"), "--n", "100"]) == 0
    pngs = sorted(p.name for p in (tmp_path / "fig").glob("*.png"))
    assert pngs == ["data.png", "density.png", "manifold.png", "samples.png", "training.png"]
    assert all((tmp_path / "fig" / p).stat().st_size > 5000 for p in pngs)


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
