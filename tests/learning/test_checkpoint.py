"""Checkpoint files: round trip, weights-only, atomic, clear errors."""

import math

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


# ------------------------------------------------- plain F: values at probe points
def _module(tmp_path, filename, source, name=None):
    """Import ``source`` written to ``tmp_path/filename`` as module ``name``."""
    import importlib.util
    import textwrap

    path = tmp_path / filename
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sphere_f(x, r=1.0):
    return (x * x).sum(-1, keepdim=True) - r * r


class _Shell:
    """A callable object and a bound method: F of a radius held in ``self``."""

    def __init__(self, r):
        self.r = r

    def __call__(self, x):
        return _sphere_f(x, self.r)

    def level(self, x):
        return _sphere_f(x, self.r)


def _net_lambda(seed):
    from implicit_geom.manifolds import ImplicitManifold

    net = _seeded(lambda: torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(),
                                              torch.nn.Linear(8, 1)).double(), seed)
    return ImplicitManifold(lambda x: net(x), 3)


def _helper_constant(tmp_path, c):
    # The same module and function names, F calling a helper whose constant differs.
    from implicit_geom.manifolds import ImplicitManifold

    module = _module(tmp_path, f"shapes_{c}.py", f"""
        def helper(x):
            return (x * x).sum(-1, keepdim=True) - {c}

        def F(x):
            return helper(x)
        """, name="shapes")
    return ImplicitManifold(module.F, 3)


def _plain_false_accepts(tmp_path):
    import functools

    from implicit_geom.manifolds import ImplicitManifold, ImplicitSphere, product, union

    def plain(fn, **kwargs):
        return ImplicitManifold(fn, 3, **kwargs)

    return {
        # name: (the saved manifold, another that version 2 took for it)
        "lambda over a network": (lambda: _net_lambda(0), lambda: _net_lambda(1)),
        "partial": (lambda: plain(functools.partial(_sphere_f, r=1.0)),
                    lambda: plain(functools.partial(_sphere_f, r=2.0))),
        "callable object": (lambda: plain(_Shell(1.0)), lambda: plain(_Shell(2.0))),
        "bound method": (lambda: plain(_Shell(1.0).level), lambda: plain(_Shell(2.0).level)),
        "helper constant": (lambda: _helper_constant(tmp_path, 1.0),
                            lambda: _helper_constant(tmp_path, 4.0)),
        # Radius 1e-3 or 2e-3: 3e-6 of F's values at unit scale, seen at M's scale.
        "tiny sphere": (lambda: plain(functools.partial(_sphere_f, r=1e-3)),
                        lambda: plain(functools.partial(_sphere_f, r=2e-3))),
        "in a box": (lambda: plain(_Shell(1.0), bounds=([-2.0] * 3, [2.0] * 3)),
                     lambda: plain(_Shell(1.5), bounds=([-2.0] * 3, [2.0] * 3))),
        "union piece": (lambda: union(plain(_Shell(1.0)), ImplicitSphere(2, center=[3.0, 0, 0])),
                        lambda: union(plain(_Shell(1.1)), ImplicitSphere(2, center=[3.0, 0, 0]))),
        "product factor": (lambda: product(ImplicitSphere(1), plain(_Shell(1.0))),
                           lambda: product(ImplicitSphere(1), plain(_Shell(0.5)))),
    }


@pytest.mark.parametrize("kind", sorted(_plain_false_accepts(None)))
def test_plain_f_is_known_by_its_values(kind, tmp_path):
    # Catches the false accepts of fingerprint version 2, which knew a plain F
    # by module, qualified name and the numbers of its own code: a lambda
    # calling a network of other weights, a partial of another radius, a
    # callable object or bound method of another self.r, a helper with another
    # constant, a factor or piece of these, all had the saved F's fingerprint.
    # Version 3 compares F's values at the recorded probe points; version 2
    # records are still checked as written (their blind spot stays).
    from implicit_geom.learning.checkpoint import check_manifolds, manifold_identity

    build, other = _plain_false_accepts(tmp_path)[kind]
    check_manifolds([manifold_identity(build(), version=2)], [other()], tmp_path / "c.pt")
    saved = manifold_identity(build())
    assert saved["fingerprint_version"] == 3 and saved["probes"]
    check_manifolds([saved], [build()], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match=r"values of the plain F \S+ differ from the saved "
                                              r"F's .*max relative difference .*"
                                              "check_manifold=False"):
        check_manifolds([saved], [other()], tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="loaded anyway"):
        check_manifolds([saved], [other()], tmp_path / "c.pt", check_manifold=False)


def test_plain_f_moved_or_rewritten_is_accepted(tmp_path):
    # Catches the false refusals of version 2: F moved to another module (its
    # module name was in the fingerprint), or written with other code
    # constants (which another Python compiles otherwise: 3.14 drops small
    # ints from co_consts). The same values are the same F.
    import json

    from implicit_geom.learning.checkpoint import check_manifolds, manifold_identity
    from implicit_geom.manifolds import ImplicitManifold

    source = """
        def F(x):
            return (x * x).sum(-1, keepdim=True) - 1.0
        """
    first, moved = (_module(tmp_path, f"{name}.py", source) for name in ("place_a", "place_b"))
    assert first.F.__module__ != moved.F.__module__
    saved = json.loads(json.dumps(manifold_identity(ImplicitManifold(first.F, 3))))
    check_manifolds([saved], [ImplicitManifold(moved.F, 3)], tmp_path / "c.pt")
    check_manifolds([saved], [ImplicitManifold(lambda x: (x ** 2).sum(-1, keepdim=True) - 1, 3)],
                    tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="another state"):  # version 2: refused
        check_manifolds([manifold_identity(ImplicitManifold(first.F, 3), version=2)],
                        [ImplicitManifold(moved.F, 3)], tmp_path / "c.pt")


def test_plain_f_version_2_records_are_checked_as_written(tmp_path):
    # A record written before version 3 (a plain F by name and code, no
    # probes) is compared with version 2's fingerprint: catches older
    # checkpoints of a plain F refused (or their F evaluated) once it changed.
    from implicit_geom.learning.checkpoint import check_manifolds, manifold_identity
    from implicit_geom.manifolds import ImplicitManifold

    old = manifold_identity(ImplicitManifold(_closure_sphere(1.0), 3), version=2)
    assert old["fingerprint_version"] == 2 and "probes" not in old
    check_manifolds([old], [ImplicitManifold(_closure_sphere(1.0), 3)], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="another state"):
        check_manifolds([old], [ImplicitManifold(_closure_sphere(2.0), 3)], tmp_path / "c.pt")


def test_plain_f_raising_at_its_probes_falls_back_to_name_and_code(tmp_path):
    # An F that raises at the probe points must not make a valid manifold
    # unsavable or unloadable: catches a save or load failing on F's own
    # error. Raising when saved: recorded by module, name and code (version
    # 2's comparison), with a warning; raising only at load: accepted where
    # name and code are the saved F's, with a note; refused otherwise.
    from implicit_geom.learning.checkpoint import PROBE_POINTS, check_manifolds, manifold_identity
    from implicit_geom.manifolds import ImplicitManifold

    module = _module(tmp_path, "picky.py", f"""
        FAIL = []  # (a list: no number of F's code, the same name and code either way)

        def F(x):
            if FAIL or x.shape[0] == {PROBE_POINTS}:
                raise RuntimeError("no batches of {PROBE_POINTS}")
            return (x * x).sum(-1, keepdim=True) - 1.0

        def G(x):
            return F(x)

        def H(x):
            if FAIL:
                raise RuntimeError("not today")
            return (x * x).sum(-1, keepdim=True) - 1.0

        def K(x):
            return H(x)
        """)
    with pytest.warns(UserWarning, match="raised at the probe points.*module, name and code"):
        saved = manifold_identity(ImplicitManifold(module.F, 3))
    assert "groups" not in saved["probes"][0] and "no batches" in saved["probes"][0]["error"]
    check_manifolds([saved], [ImplicitManifold(module.F, 3)], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="raised at its probe points when saved"):
        check_manifolds([saved], [ImplicitManifold(module.G, 3)], tmp_path / "c.pt")

    saved = manifold_identity(ImplicitManifold(module.H, 3))
    assert saved["probes"][0]["groups"]
    module.FAIL.append(True)
    with pytest.warns(UserWarning, match="raised at the saved probe points .*not today.*accepted"):
        check_manifolds([saved], [ImplicitManifold(module.H, 3)], tmp_path / "c.pt")
    with pytest.raises(CheckpointError, match="raised at the saved probe points .*differ"):
        check_manifolds([saved], [ImplicitManifold(module.K, 3)], tmp_path / "c.pt")


def test_plain_f_values_compare_nan_aware():
    # NaN where the saved F was NaN is agreement (catches an F undefined at
    # some probes refused against itself); NaN elsewhere, another infinity or
    # another shape is a difference, and the scale is the largest finite value.
    from implicit_geom.learning.checkpoint import _relative_difference

    nan, inf = float("nan"), float("inf")
    want = torch.tensor([[1.0, nan], [-inf, 4.0]], dtype=torch.float64)
    assert _relative_difference(want, want.clone()) == 0.0
    assert _relative_difference(want, torch.tensor([[1.0, nan], [-inf, 4.0 + 4e-7]],
                                                   dtype=torch.float64)) == pytest.approx(1e-7)
    for got in ([[1.0, 2.0], [-inf, 4.0]], [[nan, nan], [-inf, 4.0]], [[1.0, nan], [inf, 4.0]],
                [[1.0, nan, 0.0], [-inf, 4.0, 0.0]]):
        assert _relative_difference(want, torch.tensor(got, dtype=torch.float64)) == math.inf
