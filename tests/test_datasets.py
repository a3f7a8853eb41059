"""Tests for implicit_geom.datasets: generators, coordinate maps, loaders."""

import math

import numpy as np
import pytest
import torch
from scipy.special import i0, i1

from implicit_geom import datasets as ds
from implicit_geom.exceptions import DataError, EmptyDataError, ImplicitGeomError

GENERATORS = {
    "circle": (ds.von_mises_circle, 2),
    "two_circles": (ds.two_circles, 2),
    "sphere_mixture": (ds.sphere_mixture, 3),
    "torus": (ds.torus_density, 3),
    "vmf": (lambda n, seed: ds.vmf_sphere(n, [0.0, 0.0, 1.0], 5.0, seed=seed), 3),
}


def torus_residual(x, R, r):
    """Implicit torus equation (sqrt(x^2 + y^2) - R)^2 + z^2 - r^2."""
    return (torch.hypot(x[:, 0], x[:, 1]) - R) ** 2 + x[:, 2] ** 2 - r**2


# --------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------


@pytest.mark.parametrize("name", GENERATORS)
def test_generator_shape_dtype_and_determinism(name):
    gen, dim = GENERATORS[name]
    x = gen(500, seed=3)
    assert x.shape == (500, dim) and x.dtype == torch.float64
    assert torch.isfinite(x).all()
    assert torch.equal(x, gen(500, seed=3))
    assert not torch.equal(x, gen(500, seed=4))


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_generator_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n_samples"):
        ds.von_mises_circle(n)


def test_points_lie_on_their_manifolds():
    assert torch.allclose(ds.von_mises_circle(1000).norm(dim=1), torch.ones(1000, dtype=torch.float64), atol=1e-12)
    assert (ds.sphere_mixture(1000).norm(dim=1) - 1).abs().max() < 1e-12
    assert torus_residual(ds.torus_density(1000, R=2.5, r=0.7), 2.5, 0.7).abs().max() < 1e-12

    x = ds.two_circles(2000)
    centres = torch.tensor(ds.TWO_CIRCLE_CENTRES, dtype=torch.float64)
    dist = torch.cdist(x, centres)
    assert (dist.min(dim=1).values - 1).abs().max() < 1e-12
    # Equal weights: about half the points on each circle (5 sigma).
    left_mask = dist[:, 0] < dist[:, 1]
    left = left_mask.double().mean().item()
    assert abs(left - 0.5) < 5 * math.sqrt(0.25 / 2000)
    # As in the paper, the modes face each other: each circle's mean direction
    # points at the other circle, with the von Mises resultant length I1/I0(2).
    resultant = i1(2.0) / i0(2.0)
    for mask, centre, towards in ((left_mask, centres[0], 1.0), (~left_mask, centres[1], -1.0)):
        mean_dir = (x[mask] - centre).mean(dim=0)
        assert mean_dir[0].item() * towards == pytest.approx(resultant, abs=0.05)
        assert abs(mean_dir[1].item()) < 0.05


def test_two_circles_rejects_mismatched_locs():
    with pytest.raises(ValueError, match="locs"):
        ds.two_circles(10, locs=(0.0,))


def test_von_mises_circle_mean_resultant_length():
    kappa, mu, n = 3.0, 1.0, 40000
    x = ds.von_mises_circle(n, kappa=kappa, mu=mu, seed=1)
    angle = torch.atan2(x[:, 1], x[:, 0])
    c = torch.cos(angle - mu)
    expected = i1(kappa) / i0(kappa)  # E[cos(theta - mu)] for von Mises
    assert abs(c.mean().item() - expected) < 5 * c.std().item() / math.sqrt(n)
    assert abs(torch.sin(angle - mu).mean().item()) < 5 / math.sqrt(n)


def test_sphere_mixture_means_are_separated_and_used():
    means = ds.sphere_mixture_means(4)
    assert (means.norm(dim=1) - 1).abs().max() < 1e-12
    cos = means @ means.T
    off_diag = cos[~torch.eye(4, dtype=torch.bool)]
    assert off_diag.max() < math.cos(math.radians(95))
    # Every sample is much closer to one of the means than the means are to each other.
    x = ds.sphere_mixture(2000, scale=0.1)
    assert (x @ means.T).max(dim=1).values.min() > 0.8


def test_torus_density_is_not_uniform():
    phi, theta = ds.torus_angles(ds.torus_density(5000, seed=2))
    # The first component (weight 0.4) is centred at (0, 0): a uniform density
    # would put ~1/16 of the mass in this window of angles.
    window = ((phi.abs() < math.pi / 4) & (theta.abs() < math.pi / 4)).double().mean()
    assert window > 0.15


def _area_weights(name, points):
    """Quadrature weights of the point sets returned by ds.true_density."""
    n = len(points)
    if name == "circle":
        return torch.full((n,), 2 * math.pi / n)
    if name == "two_circles":
        return torch.full((n,), 2 * math.pi / (n // 2))
    if name == "sphere_mixture":
        return torch.full((n,), 4 * math.pi / n)
    _, theta = ds.torus_angles(points, 2.0, 1.0)
    # Area element r (R + r cos theta) dphi dtheta of the R = 2, r = 1 torus.
    return (2.0 + theta.cos()) * (2 * math.pi / 400) ** 2


@pytest.mark.parametrize("name", ["circle", "two_circles", "sphere_mixture", "torus"])
def test_true_density_integrates_to_one_and_matches_samples(name):
    points, density = ds.true_density(name)
    weights = _area_weights(name, points)
    assert float((density * weights).sum()) == pytest.approx(1.0, abs=1e-6)
    # The probability of a region by quadrature matches the generator's samples
    # (20,000 draws: 4 standard errors of a proportion are below 0.015).
    samples = ds.load_dataset(name, 20_000, seed=4).points
    for probe in (points[density.argmax()], samples[0]):
        region = lambda x: (x - probe).norm(dim=-1) < 0.8  # noqa: E731,B023
        by_quadrature = float((density * weights * region(points)).sum())
        frequency = float(region(samples).double().mean())
        assert by_quadrature == pytest.approx(frequency, abs=0.015)
    assert by_quadrature > 0.01


def test_vmf_and_projected_normal_densities():
    sphere = ds.fibonacci_sphere(50_000)
    assert sphere.shape == (50_000, 3) and (sphere.norm(dim=1) - 1).abs().max() < 1e-12
    for kappa in (0.0, 3.0, 200.0):
        dens = ds.vmf_density(sphere, [0.0, 0.0, 2.0], kappa)
        assert float(dens.mean() * 4 * math.pi) == pytest.approx(1.0, abs=1e-3)
    # A tiny scale concentrates the projected normal like a vMF of kappa 1/scale^2.
    mean = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    top = sphere[sphere[:, 2] > 0.999]
    ratio = ds.projected_normal_density(top, mean, 0.05) / ds.vmf_density(top, mean, 400.0)
    assert float((ratio - 1).abs().max()) < 0.01
    with pytest.raises(ValueError, match="no known density"):
        ds.true_density("flood")


@pytest.mark.parametrize("kappa", [0.0, 1e-8, 0.5, 5.0, 50.0, 1e4])
def test_vmf_mean_cosine_matches_theory(kappa):
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    mu = mu / mu.norm()
    n = 20000
    x = ds.vmf_sphere(n, mu * 3.0, kappa, seed=7)  # mu is normalised internally
    assert (x.norm(dim=1) - 1).abs().max() < 1e-12
    w = x @ mu
    expected = 0.0 if kappa < 1e-6 else 1 / math.tanh(kappa) - 1 / kappa
    assert abs(w.mean().item() - expected) < 5 * w.std().item() / math.sqrt(n) + 1e-12
    # The tangential part is isotropic: its mean vanishes.
    tangential = x - w[:, None] * mu
    assert tangential.mean(dim=0).norm() < 5 * math.sqrt(max(1 - expected**2, 1e-12) / n) + 1e-12


def test_vmf_rejects_bad_parameters():
    with pytest.raises(ValueError):
        ds.vmf_sphere(10, [0.0, 0.0, 0.0], 1.0)
    with pytest.raises(ValueError):
        ds.vmf_sphere(10, [0.0, 0.0, 1.0], -1.0)


# --------------------------------------------------------------------------
# Coordinate maps
# --------------------------------------------------------------------------


def test_sphere_embed_known_points_and_roundtrip():
    x = ds.sphere_embed([0.0, 0.0, 90.0, -90.0], [0.0, 90.0, 33.0, 0.0])
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, -1]], dtype=torch.float64)
    assert torch.allclose(x, expected, atol=1e-15)

    rng = np.random.default_rng(0)
    lat = rng.uniform(-89.9, 89.9, 500)
    lon = rng.uniform(-179.9, 179.9, 500)
    lat2, lon2 = ds.sphere_latlon(ds.sphere_embed(lat, lon))
    assert np.allclose(lat2.numpy(), lat, atol=1e-10)
    assert np.allclose(lon2.numpy(), lon, atol=1e-10)
    # [0, 360] longitudes map to the same points as their [-180, 180] equivalents.
    assert torch.allclose(ds.sphere_embed(10.0, 270.0), ds.sphere_embed(10.0, -90.0), atol=1e-15)


def test_torus_embed_roundtrip_and_validation():
    rng = np.random.default_rng(1)
    phi = rng.uniform(-math.pi, math.pi, 500)
    theta = rng.uniform(-math.pi, math.pi, 500)
    x = ds.torus_embed(phi, theta, R=3.0, r=1.0)
    assert x.shape == (500, 3) and x.dtype == torch.float64
    assert torus_residual(x, 3.0, 1.0).abs().max() < 1e-12
    phi2, theta2 = ds.torus_angles(x, R=3.0, r=1.0)
    assert np.allclose(phi2.numpy(), phi, atol=1e-12)
    assert np.allclose(theta2.numpy(), theta, atol=1e-12)
    with pytest.raises(ValueError, match="R > r"):
        ds.torus_embed(phi, theta, R=1.0, r=2.0)


# --------------------------------------------------------------------------
# Loaders on the real shared files
# --------------------------------------------------------------------------


@pytest.fixture
def shared_dir():
    path = ds.default_data_dir()
    if not (path / "earth").is_dir() or not (path / "protein").is_dir():
        pytest.skip(f"shared data directory {path} not available")
    return path


def test_load_earth_real_files(shared_dir):
    flood = ds.load_earth(shared_dir / "earth" / "flood.csv")
    volcano = ds.load_earth(shared_dir / "earth" / "volcano.csv")
    assert flood.shape == (4875, 3) and volcano.shape == (827, 3)
    for x in (flood, volcano):
        assert x.dtype == torch.float64 and (x.norm(dim=1) - 1).abs().max() < 1e-12
    # First data row of flood.csv is "35.8142,5.23026".
    lat, lon = ds.sphere_latlon(flood[:1])
    assert abs(lat.item() - 35.8142) < 1e-10 and abs(lon.item() - 5.23026) < 1e-10


def test_load_protein_real_file(shared_dir):
    path = shared_dir / "protein" / "dihedrals.csv"
    phi, psi = ds.load_protein_angles(path, residue=None)
    assert phi.shape == psi.shape == (18000,)
    gphi, gpsi = ds.load_protein_angles(path)  # glycine by default
    assert gphi.shape == (1000,)
    x = ds.load_protein(path, residue="G", R=3.0, r=1.0)
    assert x.shape == (1000, 3) and x.dtype == torch.float64
    assert torus_residual(x, 3.0, 1.0).abs().max() < 1e-12
    back_phi, back_psi = ds.torus_angles(x, R=3.0, r=1.0)
    # Angles agree modulo 2 pi (pi and -pi are the same point).
    assert torch.allclose(torch.cos(back_phi - gphi), torch.ones_like(gphi), atol=1e-12)
    assert torch.allclose(torch.cos(back_psi - gpsi), torch.ones_like(gpsi), atol=1e-12)


def test_unknown_residue_lists_available(shared_dir):
    with pytest.raises(DataError, match=r"unknown residue 'Z'.*G"):
        ds.load_protein(shared_dir / "protein" / "dihedrals.csv", residue="Z")


@pytest.mark.parametrize(
    "name, n, kind, dim",
    [("flood", 4875, "sphere", 3), ("volcano", 827, "sphere", 3), ("glycine", 1000, "torus", 3)],
)
def test_load_dataset_real(shared_dir, name, n, kind, dim):
    data = ds.load_dataset(name)
    assert (len(data), data.kind, data.ambient_dim, data.intrinsic_dim) == (n, kind, dim, 2)
    if kind == "torus":
        assert (data.meta["R"], data.meta["r"]) == (3.0, 1.0)
    sub = ds.load_dataset(name, n_samples=100, seed=1)
    assert sub.points.shape == (100, dim)
    assert torch.equal(sub.points, ds.load_dataset(name, n_samples=100, seed=1).points)
    # A subsample consists of rows of the full data set.
    assert (sub.points[:, None, :] == data.points[None]).all(dim=-1).any(dim=1).all()
    with pytest.raises(ValueError, match="exceeds"):
        ds.load_dataset(name, n_samples=n + 1)


# --------------------------------------------------------------------------
# Loaders on malformed files
# --------------------------------------------------------------------------

EARTH_OK = "# source: test\nlatitude,longitude\n10.0,20.0\n-5.5,170.0\n"


def write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_earth_accepts_aliases_and_0_360(tmp_path):
    x = ds.load_earth(write(tmp_path, "# src\nLat,Long\r\n10,20\r\n\r\n-5,350\r\n"))
    assert torch.allclose(x, ds.sphere_embed([10.0, -5.0], [20.0, -10.0]), atol=1e-15)
    # No comment line is fine too.
    assert ds.load_earth(write(tmp_path, EARTH_OK.split("\n", 1)[1])).shape == (2, 3)


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("# s\nlat,foo\n1,2\n", r"missing column 'longitude'.*found \['lat', 'foo'\]"),
        ("# s\nlatitude,longitude\n1,2\n3,abc\n", r"data row 2 \(line 4\).*'abc' is not numeric"),
        ("# s\nlatitude,longitude\n1,2\nnan,3\n", r"data row 2.*not finite"),
        ("# s\nlatitude,longitude\n1,2\n3,4\n95,0\n", r"data row 3.*latitude = 95.0 outside \[-90, 90\]"),
        ("# s\nlatitude,longitude\n1,-181\n", r"data row 1.*longitude = -181.0 outside \[-180, 180\]"),
        ("# s\nlatitude,longitude\n1,200\n2,-10\n", r"data row 2.*\[0, 360\] convention"),
        ("# s\nlatitude,longitude\n1,2\n3\n", r"data row 2 \(line 4\) has 1 fields"),
        ("# s\nlatitude,longitude\n", r"no data rows"),
        ("# only a comment\n", r"empty"),
        ("", r"empty"),
    ],
)
def test_load_earth_bad_files(tmp_path, text, pattern):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=pattern) as info:
        ds.load_earth(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, (ImplicitGeomError, ValueError))


@pytest.mark.parametrize(
    "text, pattern",
    [
        ("# s\nresidue,phi\nG,1\n", r"missing column 'psi'"),
        ("# s\nresidue,phi,psi\nG,1,2\nG,1,4.0\n", r"data row 2.*psi = 4.0 outside \[-pi, pi\]"),
        ("# s\nresidue,phi,psi\nG,-60,120\n", r"data row 1.*phi.*radians"),
        ("# s\nresidue,phi,psi\nG,1,\n", r"data row 1.*not numeric"),
        ("# s\nresidue,phi,psi\nA,1,2\n", r"unknown residue 'G'; available: A"),
    ],
)
def test_load_protein_bad_files(tmp_path, text, pattern):
    with pytest.raises(DataError, match=pattern):
        ds.load_protein(write(tmp_path, text))


@pytest.mark.parametrize(
    "text, loader, pattern",
    [
        ("# s\nlat,lon\nNA,NA\n1,2\n", ds.load_earth,
         r"data row 1 \(line 3\): latitude value 'NA' is not numeric"),
        ("lat,lon\n,\n1,2\n", ds.load_earth,
         r"data row 1 \(line 2\): latitude value '' is not numeric"),
        ("residue,phi,psi\nG,NA,NA\nG,1,2\n", ds.load_protein,
         r"data row 1 \(line 2\): phi value 'NA' is not numeric"),
    ],
)
def test_missing_values_in_the_first_data_row_are_blamed_not_the_header(
        tmp_path, text, loader, pattern):
    # Catches the header line read as data when the row below it had no number
    # (missing values): the error blamed the header ("data row 1: latitude value
    # 'lat' is not numeric", or "missing column 'residue' ... no header row").
    with pytest.raises(DataError, match=pattern):
        loader(write(tmp_path, text))


def test_load_protein_tolerates_rounded_pi(tmp_path):
    phi, psi = ds.load_protein_angles(write(tmp_path, "residue,phi,psi\nG,3.145,-3.15\n"))
    assert phi.item() == 3.145 and psi.item() == -3.15


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        ds.load_earth(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="not found"):
        ds.load_dataset(tmp_path / "nope.npy")
    # Catches a folder given as the data being reported as "data file not found".
    for name in ("runs", "runs.npy"):
        (tmp_path / name).mkdir()
        with pytest.raises(DataError, match="is a folder, not a data file"):
            ds.load_dataset(tmp_path / name)


# --------------------------------------------------------------------------
# load_dataset and train_test_split
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kind, ambient, intrinsic",
    [
        ("circle", "euclidean", 2, 1),
        ("two_circles", "euclidean", 2, 1),
        ("sphere_mixture", "sphere", 3, 2),
        ("torus", "torus", 3, 2),
    ],
)
def test_load_dataset_synthetic(name, kind, ambient, intrinsic):
    data = ds.load_dataset(name, n_samples=300, seed=5)
    assert data.points.shape == (300, ambient) and data.points.dtype == torch.float64
    assert (data.name, data.kind, data.ambient_dim, data.intrinsic_dim) == (name, kind, ambient, intrinsic)
    assert torch.equal(data.points, ds.load_dataset(name, n_samples=300, seed=5).points)
    if kind == "torus":
        assert torus_residual(data.points, data.meta["R"], data.meta["r"]).abs().max() < 1e-12


def test_load_dataset_env_and_data_dir(tmp_path, monkeypatch):
    earth = tmp_path / "earth"
    earth.mkdir()
    write(earth, EARTH_OK, "volcano.csv")
    assert len(ds.load_dataset("volcano", data_dir=tmp_path)) == 2
    monkeypatch.setenv("IMPLICIT_GEOM_DATA", str(tmp_path))
    assert ds.default_data_dir() == tmp_path
    assert len(ds.load_dataset("volcano")) == 2
    with pytest.raises(DataError, match="flood.csv"):
        ds.load_dataset("flood")


def test_load_dataset_files(tmp_path):
    numeric = ds.load_dataset(write(tmp_path, "a,b,c\n1,2,3\n4,5,6.5\n", "pts.csv"))
    assert numeric.kind == "euclidean" and numeric.name == "pts" and numeric.intrinsic_dim is None
    assert torch.equal(numeric.points, torch.tensor([[1, 2, 3], [4, 5, 6.5]], dtype=torch.float64))
    assert ds.load_dataset(tmp_path / "pts.csv", intrinsic_dim=1).intrinsic_dim == 1

    sphere = ds.load_dataset(write(tmp_path, EARTH_OK, "quakes.csv"))
    assert sphere.kind == "sphere" and sphere.points.shape == (2, 3)

    with pytest.raises(DataError, match=r"data row 2.*'x'"):
        ds.load_dataset(write(tmp_path, "a,b\n1,2\n3,x\n", "bad.csv"))

    array = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "arr.npy", array)
    loaded = ds.load_dataset(tmp_path / "arr.npy", n_samples=2, seed=0)
    assert loaded.points.dtype == torch.float64 and loaded.points.shape == (2, 3)

    np.save(tmp_path / "flat.npy", np.zeros(5))
    with pytest.raises(DataError, match="2-d"):
        ds.load_dataset(tmp_path / "flat.npy")
    bad = np.ones((3, 2))
    bad[1, 0] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="data row 2"):
        ds.load_dataset(tmp_path / "nan.npy")


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="two_circles"):
        ds.load_dataset("moons")


def test_train_test_split():
    points = torch.arange(50, dtype=torch.float64)[:, None]
    train, test = ds.train_test_split(points, test_fraction=0.2, seed=0)
    assert (len(train), len(test)) == (40, 10)
    assert sorted(torch.cat([train, test]).flatten().tolist()) == list(range(50))
    again = ds.train_test_split(points, test_fraction=0.2, seed=0)
    assert torch.equal(train, again[0]) and torch.equal(test, again[1])
    assert not torch.equal(test, ds.train_test_split(points, 0.2, seed=1)[1])
    assert [len(s) for s in ds.train_test_split(points[:2], 0.01)] == [1, 1]
    with pytest.raises(ValueError):
        ds.train_test_split(points, test_fraction=1.0)


# --------------------------------------------------------------------------
# User tables: headers, comments, --coords, --columns, --where
# --------------------------------------------------------------------------

LATLON_NO_HEADER = "# quakes, degrees\n10.0,20.0\n-35.5,170.0\n60,-120\n"
DIHEDRALS = "# phi, psi in radians\nresidue,phi,psi\nG,-1.4,2.9\nP,-1.2,2.6\nG,1.5,0.3\nP,-1.1,-0.5\n"


def test_headerless_latlon_is_detected_and_said(tmp_path):
    # Catches a header guessed from a data row (losing a point), a comment
    # read as data, and a silent choice of reading.
    data = ds.load_table(write(tmp_path, LATLON_NO_HEADER))
    assert data.kind == "sphere" and data.intrinsic_dim == 2
    assert torch.allclose(data.points, ds.sphere_embed([10, -35.5, 60], [20, 170, -120]),
                          atol=1e-15)
    assert "latitude, longitude" in data.meta["reading"] and "no header" in data.meta["reading"]
    # The same file through load_earth and load_dataset (the CLI's path).
    assert torch.equal(ds.load_earth(tmp_path / "data.csv"), data.points)
    assert ds.load_dataset(tmp_path / "data.csv").kind == "sphere"
    # Forced plain reading.
    flat = ds.load_table(tmp_path / "data.csv", coords="xyz")
    assert flat.kind == "euclidean" and flat.points.shape == (3, 2) and flat.intrinsic_dim == 1


def test_small_headerless_values_stay_plain_points(tmp_path):
    # Values that fit latitude/longitude but never exceed 2 pi read as plain
    # coordinates (e.g. a curve near the origin), and the reading says why.
    data = ds.load_table(write(tmp_path, "0.5 1.0\n-1.0 0.25\n1.5 -2.0\n", "pts.txt"))
    assert data.kind == "euclidean" and data.points.shape == (3, 2)
    assert "coords='latlon'" in data.meta["reading"] and "--" not in data.meta["reading"]
    forced = ds.load_table(tmp_path / "pts.txt", coords="latlon")
    assert forced.kind == "sphere"


def test_dihedrals_filtered_by_residue_map_to_the_torus(tmp_path):
    # Catches filters that keep the wrong rows, angle columns in the wrong
    # order, and a residue column read as coordinates.
    path = write(tmp_path, DIHEDRALS)
    data = ds.load_table(path, where="residue=P")
    assert data.kind == "torus" and data.intrinsic_dim == 2 and data.name == "data[residue=P]"
    R, r = ds.ANGLE_TORUS
    assert torch.allclose(data.points, ds.torus_embed([-1.2, -1.1], [2.6, -0.5], R, r),
                          atol=1e-15)
    assert data.meta["axes"] == ["phi", "psi"] and "residue=P" in data.meta["reading"]
    # By index, reversed order, numeric filter value compared as a number.
    swapped = ds.load_table(path, coords="angles", columns=["2", "1"], where=["residue=G"])
    assert torch.allclose(swapped.points, ds.torus_embed([2.9, 0.3], [-1.4, 1.5], R, r))
    nums = write(tmp_path, "k,a,b\n1,0.1,0.2\n2.0,0.3,0.4\n", "k.csv")
    assert ds.load_table(nums, columns="a,b", coords="angles", where="k=2").points.shape == (1, 3)


def test_angles_in_degrees_and_conventions(tmp_path):
    path = write(tmp_path, "a,b\n-90,180\n45,-30\n")
    deg = ds.load_table(path, coords="angles", degrees=True)
    assert torch.allclose(deg.points, ds.torus_embed([-math.pi / 2, math.pi / 4],
                                                     [math.pi, -math.pi / 6], *ds.ANGLE_TORUS))
    with pytest.raises(DataError, match=r"outside \[-pi, pi\].*pass degrees=True for degrees"):
        ds.load_table(path, coords="angles")
    # [0, 2 pi] is a convention of its own, not an error.
    wide = ds.load_table(write(tmp_path, "a,b\n0.1,6.2\n3.5,1\n", "w.csv"), coords="angles")
    assert wide.points.shape == (2, 3)
    # Catches a message about latitude/longitude for plain coordinates: it says
    # how the file is read and what to do.
    with pytest.raises(DataError, match=r"^degrees=True applies to angles .* plain coordinates "
                                        r"\(coords='xyz'\).*drop degrees"):
        ds.load_table(path, coords="xyz", degrees=True)


def test_plain_xyz_files_whitespace_and_npy(tmp_path):
    pts = ds.sphere_mixture(50, seed=1) * 2.0 + 1.0
    np.savetxt(tmp_path / "cloud.xyz", pts.numpy())
    data = ds.load_table(tmp_path / "cloud.xyz")
    assert data.kind == "euclidean" and data.intrinsic_dim is None
    assert torch.allclose(data.points, pts, atol=1e-12)
    np.save(tmp_path / "ll.npy", np.array([[10.0, 20.0], [-35.5, 170.0]]))
    assert ds.load_table(tmp_path / "ll.npy").kind == "sphere"  # auto-detected as on a file
    with pytest.raises(DataError, match="1 coordinate column"):
        ds.load_table(tmp_path / "ll.npy", coords="xyz", columns=[1])


@pytest.mark.parametrize(
    "text, kwargs, pattern",
    [
        (DIHEDRALS.split("\n", 2)[2], {}, r"column 0 value 'G' is not numeric; pick the coordinate "
                                          r"columns with columns \(and rows with "
                                          r"where='COL=VALUE'\)"),
        # Catches a NaN told to "pick numeric columns": the column is numeric.
        ("x,y\n1,2\n3,nan\n", {}, r"data row 2 \(line 3\): 'y' value 'nan' is not finite$"),
        (DIHEDRALS, {"where": "residue=Z"}, r"no rows with 'residue' = 'Z'; its values: G, P"),
        (DIHEDRALS, {"where": "residue"}, r"must read COL=VALUE"),
        (DIHEDRALS, {"columns": "phi,omega"}, r"no column 'omega'; the columns are 0 'residue', "
                                              r"1 'phi', 2 'psi'"),
        (DIHEDRALS, {"columns": "phi", "coords": "xyz"}, r"1 coordinate column"),
        (DIHEDRALS, {"columns": "0,1,2", "coords": "latlon"}, r"needs 2 columns"),
        ("a,b,c\n1,2,3\n", {"coords": "latlon"}, r"missing column 'latitude'"),
        ("a,b,c\n1,2,3\n", {"coords": "angles"}, r"cannot tell which two columns"),
        ("a,b\n1,2\n", {"coords": "polar"}, r"unknown coords 'polar'"),
        ("5,1\n95,2\n", {"coords": "latlon"}, r"data row 2 \(line 2\).*latitude = 95.0"),
        ("1,2\n3\n", {}, r"data row 2 \(line 2\) has 1 fields, expected 2"),
    ],
)
def test_table_errors_are_one_line_and_point_at_the_cause(tmp_path, text, kwargs, pattern):
    path = write(tmp_path, text)
    with pytest.raises(DataError, match=pattern) as info:
        ds.load_table(path, **kwargs)
    assert "\n" not in str(info.value)


def test_file_options_are_refused_for_builtin_sets():
    with pytest.raises(ValueError, match="built-in"):
        ds.load_dataset("two_circles", where="residue=G")


def test_estimate_intrinsic_dim():
    # Catches an estimate that counts ambient axes or noise directions.
    assert ds.estimate_intrinsic_dim(ds.two_circles(500)) == 1
    assert ds.estimate_intrinsic_dim(ds.sphere_mixture(1000) * 3.0) == 2
    assert ds.estimate_intrinsic_dim(ds.torus_density(2000)) == 2
    noise = torch.as_tensor(np.random.default_rng(0).standard_normal((500, 3)))
    assert ds.estimate_intrinsic_dim(noise) == 3


def test_estimate_intrinsic_dim_rejects_meaningless_settings():
    # Catches answers outside [1, n] without a word: variance=1.5 gave 4 for
    # 3-D points, n_neighbors=0 a neighbourhood of the point alone.
    noise = torch.as_tensor(np.random.default_rng(0).standard_normal((100, 3)))
    for bad in (dict(variance=1.5), dict(variance=0.0), dict(n_neighbors=0),
                dict(n_neighbors=2.5)):
        with pytest.raises(ValueError):
            ds.estimate_intrinsic_dim(noise, **bad)


def test_digits_are_bundled_images():
    # scikit-learn's 8x8 digits, no download: 64-D points in [0, 1] of kind
    # "image" with their shape recorded (plot draws image grids from it), and
    # the class filter of the out-of-distribution test.
    from implicit_geom.datasets import load_digits

    data = ds.load_dataset("digits")
    assert data.kind == "image" and data.points.shape == (1797, 64)
    assert data.intrinsic_dim == 8 and data.meta["image_shape"] == "8x8"
    assert float(data.points.min()) == 0.0 and float(data.points.max()) == 1.0
    low, labels = load_digits(classes=range(5), return_labels=True)
    assert set(labels.tolist()) == {0, 1, 2, 3, 4} and low.shape[0] == len(labels) < 1797
    # Catches a class filter that matches nothing (not a digit, a string, an
    # empty list) returning an empty (0, 64) tensor instead of a named error.
    for bad in ([12], ["3"], []):
        with pytest.raises(EmptyDataError):
            load_digits(classes=bad)


def test_braces_in_a_path_are_text_not_parameter_fields(tmp_path):
    # Catches the doubled braces of an escaped path shown doubled ("a{{b}}")
    # and a path containing "{coords}" read as the parameter's field
    # ("/tmp/{--coords}.csv" on the command line).
    from implicit_geom.exceptions import name_params

    template = "cannot read /tmp/{{coords}}/a{{b}}.csv; pass {coords='xyz'}"
    assert name_params(template, ("coords",)) == \
        "cannot read /tmp/{coords}/a{b}.csv; pass coords='xyz'"
    assert name_params(template, ("coords",), {"coords": "--coords"}.get) == \
        "cannot read /tmp/{coords}/a{b}.csv; pass --coords xyz"
