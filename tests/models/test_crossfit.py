"""K-fold cross-fitting of constrained EBMs (selection + geometric-mean ensemble)."""

import pytest
import torch

from implicit_geom import ImplicitSphere
from implicit_geom.datasets import von_mises_circle
from implicit_geom.models import EnergyMLP, SumEnergy, cross_fit_ebm
from implicit_geom.models.mixture import normalized_log_density
from implicit_geom.models.normalization import manifold_quadrature

FAST = dict(method="mle", n_iter=60, lr=1e-2, batch_size=512, val_every=5, patience=3,
            quadrature_resolution=128, step_size=0.3)


@pytest.fixture(scope="module")
def fitted():
    X = von_mises_circle(90, kappa=2.0, mu=0.5, seed=3)
    cands = {"plain": lambda k: EnergyMLP(2, hidden=(16,), seed=k),
             "fourier": lambda k: EnergyMLP(2, hidden=(16,), seed=k, fourier=8,
                                            max_frequency=4.0)}
    return X, cross_fit_ebm(ImplicitSphere(1), X, cands, n_folds=3, seed=7, **FAST)


def test_folds_partition_the_data_and_members_never_see_their_fold(fitted):
    # Catches overlapping/missing folds and a member trained on its own
    # held-out points (its probes are its training points on M).
    X, model = fitted
    folds = model.folds_
    assert sorted(torch.cat(folds).tolist()) == list(range(X.shape[0]))
    for held, member in zip(folds, model.members_):
        assert member._probe.shape[0] == X.shape[0] - held.numel()
        gap = torch.cdist(X[held], member._probe).min()
        assert float(gap) > 1e-9
        assert member.validation_history_ is not None  # early-stopped on the fold


def test_cv_score_is_the_held_out_nll_and_the_choice_its_minimum(fitted):
    # Catches a score measured on training points or on one fold only, and a
    # choice that is not the lowest score.
    X, model = fitted
    total = sum(float(-normalized_log_density(m, X[held]).sum())
                for held, m in zip(model.folds_, model.members_))
    assert model.cv_nll_[model.choice_] == pytest.approx(total / X.shape[0], rel=1e-12)
    assert model.choice_ == min(model.cv_nll_, key=model.cv_nll_.get)


def test_ensemble_is_the_renormalised_geometric_mean(fitted):
    # Catches a sum instead of a mean of energies (the product of K densities:
    # far too peaked), a stale or borrowed log Z (mass != 1), and the Hölder
    # bound log p >= mean_k log p_k failing (a wrong normaliser).
    _, model = fitted
    rule = manifold_quadrature(ImplicitSphere(1), 512)
    members = torch.stack([m.energy(rule.points) for m in model.members_])
    assert torch.allclose(model.energy(rule.points), members.mean(0), atol=1e-12)
    assert float((model.log_prob(rule.points).exp() * rule.weights).sum()) == pytest.approx(
        1.0, abs=1e-8)
    mean_member = torch.stack([m.log_prob(rule.points) for m in model.members_]).mean(0)
    gain = model.log_prob(rule.points) - mean_member
    assert float(gain.min()) >= -1e-9
    assert float(gain.max() - gain.min()) < 1e-9  # a constant: -log Z of the geometric mean
    assert model.nll(rule.points[:5]) == pytest.approx(float(-model.log_prob(rule.points[:5]).mean()))


def test_errors():
    X = von_mises_circle(10, seed=0)
    make = {"plain": lambda k: EnergyMLP(2, hidden=(4,), seed=k)}
    with pytest.raises(ValueError, match="n_folds"):
        cross_fit_ebm(ImplicitSphere(1), X, make, n_folds=1)
    with pytest.raises(ValueError, match="n_folds"):
        cross_fit_ebm(ImplicitSphere(1), X, make, n_folds=11)
    with pytest.raises(ValueError, match="candidate"):
        cross_fit_ebm(ImplicitSphere(1), X, {})
    with pytest.raises(ValueError, match="weights"):
        SumEnergy([EnergyMLP(2, hidden=(4,))], weights=[1.0, 2.0])


def test_cross_fitted_model_saves_and_loads(fitted, tmp_path):
    # The ensemble (a SumEnergy of fold fits) round-trips through the one
    # checkpoint format: catches the TypeError it used to raise, members
    # rebuilt in the wrong order or with lost weights (energies differ), and a
    # normaliser not recomputed for the loaded energy (mass != 1).
    from implicit_geom.models import ConstrainedEBM

    X, model = fitted
    path = tmp_path / "crossfit.pt"
    model.save(path)
    back = ConstrainedEBM.load(path, ImplicitSphere(1))
    assert isinstance(back.energy_net, SumEnergy)
    assert back.energy_net.weights == model.energy_net.weights
    rule = manifold_quadrature(ImplicitSphere(1), 512)
    assert torch.equal(back.energy(rule.points), model.energy(rule.points))
    assert torch.allclose(back.log_prob(X), model.log_prob(X), atol=1e-10)


def test_sum_of_kernel_energies_round_trips_and_adopt_keeps_kernels(tmp_path):
    # A SumEnergy with a fitted vMF-kernel member: adopting new data must not
    # re-anchor the member (catches kernels reset to the adopted points), and
    # the member's data-sized buffers and per-kernel factors survive save/load
    # (catches members rebuilt empty or with the k-NN rule).
    from implicit_geom.datasets import vmf_sphere
    from implicit_geom.models import AnchoredVMFEnergy, ConstrainedEBM

    X = vmf_sphere(80, [0.0, 0.0, 1.0], 6.0, seed=1)
    kernels = AnchoredVMFEnergy(hidden=(8,), fourier=4, seed=0, adapt_kernels=True)
    kernels.set_anchors(X[:60])
    with torch.no_grad():
        kernels.log_kappa_shift.copy_(torch.linspace(-1.0, 1.0, 60, dtype=torch.float64))
    anchors, shift = kernels.anchors.clone(), kernels.log_kappa_shift.detach().clone()
    ConstrainedEBM(ImplicitSphere(2), kernels, seed=0)._adopt(X[20:])
    assert torch.equal(kernels.anchors, anchors)
    assert torch.equal(kernels.log_kappa_shift, shift)
    energy = SumEnergy([kernels, EnergyMLP(3, hidden=(8,), seed=1)], weights=[0.5, 0.5])
    model = ConstrainedEBM(ImplicitSphere(2), energy, seed=0)
    model._adopt(X[20:])
    path = tmp_path / "sum.pt"
    model.save(path)
    back = ConstrainedEBM.load(path, ImplicitSphere(2))
    assert torch.equal(back.energy_net.nets[0].log_kappa_shift, kernels.log_kappa_shift)
    assert torch.equal(back.energy(X), model.energy(X))
