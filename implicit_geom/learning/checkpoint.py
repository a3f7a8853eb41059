"""Atomic, weights-only checkpoints: a JSON configuration plus tensors in one file.

The file is a ``torch.save`` of a plain dict (strings, numbers, lists, dicts and
tensors only), read back with ``torch.load(weights_only=True)`` so loading never
executes pickled code. It is written to a temporary file in the target folder
and moved into place with ``os.replace``: a crash leaves the old file or none,
never half of one.
"""

import json
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
#: numbers of a plain F; its records are still checked as they were made.
FINGERPRINT_VERSION = 2


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


def manifold_identity(manifold, version=FINGERPRINT_VERSION):
    """What a checkpoint records of the manifold a density was fitted on:
    its class, dimensions, the portable fingerprint of its state
    (:func:`~implicit_geom.manifolds.state._state_fingerprint`: the
    state dict, the defining parameters that are no tensors, a plain F's
    numbers; no working settings or ids) and, readable for the messages,
    its own defining parameters (radius, expressions, wrapped space).
    ``version=1`` is the record of checkpoints written before version 2."""
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
    return out


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
    given = [manifold_identity(p, s.get("fingerprint_version", 1)) for s, p in zip(saved, pieces)]
    for i, (want, got) in enumerate(zip(saved, given)):
        if want == got:
            continue
        what = ", ".join(f"{key} {got.get(key)!r} (saved: {want.get(key)!r})"
                         for key in ("class", "dim", "ambient_dim") if want.get(key) != got[key])
        if not what and isinstance(want.get("params"), dict):
            mine, theirs = got["params"], want["params"]
            what = ", ".join(f"{key} {mine.get(key)!r} (saved: {theirs.get(key)!r})"
                             for key in sorted(set(mine) | set(theirs))
                             if mine.get(key) != theirs.get(key))
        what = what or ("the same class and dimensions, another state (weights, parameters, "
                        "centre, radius, those of a component...)")
        where = [j for j, other in enumerate(given) if other == want]
        hint = (f"; the saved piece {i} was given as piece {where[0]}: hand the pieces in "
                "the saved models' order" if where else "")
        name = f"piece {i} ({pieces[i].name})" if len(pieces) > 1 else pieces[i].name
        message = f"{path}: {name} is not the manifold {whose.format(i=i)}: {what}{hint}"
        if check_manifold:
            raise CheckpointError(
                f"{message}. A density scored on another manifold than its own is wrong "
                "(its normalising constant and support are the saved manifold's); if this "
                "one is the same manifold rebuilt otherwise (e.g. a plain F moved or run "
                "by another Python), load with check_manifold=False")
        warnings.warn(f"{message} (loaded anyway: check_manifold=False)", UserWarning,
                      stacklevel=3)
