"""Trainer: cosine schedule, history, resumable state, weight decay, divergence detection,
batches with replacement, clipping, validation with early stopping, progress lines."""

import io
import re

import pytest
import torch

from implicit_geom import ImplicitGeomError, TrainingDivergedError
from implicit_geom.learning import Trainer, cosine_lr
from implicit_geom.progress import Progress


def test_cosine_schedule():
    assert cosine_lr(1.0, 0, 10) == 1.0
    assert cosine_lr(1.0, 5, 10) == pytest.approx(0.505)
    assert cosine_lr(1.0, 10, 10) == pytest.approx(0.01)
    assert cosine_lr(1.0, 25, 10) == pytest.approx(0.01)


W_TRUE = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def regression(trainer, w, data, epochs):
    def loss_fn(batch):
        loss = ((batch @ (w - W_TRUE)) ** 2).mean()
        return loss, {"half": 0.5 * float(loss.detach())}

    return trainer.run(loss_fn, data, epochs, batch_size=8,
                       generator=torch.Generator().manual_seed(0))


def test_training_reduces_the_loss_and_records_history():
    data = torch.randn(32, 3, dtype=torch.float64)
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    trainer = Trainer([w], lr=0.1, total_epochs=40, progress=False)
    history = regression(trainer, w, data, 40)
    assert trainer.epoch == 40 and len(history["loss"]) == 40
    assert history["loss"][-1] < 1e-3 * history["loss"][0]
    assert history["half"][0] == pytest.approx(0.5 * history["loss"][0])
    assert history["lr"][0] == 0.1 and history["lr"][-1] < 0.01


def test_state_dict_resumes_identically():
    data = torch.randn(32, 3, dtype=torch.float64)
    w1 = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t1 = Trainer([w1], lr=0.1, total_epochs=10, progress=False)
    regression(t1, w1, data, 4)
    w2 = w1.detach().clone().requires_grad_(True)
    t2 = Trainer([w2], lr=0.1, total_epochs=10, progress=False)
    t2.load_state_dict(t1.state_dict())
    regression(t1, w1, data, 3)
    regression(t2, w2, data, 3)
    assert torch.equal(w1, w2) and t1.history == t2.history and t2.epoch == 7


def test_weight_decay_is_decoupled():
    # With a zero loss gradient AdamW only shrinks the weights, by (1 - lr*wd)
    # per step; coupled L2 (Adam's weight_decay) would move them by ~lr per
    # step instead, and a decay that is not passed on would not move them.
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    trainer = Trainer([w], lr=0.1, total_epochs=1, lr_floor=1.0, weight_decay=0.5,
                      progress=False)
    trainer.run(lambda b: ((w * 0.0).sum(), {}), torch.zeros(32, 1), 1, batch_size=8)
    assert torch.allclose(w.detach(), torch.full((3,), 0.95 ** 4, dtype=torch.float64),
                          rtol=1e-12)
    with pytest.raises(ValueError, match="weight_decay"):
        Trainer([w], weight_decay=-1.0)


def test_divergence_raises():
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    trainer = Trainer([w], progress=False)
    with pytest.raises(ImplicitGeomError, match="diverged") as info:
        trainer.run(lambda b: ((w * float("nan")).sum(), {}), torch.zeros(4, 1), 1, 4)
    # Callers that catch floating-point trouble generically see it too.
    assert isinstance(info.value, (TrainingDivergedError, FloatingPointError))
    assert torch.equal(w, torch.ones(1, dtype=torch.float64))  # no step was taken


def test_tuple_data_is_batched_together():
    points = torch.arange(20, dtype=torch.float64)[:, None]
    labels = 2 * torch.arange(20, dtype=torch.float64)
    seen = []
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def loss_fn(x, y):
        assert torch.equal(y, 2 * x[:, 0])  # rows stay aligned through the shuffle
        seen.append(x[:, 0])
        return (w * x).sum(), {}

    Trainer([w], progress=False).run(loss_fn, (points, labels), 1, batch_size=6,
                                     generator=torch.Generator().manual_seed(0))
    assert [len(s) for s in seen] == [6, 6, 6, 2]
    assert torch.equal(torch.sort(torch.cat(seen)).values, points[:, 0])
    with pytest.raises(ValueError, match="first dimension"):
        Trainer([w], progress=False).run(loss_fn, (points, labels[:3]), 1, 4)


def test_replacement_sampling_is_one_seeded_batch_per_epoch():
    # Catches an epoch that loops over the data, batches without replacement
    # or larger than the data, or draws that ignore the generator.
    points = torch.arange(5, dtype=torch.float64)[:, None]
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)

    def collect(seed):
        seen = []

        def loss_fn(x):
            seen.append(x[:, 0].clone())
            return (w * x).sum(), {}

        Trainer([w], progress=False).run(loss_fn, points, 30, batch_size=8, sampling="replacement",
                                         generator=torch.Generator().manual_seed(seed))
        return torch.stack(seen)

    batches = collect(0)
    assert batches.shape == (30, 5)  # one step per epoch, min(batch_size, n) rows
    assert any(len(set(b.tolist())) < 5 for b in batches)  # repeats: with replacement
    assert torch.equal(batches, collect(0)) and not torch.equal(batches, collect(1))
    with pytest.raises(ValueError, match="sampling"):
        Trainer([w], progress=False).run(lambda x: ((w * x).sum(), {}), points, 1, 2,
                                         sampling="bootstrap")


def test_gradient_clipping_records_the_norm_and_clips():
    # Catches clipping that is skipped or recorded after clipping.
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([30.0, 40.0], dtype=torch.float64)  # gradient norm 50 at w = 0
    trainer = Trainer([w], lr=1e-3, grad_clip=1.0, progress=False)
    trainer.run(lambda x: (-(w * target).sum(), {}), torch.zeros(1, 1), 1, 1)
    assert trainer.history["grad_norm"] == [pytest.approx(50.0)]
    assert w.grad.norm() == pytest.approx(1.0)


def test_validation_early_stopping_and_best_restore():
    # Catches a validation that is not called on schedule, patience counted in
    # epochs instead of validations, and ending with the last weights.
    w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    scores = iter([5.0, 4.0, 3.0, 3.5, 4.0, 9.0, 9.0])
    snapshots = []

    def validation():
        snapshots.append(w.detach().clone())
        return next(scores)

    trainer = Trainer([w], lr=0.1, total_epochs=100, progress=False)
    trainer.run(lambda x: (-(w * x).sum(), {}), torch.ones(4, 1), 100, 4,
                validation=validation, val_every=2, patience=2)
    assert trainer.stopped_early and trainer.epoch == 10
    assert trainer.validation_history == {"epoch": [2, 4, 6, 8, 10],
                                          "loss": [5.0, 4.0, 3.0, 3.5, 4.0]}
    assert trainer.best_epoch == 6
    assert torch.equal(w.detach(), snapshots[2]) and not torch.equal(snapshots[2], snapshots[4])
    state = trainer.state_dict()
    again = Trainer([w], progress=False)
    again.load_state_dict(state)
    assert again.validation_history == trainer.validation_history and again.best_epoch == 6


def test_progress_lines_when_not_a_terminal():
    # Under pytest stdout is not a terminal: progress must come as whole lines
    # (no carriage-return bars), with the step count and the reported values.
    stream = io.StringIO()
    with Progress(3, "fitting X", interval=0.0, stream=stream) as bar:
        for _ in range(3):
            bar.update(loss=0.5)
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 3
    assert re.fullmatch(r"fitting X: 1/3 \(33%\) loss=0\.5 \[\d+ s, ~\d+ s left\]", lines[0])
    assert lines[-1].startswith("fitting X: 3/3 (100%) loss=0.5 [done in")
    quiet = io.StringIO()
    with Progress(3, "x", enabled=False, interval=0.0, stream=quiet) as bar:
        bar.update()
    assert quiet.getvalue() == ""
