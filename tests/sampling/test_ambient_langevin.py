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


def test_adjusted_chains_are_exact_where_unadjusted_ones_are_biased():
    # A Gaussian (std 0.5) with a large step h = 0.6: the unadjusted chain's
    # stationary std is 0.625 (h^2 / (1 - (1 - h^2 / 2 s^2)^2)), the
    # Metropolis-adjusted one's 0.5. Catches a wrong MH ratio (e.g. the
    # proposal terms swapped: std far from 0.5) or adjusted=True ignored.
    lo = torch.full((2,), -10.0, dtype=torch.float64)

    def energy(x):
        return (x * x).sum(-1) / (2 * 0.25)

    stds = {}
    for adjusted in (False, True):
        chain = BoxLangevin.from_step(energy, lo, -lo, 0.6, torch.Generator().manual_seed(0),
                                      adjusted=adjusted)
        stds[adjusted] = chain.run(torch.zeros(4000, 2, dtype=torch.float64), 300).std(0)
    assert torch.allclose(stds[False], torch.tensor(0.625, dtype=torch.float64), rtol=0.04)
    assert torch.allclose(stds[True], torch.tensor(0.5, dtype=torch.float64), rtol=0.04)
    assert 0.5 < float(chain.acceptance_rate.mean()) < 1


def test_adjusted_chains_reject_moves_out_of_the_box():
    # A flat energy on the unit square: moves that leave it are rejected (not
    # clamped, which piles mass on the faces), so the law is uniform
    # (variance 1/12 per axis).
    lo, hi = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    chain = BoxLangevin.from_step(lambda x: 0 * x.sum(-1), lo, hi, 0.3,
                                  torch.Generator().manual_seed(1), adjusted=True)
    x = chain.run(torch.full((4000, 2), 0.5, dtype=torch.float64), 300)
    assert bool(((x >= 0) & (x <= 1)).all())
    assert torch.allclose(x.var(0), torch.tensor(1 / 12, dtype=torch.float64), rtol=0.05)
