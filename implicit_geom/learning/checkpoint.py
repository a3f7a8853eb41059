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
import zipfile
from pathlib import Path

import torch

from ..exceptions import CheckpointError

FORMAT = "implicit_geom.checkpoint"
VERSION = 1


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
