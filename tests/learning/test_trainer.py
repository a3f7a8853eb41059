"""Trainer: cosine schedule, history, resumable state, divergence detection."""

import pytest
import torch

from implicit_geom import ImplicitGeomError
from implicit_geom.learning import Trainer, cosine_lr


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


def test_divergence_raises():
    w = torch.ones(1, dtype=torch.float64, requires_grad=True)
    trainer = Trainer([w], progress=False)
    with pytest.raises(ImplicitGeomError, match="diverged"):
        trainer.run(lambda b: ((w * float("nan")).sum(), {}), torch.zeros(4, 1), 1, 4)


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
