"""The box-clamped (unconstrained) Langevin sampler shared by the ambient EBM and MDF negatives."""

import pytest
import torch

from implicit_geom.sampling.ambient import BoxLangevin


def test_box_langevin_samples_a_gaussian():
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4000, 2, dtype=torch.float64)
    lo, hi = torch.full((2,), -10.0, dtype=torch.float64), torch.full((2,), 10.0, dtype=torch.float64)
    scale = torch.tensor([1.0, 0.5], dtype=torch.float64)
    x = BoxLangevin.from_step(lambda z: 0.5 * (z / scale).square().sum(-1), lo, hi, 0.2,
                             gen).run(x0, 300)
    assert x.mean(0).abs().max() < 0.05
    # ULA with h = 0.2 is biased by O(h^2) only.
    assert x.std(0).numpy() == pytest.approx(scale.numpy(), rel=0.05)
    clamped = BoxLangevin.from_step(lambda z: -5 * z.sum(-1), lo * 0 - 1, hi * 0 + 1, 0.5,
                                   gen).run(x0, 50)
    assert float(clamped.abs().max()) <= 1.0
    with pytest.raises(ValueError):
        BoxLangevin(lambda z: z.sum(-1), lo, hi, -1.0, 1.0)


def test_box_langevin_with_a_constant_energy_is_a_random_walk():
    # Catches autograd's error for an energy with no graph to x (a constant).
    lo, hi = torch.full((2,), -1.0, dtype=torch.float64), torch.full((2,), 1.0, dtype=torch.float64)
    x0 = torch.zeros(8, 2, dtype=torch.float64)
    walks = [BoxLangevin.from_step(energy, lo, hi, 0.1, torch.Generator().manual_seed(0)).run(x0, 5)
             for energy in (lambda z: torch.zeros(z.shape[0], dtype=z.dtype),
                            lambda z: 0 * z.sum(-1))]
    assert torch.equal(walks[0], walks[1])
