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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt", "dir.pt", "junk.pt"]


class Payload:
    """Arbitrary object: weights-only loading must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"format": "implicit_geom.checkpoint", "obj": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "evil.pt", "Thing")
