"""Atomic, weights-only checkpoints: a JSON configuration plus tensors in one file.

The file is a ``torch.save`` of a plain dict (strings, numbers, lists, dicts and
tensors only), read back with ``torch.load(weights_only=True)`` so loading never
executes pickled code. It is written to a temporary file in the target folder
and moved into place with ``os.replace``: a crash leaves the old file or none,
never half of one.
"""

import hashlib
import json
import math
import os
import pickle
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path

import torch

from ..exceptions import CheckpointError

FORMAT = "implicit_geom.checkpoint"
VERSION = 1
#: Version of the manifold fingerprint a checkpoint records (see
#: :func:`manifold_identity`): 1 had no ``_fingerprint_params`` and no
#: numbers of a plain F, 2 named a plain F by module, qualified name and the
#: numbers of its code, 3 records its values at probe points; older records
#: are still checked as they were made.
FINGERPRINT_VERSION = 3
#: Points per group of probe points of a plain F (see :func:`manifold_identity`).
PROBE_POINTS = 16
#: Relative tolerance (of the largest |value| of a group) on a plain F's
#: values at its probe points; at least 64 eps of the coarser working dtype.
PROBE_RTOL = 1e-6


def dtype_name(dtype):
    """``torch.float32 -> "float32"``: a dtype as a checkpoint records it."""
    return str(dtype).removeprefix("torch.")


def checkpoint_dtype(record, path, default=torch.float64):
    """The floating dtype a checkpoint recorded (``record["dtype"]``); ``default``
    (float64, what older checkpoints hold) when it has none.

    Raises
    ------
    CheckpointError
        A recorded name that is not a floating torch dtype.
    """
    name = record.get("dtype")
    if name is None:
        return default
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise CheckpointError(f"checkpoint {path} records an invalid dtype {name!r}")
    return dtype


def save_checkpoint(path, kind, config, payload):
    """Write a checkpoint atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file (its folder must exist).
    kind : str
        What is saved (e.g. the class name); checked on load.
    config : dict
        JSON-serialisable constructor arguments.
    payload : dict
        Tensors and plain containers (state dicts, history...).

    Raises
    ------
    CheckpointError
        A missing folder, a folder as ``path``, or a file that cannot be
        written (permissions, full disk): ``path`` is then left as it was.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot save to {path}: folder {path.parent} does not exist")
    if path.is_dir():  # os.replace would fail only after the whole record is written
        raise CheckpointError(f"cannot save to {path}: it is a folder; give a file name")
    record = {"format": FORMAT, "version": VERSION, "kind": kind,
              "config": json.dumps(config, sort_keys=True), **payload}
    # An unwritable folder, a full disk, a failed rename: a named error (a bare
    # PermissionError or OSError before), the old file left as it was.
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise CheckpointError(f"cannot save to {path}: {err}") from err
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(record, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CheckpointError(f"cannot save to {path}: {err}") from err
        raise


def load_checkpoint(path, kind, required=()):
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str or os.PathLike
    kind : str
        Expected kind.
    required : iterable of str
        Payload keys that must be present.

    Returns
    -------
    config : dict
    record : dict
        The payload (and the header fields).

    Raises
    ------
    CheckpointError
        Missing, unreadable, corrupt, foreign or incompatible file.
    """
    path = Path(path)
    if path.is_dir():  # "not found" would send the user looking for a missing file
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        record = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, OSError,
            ValueError, KeyError, AttributeError, TypeError, struct.error) as err:
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {err}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an implicit_geom checkpoint")
    if record.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {record.get('version')!r}; this library "
            f"reads version {VERSION}")
    if record.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {record.get('kind')!r}, not a {kind!r}")
    missing = [key for key in required if key not in record]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}")
    try:
        config = json.loads(record["config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"checkpoint {path} has an invalid configuration: {err}") from err
    if not isinstance(config, dict):
        raise CheckpointError(f"checkpoint {path} has an invalid configuration")
    return config, record


def _readable(val):
    """A parameter as JSON stores it (tensors as float lists; long ones by shape)."""
    if isinstance(val, torch.Tensor):
        val = val.detach().cpu()
        if val.numel() > 16:
            return f"tensor of shape {tuple(val.shape)}"
        return val.double().tolist() if val.is_floating_point() else val.tolist()
    if isinstance(val, (list, tuple)):
        return [_readable(v) for v in val]
    return val if isinstance(val, (bool, int, float, str)) or val is None else repr(val)


def manifold_identity(manifold, version=FINGERPRINT_VERSION, probes=True):
    """What a checkpoint records of the manifold a density was fitted on:
    its class, dimensions, the portable fingerprint of its state
    (:func:`~implicit_geom.manifolds.state._state_fingerprint`: the
    state dict, the defining parameters that are no tensors; no working
    settings or ids), readable for the messages its own defining parameters
    (radius, expressions, wrapped space) and (version 3, ``probes``) the
    values of each plain callable F in it (a function, lambda, partial or
    callable object given to :class:`ImplicitManifold`, also as a piece of a
    product, intersection or union) at recorded points, ``"probes"``.

    A plain F is known by what it computes: its name and code said nothing
    of a network a lambda calls, a partial's arguments, a callable object's
    attributes or a called helper's constants (all accepted as the saved F),
    and refused one moved to another module or run by another Python. Its
    probe points (:data:`PROBE_POINTS` each, float64, stored with the values
    so that a load depends on no random generator) are a seeded cloud in its
    manifold's box (without one: a unit normal cloud), and a cloud at the
    manifold's own scale around where those land on it (spread a quarter of
    the landed points' extent: spheres of radii 1e-3 and 2e-3 differ by
    3e-6 in F, 3e-7 of its values at unit scale, 0.66 of them there). A load
    compares each group with :data:`PROBE_RTOL` of its largest value. An F
    that raises at its probe points is recorded by module, name and code as
    in version 2 (with a warning). ``version=1`` and ``2`` are the records
    of checkpoints written before."""
    from ..manifolds.state import _state_fingerprint  # learning builds on manifolds

    out = {"class": type(manifold).__name__, "dim": int(manifold.dim),
           "ambient_dim": int(manifold.ambient_dim),
           "fingerprint": _state_fingerprint(manifold, settings=False, version=version)}
    if version >= 2:
        hook = getattr(manifold, "_fingerprint_params", None)
        params = hook() if callable(hook) else {}
        # Through JSON, as load reads it back (tuples become lists).
        out["params"] = json.loads(json.dumps({k: _readable(v) for k, v in params.items()}))
        out["fingerprint_version"] = version
    if version >= 3 and probes:
        records = [_probe_record(*site) for site in _plain_sites(manifold)]
        if records:
            out["probes"] = records
        for rec in records:
            if "error" in rec:
                warnings.warn(
                    f"the plain F {rec['site']} of {getattr(manifold, 'name', manifold)} raised "
                    f"at the probe points a checkpoint records its values at ({rec['error']}); "
                    "it is recorded by its module, name and code instead: a load refuses it "
                    "once moved to another module or run by another Python (then load with "
                    "check_manifold=False)", UserWarning, stacklevel=3)
    return out


def _plain_sites(manifold):
    """``(path, owner, key, F)`` of each plain callable F in the manifold's
    tree (pieces of products, intersections, unions...), in a fixed order."""
    from ..manifolds.state import _is_plain_f

    named = (manifold.named_modules() if isinstance(manifold, torch.nn.Module)
             else [("", manifold)])
    for name, module in named:
        for key, val in sorted(vars(module).items()):
            if _is_plain_f(key, val):
                yield (f"{name}.{key}" if name else key), module, key, val


def _plain_f_hash(key, fn):
    """A plain F by module, qualified name and code (as version 2 saw it):
    the comparison left where F cannot be evaluated at its probe points."""
    from ..manifolds.state import _plain_f_text

    return hashlib.sha1("\n".join(_plain_f_text(key, fn)).encode()).hexdigest()


def _evaluate(fn, owner, points):
    """F at float64 ``points`` in its manifold's dtype and device, float64 (P, k) on the CPU."""
    with torch.no_grad():
        out = torch.as_tensor(fn(points.to(owner.device, owner.dtype)))
    return out.detach().cpu().double().reshape(points.shape[0], -1)


def _probe_points(owner):
    """The groups of probe points of a plain F on ``owner`` (see :func:`manifold_identity`)."""
    n = int(owner.ambient_dim)
    gen = torch.Generator().manual_seed(0)
    if owner.bounds is not None:
        low, high = (b.detach().cpu().double() for b in owner.bounds)
        first = ("box", low + (high - low) * torch.rand(PROBE_POINTS, n, generator=gen,
                                                        dtype=torch.float64))
    else:
        first = ("unit", torch.randn(PROBE_POINTS, n, generator=gen, dtype=torch.float64))
    groups = [first]
    try:  # (any failure to land: no group at M's scale, the first one stays)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = owner.solve_projection(first[1].to(owner.device, owner.dtype),
                                         closest=False, far=True)
        on = res.x[res.converged].detach().cpu().double()
    except Exception:  # noqa: BLE001 (F is the user's code: anything may come out)
        on = torch.zeros(0, n, dtype=torch.float64)
    on = on[torch.isfinite(on).all(-1)]
    spread = float((on.amax(0) - on.amin(0)).max()) if on.shape[0] >= 2 else 0.0
    if 0.0 < spread < math.inf:
        idx = torch.arange(PROBE_POINTS) % on.shape[0]
        noise = torch.randn(PROBE_POINTS, n, generator=gen, dtype=torch.float64)
        groups.append(("near", on[idx] + 0.25 * spread * noise))
    return groups


def _probe_record(path, owner, key, fn):
    """A plain F's record: its values at its probe points (or, where it
    raises there or has no manifold to take points from, the error)."""
    from ..manifolds.implicit import ImplicitManifold

    rec = {"site": path, "exact": _plain_f_hash(key, fn)}
    if not isinstance(owner, ImplicitManifold):
        rec["error"] = f"held by a {type(owner).__name__}, not by an ImplicitManifold"
        return rec
    rec["dtype"] = dtype_name(owner.dtype)
    try:
        rec["groups"] = [{"name": name, "points": pts.tolist(),
                          "values": _evaluate(fn, owner, pts).tolist()}
                         for name, pts in _probe_points(owner)]
    except Exception as err:  # noqa: BLE001 (F is the user's code)
        rec.pop("dtype")
        rec["error"] = f"{type(err).__name__}: {err}"
    return rec


def _relative_difference(want, got):
    """Largest ``|got - want|`` over the largest finite ``|value|`` of both,
    NaN-aware: inf where the shapes, the NaN or the infinite entries differ."""
    if want.shape != got.shape:
        return math.inf
    nan = want.isnan()
    if not torch.equal(nan, got.isnan()):
        return math.inf
    finite = want.isfinite() & got.isfinite()
    if not torch.equal(want[~finite & ~nan], got[~finite & ~nan]):  # infinities, by sign
        return math.inf
    if not bool(finite.any()):
        return 0.0
    diff = float((got - want)[finite].abs().max())
    scale = max(float(want[finite].abs().max()), float(got[finite].abs().max()))
    return diff / scale if diff > 0 else 0.0


def _check_probes(saved, manifold, path):
    """Compare the plain Fs of ``manifold`` with a record's ``probes``.
    Returns ``(problem, notes)``: what differs (None where nothing does)
    and the F compared by name and code only (they raised at the probes)."""
    corrupt = CheckpointError(f"checkpoint {path} has a corrupt record of its manifolds' "
                              "plain callables")
    if not (isinstance(saved, list) and all(isinstance(r, dict) and isinstance(r.get("site"), str)
                                            for r in saved)):
        raise corrupt
    sites = {site: (owner, key, fn) for site, owner, key, fn in _plain_sites(manifold)}
    names = sorted(r["site"] for r in saved)
    if names != sorted(sites):
        return f"plain callables at {sorted(sites)} (saved: {names})", []
    notes = []
    for rec in saved:
        site = rec["site"]
        owner, key, fn = sites[site]
        same_code = _plain_f_hash(key, fn) == rec.get("exact")
        if "groups" not in rec:
            if same_code:
                continue
            return (f"the plain F {site}, recorded by module, name and code as it raised at "
                    f"its probe points when saved ({rec.get('error')}), has another module, "
                    "name or code"), notes
        try:
            groups = [(str(g["name"]), torch.tensor(g["points"], dtype=torch.float64),
                       torch.tensor(g["values"], dtype=torch.float64)) for g in rec["groups"]]
            saved_dtype = getattr(torch, rec["dtype"])
            eps = max(torch.finfo(saved_dtype).eps, torch.finfo(owner.dtype).eps)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:
            raise corrupt from err
        if any(pts.ndim != 2 or pts.shape[1] != owner.ambient_dim for _, pts, _ in groups):
            return (f"the plain F {site} takes {owner.ambient_dim} coordinates, not the saved "
                    f"F's {groups[0][1].shape[-1]}"), notes
        try:
            got = [_evaluate(fn, owner, pts) for _, pts, _ in groups]
        except Exception as err:  # noqa: BLE001 (F is the user's code)
            error = f"{type(err).__name__}: {err}"
            if same_code:
                notes.append(f"the plain F {site} raised at the saved probe points ({error}); "
                             "accepted as its module, name and code are the saved F's")
                continue
            return (f"the plain F {site} raised at the saved probe points ({error}) and "
                    "its module, name or code differ from the saved F's"), notes
        tol = max(PROBE_RTOL, 64 * eps)
        for (name, _, want), values in zip(groups, got):
            diff = _relative_difference(want, values)
            if not diff <= tol:
                return (f"the values of the plain F {site} differ from the saved F's at "
                        f"its probe points ({name}: max relative difference {diff:.3g}, "
                        f"tolerance {tol:.3g}"
                        + ("; NaN, infinite or shaped otherwise" if diff == math.inf else "")
                        + ")"), notes
    return None, notes


def check_manifolds(saved, pieces, path, whose="model {i} was saved on", check_manifold=True):
    """Raise CheckpointError unless ``pieces`` are, in order, the manifolds a
    checkpoint was saved on (``saved``: their :func:`manifold_identity`);
    ``whose`` completes the message (``{i}``: the piece's position).
    ``check_manifold=False``: warn instead (the caller's override).

    A record of an older fingerprint version is compared with the same
    version's fingerprint of ``pieces``."""
    if not (isinstance(saved, list) and len(saved) == len(pieces)
            and all(isinstance(s, dict) for s in saved)):
        raise CheckpointError(f"checkpoint {path} has a corrupt record of its manifolds")
    versions = {s.get("fingerprint_version", 1) for s in saved}
    if not all(isinstance(v, int) and 1 <= v <= FINGERPRINT_VERSION for v in versions):
        raise CheckpointError(
            f"checkpoint {path} records its manifolds with fingerprint version "
            f"{sorted(versions, key=str)}; this library reads versions 1 to {FINGERPRINT_VERSION}")
    # The exact part (version 3: without the plain Fs' values, compared below
    # at the saved probe points; the given manifolds' own points are not needed).
    given = [manifold_identity(p, s.get("fingerprint_version", 1), probes=False)
             for s, p in zip(saved, pieces)]

    def exact(record):
        return {k: v for k, v in record.items() if k != "probes"}

    def compare(want, j):
        """``(same, what, notes)`` of the saved record ``want`` and piece ``j``:
        ``what`` says how their plain Fs differ (None: not they)."""
        if exact(want) != given[j]:
            return False, None, []
        if want.get("fingerprint_version", 1) < 3:
            return True, None, []
        what, notes = _check_probes(want.get("probes", []), pieces[j], path)
        return what is None, what, notes

    for i, (want, got) in enumerate(zip(saved, given)):
        same, what, notes = compare(want, i)
        for note in notes:
            warnings.warn(f"{path}: {note}", UserWarning, stacklevel=3)
        if same:
            continue
        what = what or ", ".join(f"{key} {got.get(key)!r} (saved: {want.get(key)!r})"
                                 for key in ("class", "dim", "ambient_dim")
                                 if want.get(key) != got[key])
        if not what and isinstance(want.get("params"), dict):
            mine, theirs = got["params"], want["params"]
            what = ", ".join(f"{key} {mine.get(key)!r} (saved: {theirs.get(key)!r})"
                             for key in sorted(set(mine) | set(theirs))
                             if mine.get(key) != theirs.get(key))
        what = what or ("the same class and dimensions, another state (weights, parameters, "
                        "centre, radius, those of a component...)")
        where = [j for j in range(len(pieces)) if j != i and compare(want, j)[0]]
        hint = (f"; the saved piece {i} was given as piece {where[0]}: hand the pieces in "
                "the saved models' order" if where else "")
        name = f"piece {i} ({pieces[i].name})" if len(pieces) > 1 else pieces[i].name
        message = f"{path}: {name} is not the manifold {whose.format(i=i)}: {what}{hint}"
        if check_manifold:
            raise CheckpointError(
                f"{message}. A density scored on another manifold than its own is wrong "
                "(its normalising constant and support are the saved manifold's); if this "
                "one is the same manifold rebuilt otherwise (e.g., for checkpoints before "
                "version 3, a plain F moved or run by another Python), load with "
                "check_manifold=False")
        warnings.warn(f"{message} (loaded anyway: check_manifold=False)", UserWarning,
                      stacklevel=3)
