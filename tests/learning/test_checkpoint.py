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
