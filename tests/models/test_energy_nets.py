"""EnergyMLP shapes, dtype, seeding and validation."""

import pytest
import torch

from implicit_geom.models import EnergyMLP


def test_shapes_dtype_and_seeded_init():
    net = EnergyMLP(3, hidden=(16, 8), seed=1)
    x = torch.randn(5, 4, 3, dtype=torch.float64)
    assert net(x).shape == (5, 4)
    assert all(p.dtype == torch.float64 for p in net.parameters())
    same = EnergyMLP(3, hidden=(16, 8), seed=1)
    other = EnergyMLP(3, hidden=(16, 8), seed=2)
    assert torch.equal(net(x), same(x))
    assert not torch.equal(net(x), other(x))
    assert net.config() == {"dim": 3, "hidden": [16, 8], "activation": "silu"}


def test_invalid_arguments():
    with pytest.raises(ValueError):
        EnergyMLP(0)
    with pytest.raises(ValueError):
        EnergyMLP(2, activation="relu6")
