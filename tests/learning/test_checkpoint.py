"""Checkpoint files: round trip, weights-only, atomic, clear errors."""

import pytest
import torch

from implicit_geom import CheckpointError
from implicit_geom.learning import load_checkpoint, save_checkpoint


def test_round_trip(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, "Thing", {"a": 1, "b": [2, 3]}, {"w": torch.arange(3.0)})
    config, record = load_checkpoint(path, "Thing", required=("w",))
    assert config == {"a": 1, "b": [2, 3]}
    assert torch.equal(record["w"], torch.arange(3.0))


def test_errors(tmp_path):
    path = tmp_path / "c.pt"
    save_checkpoint(path, "Thing", {}, {})
    with pytest.raises(CheckpointError, match="holds a 'Thing'"):
        load_checkpoint(path, "Other")
    with pytest.raises(CheckpointError, match="lacks w"):
        load_checkpoint(path, "Thing", required=("w",))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(tmp_path / "junk.pt", "Thing")
    # Files of 1-7 bytes: torch.load's legacy reader raised a bare struct.error
    # ("unpack requires a buffer of 4 bytes"), a traceback from the command line.
    for junk in (b"j", b"junk"):
        (tmp_path / "junk.pt").write_bytes(junk)
        with pytest.raises(CheckpointError, match="corrupt"):
            load_checkpoint(tmp_path / "junk.pt", "Thing")
    with pytest.raises(CheckpointError, match="does not exist"):
        save_checkpoint(tmp_path / "no" / "c.pt", "Thing", {}, {})
    # A folder as the target: a bare IsADirectoryError before, with no temporary left.
    (tmp_path / "dir.pt").mkdir()
    with pytest.raises(CheckpointError, match="is a folder"):
        save_checkpoint(tmp_path / "dir.pt", "Thing", {}, {})
    # Loading a folder said "not found" of a path that exists.
    with pytest.raises(CheckpointError, match="is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path / "dir.pt", "Thing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "dir.pt", "junk.pt"]


def test_unwritable_target_is_a_named_error_and_keeps_the_old_file(tmp_path, monkeypatch):
    # Catches a bare PermissionError / OSError from an unwritable folder or a
    # full disk (the library's callers expect CheckpointError), and a failed
    # write that damaged the existing checkpoint or left its temporary behind.
    import errno
    import tempfile

    path = tmp_path / "c.pt"
    save_checkpoint(path, "Thing", {"a": 1}, {})

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path))

    with monkeypatch.context() as patch:
        patch.setattr(tempfile, "mkstemp", denied)
        with pytest.raises(CheckpointError, match="cannot save .*Permission denied"):
            save_checkpoint(path, "Thing", {"a": 2}, {})
    real_save = torch.save

    def full_disk(obj, handle):
        real_save(obj, handle)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="cannot save .*No space left"):
        save_checkpoint(path, "Thing", {"a": 3}, {})
    assert load_checkpoint(path, "Thing")[0] == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


class Payload:
    """Arbitrary object: weights-only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "implicit_geom.checkpoint", "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt", "Thing")


def test_a_float32_model_reloads_in_float32_and_old_files_in_float64(tmp_path):
    # Catches a NeuralImplicitManifold or ConstrainedEBM saved in float32
    # reloading as float64 (the checkpoint did not record the dtype), so the
    # reloaded model's outputs differed from the saved one's.
    import math

    from implicit_geom import ImplicitSphere
    from implicit_geom.learning import NeuralImplicitManifold
    from implicit_geom.models import ConstrainedEBM

    t = torch.linspace(0, 2 * math.pi, 64, dtype=torch.float64)
    data = torch.stack([t.cos(), t.sin()], -1)
    model = NeuralImplicitManifold(2, hidden=(8,), epochs=2, progress=False).to(torch.float32)
    model.fit(data)
    model.save(tmp_path / "m.pt")
    back = NeuralImplicitManifold.load(tmp_path / "m.pt")
    x = data[:5].float()
    assert back.dtype == torch.float32 and back.bounds[0].dtype == torch.float32
    assert torch.equal(back.submersion(x), model.submersion(x))
    ebm = ConstrainedEBM(ImplicitSphere(2), hidden=[4], n_iter=1)
    ebm.energy_net.float()
    ebm.fit(torch.nn.functional.pad(data, (0, 1)))  # (an unfitted model is not saved)
    ebm.save(tmp_path / "e.pt")
    assert next(ConstrainedEBM.load(tmp_path / "e.pt", ImplicitSphere(2))
                .energy_net.parameters()).dtype == torch.float32
    # A checkpoint from before the dtype was recorded loads as before: float64.
    record = torch.load(tmp_path / "m.pt", weights_only=True)
    del record["dtype"]
    torch.save(record, tmp_path / "old.pt")
    assert NeuralImplicitManifold.load(tmp_path / "old.pt").dtype == torch.float64


# ---------------------------------------------------------------- manifold identity
def _closure_sphere(r):
    return lambda p: (p * p).sum(-1, keepdim=True) - r * r


def _seeded(build, seed):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def _mdf(radial=0.0, seed=0):
    from implicit_geom.manifolds import MDFNetwork, NetworkImplicitManifold

    return NetworkImplicitManifold(_seeded(lambda: MDFNetwork(3, 1, hidden=(8,), radial=radial),
                                           seed), 3)


def _residual(seed):
    from implicit_geom.manifolds import NetworkImplicitManifold
    from implicit_geom.manifolds.residual import ResidualMDFNetwork

    return NetworkImplicitManifold(_seeded(lambda: ResidualMDFNetwork(3, 1, hidden=(8,)), seed), 3)


def _gs(name):
    # Hypersphere(2) and Hyperboloid(2): both of dimension 2 in R^3.
    from geomstats.geometry.hyperboloid import Hyperboloid
    from geomstats.geometry.hypersphere import Hypersphere

    from implicit_geom.manifolds import as_implicit

    return as_implicit(Hypersphere(2) if name == "sphere" else Hyperboloid(2))


def _learned(seed):
    from implicit_geom.learning import NeuralImplicitManifold

    return NeuralImplicitManifold(3, 1, hidden=(8,), seed=seed, radial=1.0, progress=False)


def _kinds():
    from implicit_geom.manifolds import (ImplicitManifold, ImplicitSphere, ImplicitTorus,
                                         from_sympy, intersection, product, union)

    S = ImplicitSphere
    return {
        # name: (build the saved manifold, build another of the same class and dimensions)
        "sphere radius": (lambda: S(2, 1.0), lambda: S(2, 2.0)),
        "sphere centre": (lambda: S(2, center=[0.0, 0, 0]), lambda: S(2, center=[0.5, 0, 0])),
        "torus": (lambda: ImplicitTorus(2.0, 1.0), lambda: ImplicitTorus(2.0, 0.5)),
        "sympy": (lambda: from_sympy("x**2 + y**2 + z**2 - 1", "x y z"),
                  lambda: from_sympy("x**2 + y**2 + z**2 - 4", "x y z")),
        "geomstats": (lambda: _gs("sphere"), lambda: _gs("hyperboloid")),
        "product": (lambda: product(S(1), S(1)), lambda: product(S(1), S(1, 2.0))),
        "intersection": (lambda: intersection(S(2), S(2, center=[1.0, 0, 0])),
                         lambda: intersection(S(2), S(2, center=[1.5, 0, 0]))),
        "union": (lambda: union(S(2), S(2, center=[3.0, 0, 0])),
                  lambda: union(S(2), S(2, center=[4.0, 0, 0]))),
        "plain F": (lambda: ImplicitManifold(_closure_sphere(1.0), 3),
                    lambda: ImplicitManifold(_closure_sphere(2.0), 3)),
        "mdf radial": (lambda: _mdf(0.0), lambda: _mdf(1.0)),
        "mdf weights": (lambda: _mdf(seed=0), lambda: _mdf(seed=1)),
        "residual": (lambda: _residual(0), lambda: _residual(1)),
        "learned": (lambda: _learned(0), lambda: _learned(1)),
    }


KINDS = sorted(_kinds())


@pytest.mark.parametrize("kind", KINDS)
def test_manifold_identity_tells_apart_parameters_and_matches_a_rebuild(kind, tmp_path):
    # Catches the fingerprint blind to defining parameters that are no tensors
    # of the state dict (a sympy manifold's expressions, a wrapped geomstats
    # space, an MDF's radial weight, a plain F's numbers: equal before), and a
    # fingerprint so strict that an identical rebuild is refused.
    from implicit_geom.learning.checkpoint import check_manifolds, manifold_identity

    build, other = _kinds()[kind]
    saved = manifold_identity(build())
    assert manifold_identity(build()) == saved
    check_manifolds([saved], [build()], tmp_path / "c.pt")  # an identical rebuild passes
    assert {k: manifold_identity(other())[k] for k in ("class", "dim", "ambient_dim")} == \
        {k: saved[k] for k in ("class", "dim", "ambient_dim")}
    with pytest.raises(CheckpointError, match="check_manifold=False"):
        check_manifolds([saved], [other()], tmp_path / "c.pt", "the model was saved on")
    with pytest.warns(UserWarning, match="loaded anyway"):
        check_manifolds([saved], [other()], tmp_path / "c.pt", check_manifold=False)


def test_fingerprint_version_1_records_are_checked_as_written(tmp_path):
    # Records written before version 2 (no defining parameters, no numbers of
    # a plain F) are compared with version 1's fingerprint: catches every old
    # union or mixture checkpoint refused once the fingerprint grew. They keep
    # version 1's blind spots (two sympy spheres), and a record from a newer
    # library is refused by name.
    from implicit_geom.learning.checkpoint import check_manifolds, manifold_identity

    kinds = _kinds()
    old = manifold_identity(kinds["sphere radius"][0](), version=1)
    assert set(old) == {"class", "dim", "ambient_dim", "fingerprint"}
    check_manifolds([old], [kinds["sphere radius"][0]()], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="another state"):  # radii are buffers: seen in 1
        check_manifolds([old], [kinds["sphere radius"][1]()], tmp_path / "c.pt")
    a, b = kinds["sympy"]
    check_manifolds([manifold_identity(a(), version=1)], [b()], tmp_path / "c.pt")
    future = {**manifold_identity(a()), "fingerprint_version": 99}
    with pytest.raises(CheckpointError, match="fingerprint version"):
        check_manifolds([future], [a()], tmp_path / "c.pt")


def test_plain_f_numbers_from_numpy_are_read_by_value():
    # Catches closures and globals holding numpy scalars: np.float32 was seen by
    # type name only (r=1 and r=2 had one fingerprint: a false accept), and
    # np.float64 by numpy's repr, 'np.float64(1.0)' on numpy 2 and '1.0' on
    # numpy 1 (a false refusal across them); now both as Python numbers.
    import numpy as np

    from implicit_geom.learning.checkpoint import manifold_identity
    from implicit_geom.manifolds import ImplicitManifold
    from implicit_geom.manifolds.state import _portable_repr

    def sphere(r):
        return ImplicitManifold(lambda p: (p * p).sum(-1, keepdim=True) - float(r) ** 2, 3)

    assert (manifold_identity(sphere(np.float32(1.0)))
            != manifold_identity(sphere(np.float32(2.0))))
    assert manifold_identity(sphere(np.float32(1.0))) == manifold_identity(sphere(np.float32(1)))
    assert _portable_repr(np.float64(1.5)) == _portable_repr(1.5) == "1.5"
    assert _portable_repr([np.int64(3), np.float32(0.5), True]) == "[3, 0.5, True]"
