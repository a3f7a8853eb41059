"""Constrained samplers: exactness within Monte Carlo error on sphere, torus,
intersection and union; Hausdorff measure; the unadjusted sampler's bias; API
contract (run, seeds, counters, validation)."""

import pytest
import torch
from geomstats.geometry.hypersphere import Hypersphere

from implicit_geom import InvalidPointError, ProjectionError
from implicit_geom.manifolds import (
    ImplicitManifold,
    ImplicitSphere,
    ImplicitTorus,
    intersection,
    union,
)
from implicit_geom.sampling import (
    ConstrainedHMC,
    ConstrainedLangevin,
    ConstrainedMALA,
    SamplerInfo,
    monte_carlo_estimate,
)

from sampling_helpers import VMF_MEAN_Z, assert_mean, assert_on_manifold, vmf_energy

N_CHAINS = 1000


def start(manifold, n=N_CHAINS, seed=0):
    torch.manual_seed(seed)
    return manifold.random_point(n)


def check_info(info, n_chains, n_steps):
    assert isinstance(info, SamplerInfo)
    assert info.acceptance_rate.shape == (n_chains,)
    assert info.n_projection_failures.shape == (n_chains,)
    assert info.n_nonreversible.shape == (n_chains,)
    assert info.n_steps == n_steps
    assert info.max_abs_F <= 1e-9
    assert info.wall_time > 0


# ------------------------------------------------------------ exactness
def test_mala_vmf_on_implicit_sphere():
    sphere = ImplicitSphere(2)
    sampler = ConstrainedMALA(sphere, vmf_energy, step_size=0.3, seed=0)
    samples, info = sampler.sample(start(sphere), n_steps=200, n_warmup=60)
    assert samples.shape == (200, N_CHAINS, 3)
    check_info(info, N_CHAINS, 200)
    assert_on_manifold(sphere, samples)
    assert_mean(samples[..., 2], VMF_MEAN_Z)
    # Symmetry: the transverse coordinates average to zero.
    assert_mean(samples[..., 0], 0.0)
    # Warm-up adapted toward the default target acceptance.
    assert abs(info.mean_accept_prob - ConstrainedMALA.default_target_accept) < 0.1
    assert info.ess is not None and info.ess.shape == (3,)


def test_mala_with_chord_solves_stays_exact():
    # The chord position solve (default from codimension 8, forced here) must
    # keep MALA exact: same roots as Newton, reversibility checked. Catches a
    # chord solve that lands elsewhere than Newton (a biased mean).
    sphere = ImplicitSphere(2)
    sampler = ConstrainedMALA(sphere, vmf_energy, step_size=0.3, seed=0, newton="chord")
    assert sampler.options.newton == "chord"
    samples, info = sampler.sample(start(sphere, n=300), n_steps=150, n_warmup=50)
    assert_on_manifold(sphere, samples)
    assert_mean(samples[..., 2], VMF_MEAN_Z)
    assert ConstrainedMALA(sphere, vmf_energy).options.newton == "exact"


def test_hmc_vmf_on_geomstats_hypersphere():
    space = Hypersphere(2)
    sampler = ConstrainedHMC(space, vmf_energy, step_size=0.25, n_leapfrog=2, seed=1)
    x0 = torch.as_tensor(space.random_point(400), dtype=torch.float64)
    samples, info = sampler.sample(x0, n_steps=100, n_warmup=40, target_accept=0.9)
    check_info(info, 400, 100)
    assert_on_manifold(sampler.manifold, samples)
    assert bool(space.belongs(samples.reshape(-1, 3), atol=1e-9).all())
    assert_mean(samples[..., 2], VMF_MEAN_Z)


def test_uniform_torus_tube_angle():
    big, small = 1.0, 0.5
    torus = ImplicitTorus(big, small)
    sampler = ConstrainedHMC(torus, None, step_size=0.25, n_leapfrog=3, seed=2)
    samples, info = sampler.sample(start(torus, 300), n_steps=60, n_warmup=30,
                                   target_accept=0.9)
    check_info(info, 300, 60)
    assert_on_manifold(torus, samples)
    rho = samples[..., :2].norm(dim=-1)
    cos_theta = (rho - big) / small
    # Hausdorff measure of the torus: density of theta proportional to R + r cos(theta).
    assert_mean(cos_theta, small / (2 * big))


def test_uniform_circle_as_intersection_of_two_spheres():
    # |x| = 1 and |x - e_z| = 1 meet in the circle z = 1/2 of radius sqrt(3)/2.
    circle = intersection(ImplicitSphere(2), ImplicitSphere(2, center=[0.0, 0.0, 1.0]))
    assert circle.codim == 2
    sampler = ConstrainedHMC(circle, None, step_size=0.4, n_leapfrog=4, seed=3)
    samples, info = sampler.sample(start(circle, 400), n_steps=60, n_warmup=30,
                                   target_accept=0.9)
    check_info(info, 400, 60)
    assert_on_manifold(circle, samples)
    phi = torch.atan2(samples[..., 1], samples[..., 0])
    for k in (1, 2):
        assert_mean(torch.cos(k * phi), 0.0, slack=5e-3)
        assert_mean(torch.sin(k * phi), 0.0, slack=5e-3)
    assert torch.allclose(samples[..., 2], torch.full_like(samples[..., 2], 0.5), atol=1e-9)


def test_density_on_union_of_two_spheres_never_leaves_it():
    left = ImplicitSphere(2, center=[-3.0, 0.0, 0.0])
    right = ImplicitSphere(2, center=[3.0, 0.0, 0.0])
    both = union(left, right)
    x0 = torch.cat([left.random_point(300), right.random_point(300)])
    sampler = ConstrainedMALA(both, vmf_energy, step_size=0.3, seed=4)
    samples, info = sampler.sample(x0, n_steps=150, n_warmup=40)
    check_info(info, 600, 150)
    assert_on_manifold(both, samples)
    # Every sample lies on one component (a rare long step may legitimately
    # carry a chain across the gap: it is a reversible, MH-corrected move).
    flat = samples.reshape(-1, 3)
    on_left = left.submersion(flat).abs()[:, 0] <= 1e-9
    on_right = right.submersion(flat).abs()[:, 0] <= 1e-9
    assert bool((on_left ^ on_right).all())
    assert float(on_left.double().mean()) == pytest.approx(0.5, abs=0.05)
    # E depends on z only and the spheres are translates along x, so z follows
    # vMF(e_z, kappa) whichever component a sample is on.
    assert_mean(samples[..., 2], VMF_MEAN_Z, slack=3e-3)


def test_density_is_wrt_hausdorff_measure_not_gram_weighted():
    # The unit sphere with a defining function whose gradient norm varies over
    # M (|grad F| = exp(z), and F has no other zeros): uniform means uniform
    # w.r.t. area, so E[z] = 0; a Gram-determinant weighting 1/|grad F| would
    # tilt the samples toward the south pole (E[z] = 1 - coth(1) = -0.31).
    sphere = ImplicitManifold(
        lambda x: ((x * x).sum(-1, keepdim=True) - 1) * torch.exp(x[..., 2:3]) / 2,
        ambient_dim=3, codim=1, bounds=([-1.5] * 3, [1.5] * 3))
    sampler = ConstrainedHMC(sphere, None, step_size=0.4, n_leapfrog=2, seed=5)
    samples, info = sampler.sample(start(sphere, 400), n_steps=100, n_warmup=30,
                                   target_accept=0.9)
    assert_on_manifold(sphere, samples)
    assert_mean(samples[..., 2], 0.0, slack=4e-3)
    # Area measure: z is uniform on [-1, 1], so E[z^2] = 1/3.
    assert_mean(samples[..., 2] ** 2, 1.0 / 3.0, slack=4e-3)


def test_unadjusted_langevin_is_biased_and_mala_is_not_at_same_step():
    sphere = ImplicitSphere(2)
    x0 = start(sphere, 500)
    h = 0.5
    lang, _ = ConstrainedLangevin(sphere, vmf_energy, step_size=h, seed=6).sample(
        x0, n_steps=250)
    # No warm-up, hence no adaptation: both use the same h; drop the burn-in by hand.
    mala, info = ConstrainedMALA(sphere, vmf_energy, step_size=h, seed=6).sample(x0, n_steps=250)
    assert info.step_size == h
    lang, mala = lang[50:], mala[50:]
    assert_on_manifold(sphere, lang)
    m_lang, se_lang, _ = monte_carlo_estimate(lang[..., 2])
    assert abs(m_lang - VMF_MEAN_Z) > 10 * se_lang  # O(h^2) bias, clearly resolved
    assert_mean(mala[..., 2], VMF_MEAN_Z)


# ------------------------------------------------------------- contract
def test_run_keeps_only_final_state_and_no_parameter_gradients():
    torch.manual_seed(0)
    energy = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    energy = energy.double()
    sphere = ImplicitSphere(2)
    sampler = ConstrainedLangevin(sphere, energy, step_size=0.2, seed=0)
    x_final, info = sampler.run(start(sphere, 64), n_steps=20)
    assert x_final.shape == (64, 3)
    assert not x_final.requires_grad
    assert info.ess is None
    assert all(p.grad is None for p in energy.parameters())
    assert_on_manifold(sphere, x_final)
    assert info.max_abs_F == pytest.approx(float(sphere.submersion(x_final).abs().max()))


def test_seed_reproducibility():
    sphere = ImplicitSphere(2)
    x0 = start(sphere, 50)
    a, _ = ConstrainedMALA(sphere, vmf_energy, step_size=0.4, seed=7).sample(x0, 20)
    b, _ = ConstrainedMALA(sphere, vmf_energy, step_size=0.4, seed=7).sample(x0, 20)
    c, _ = ConstrainedMALA(sphere, vmf_energy, step_size=0.4, seed=8).sample(x0, 20)
    gen = torch.Generator().manual_seed(7)
    d, _ = ConstrainedMALA(sphere, vmf_energy, step_size=0.4, seed=gen).sample(x0, 20)
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.equal(a, c)
    # Successive calls continue the random stream (persistent chains get fresh noise).
    sampler = ConstrainedLangevin(sphere, vmf_energy, step_size=0.4, seed=7)
    first, _ = sampler.run(x0, 1)
    second, _ = sampler.run(x0, 1)
    assert not torch.equal(first, second)


def test_large_steps_are_counted_rejections_never_off_manifold_points():
    torus = ImplicitTorus(1.0, 0.5)
    x0 = start(torus, 300)
    sampler = ConstrainedMALA(torus, None, step_size=1.5, seed=9)
    samples, info = sampler.sample(x0, n_steps=30)
    assert_on_manifold(torus, samples)
    assert int(info.n_projection_failures.sum()) > 0
    assert int(info.n_nonreversible.sum()) > 0
    rejected = (info.n_projection_failures + info.n_nonreversible).to(torch.float64) / 30
    assert bool((info.acceptance_rate <= 1 - rejected + 1e-12).all())
    # A chain whose every step failed never moved.
    stuck = info.acceptance_rate == 0
    if bool(stuck.any()):
        assert torch.equal(samples[:, stuck], x0[stuck].expand(30, -1, -1))
    # The unadjusted sampler counts its failures too and stays on M.
    lang, linfo = ConstrainedLangevin(torus, None, step_size=1.5, seed=9).sample(x0, 30)
    assert_on_manifold(torus, lang)
    assert int(linfo.n_projection_failures.sum()) > 0
    assert int(linfo.n_nonreversible.sum()) == 0  # the check is off by default


def test_thinning_and_off_manifold_start_is_projected():
    sphere = ImplicitSphere(2)
    x0 = 1.3 * start(sphere, 20)
    samples, info = ConstrainedMALA(sphere, vmf_energy, step_size=0.3, seed=0).sample(
        x0, n_steps=10, thin=3)
    assert samples.shape == (3, 20, 3)
    assert info.ess is None  # fewer than 4 kept samples
    assert_on_manifold(sphere, samples)


@pytest.mark.parametrize("bad, err", [
    (torch.full((4, 3), float("nan")), InvalidPointError),
    (torch.ones(4, 2), InvalidPointError),
    (torch.zeros(2, 3), ProjectionError),  # the centre: no projection onto the sphere
])
def test_bad_starting_points(bad, err):
    with pytest.raises(err):
        ConstrainedMALA(ImplicitSphere(2), vmf_energy, seed=0).sample(bad, 5)


def test_bad_arguments():
    sphere = ImplicitSphere(2)
    x0 = start(sphere, 4)
    with pytest.raises(InvalidPointError, match="energy returned shape"):
        ConstrainedMALA(sphere, lambda x: x, seed=0).sample(x0, 5)
    with pytest.raises(ValueError, match="step_size"):
        ConstrainedMALA(sphere, vmf_energy, step_size=-1.0)
    with pytest.raises(ValueError, match="target_accept"):
        ConstrainedLangevin(sphere, vmf_energy).sample(x0, 5, n_warmup=5, target_accept=0.5)
    with pytest.raises(ValueError, match="n_steps"):
        ConstrainedMALA(sphere, vmf_energy).sample(x0, 0)
    with pytest.raises(ValueError, match="tol"):
        ConstrainedMALA(sphere, vmf_energy, tol=1e-6)
    with pytest.raises(TypeError):
        ConstrainedMALA(sphere, energy=3.0)
    with pytest.raises(InvalidPointError, match="NaN"):
        ConstrainedMALA(sphere, lambda x: torch.log(x[:, 0] - 5)).sample(x0, 5)


@pytest.mark.parametrize("kwargs", [
    {"max_iter": 0}, {"max_iter": -1}, {"max_iter": 2.5},
    {"reverse_tol": float("nan")}, {"reverse_tol": -1.0}, {"reverse_tol": 0.0},
])
def test_bad_solver_settings_raise(kwargs):
    # Catches settings that used to be accepted silently: max_iter=0 fell back
    # to the default cap, max_iter<0 and a NaN/non-positive reverse_tol froze
    # every chain (each step a counted failure, acceptance 0), no error.
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ConstrainedMALA(ImplicitSphere(2), vmf_energy, seed=0, **kwargs)


def test_thin_larger_than_n_steps_raises():
    # Catches sample() returning an empty (0, n_chains, n) array, i.e. no
    # sample at all, when thin > n_steps; run() keeps no trajectory, so the
    # same settings are fine there.
    sphere = ImplicitSphere(2)
    x0 = start(sphere, 4)
    with pytest.raises(ValueError, match="thin"):
        ConstrainedMALA(sphere, vmf_energy, seed=0).sample(x0, 3, thin=5)
    x, _ = ConstrainedMALA(sphere, vmf_energy, seed=0).run(x0, 3)
    assert x.shape == (4, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_gpu_tensors():
    import sympy

    x, y, z = sympy.symbols("x y z")
    sphere = ImplicitManifold.from_sympy([(x**2 + y**2 + z**2 - 1) / 2], [x, y, z])
    x0 = start(ImplicitSphere(2), 2000).cuda()
    sampler = ConstrainedMALA(sphere, vmf_energy, step_size=0.3, seed=0)
    samples, info = sampler.sample(x0, n_steps=300, n_warmup=100)
    assert samples.device.type == "cuda" and info.acceptance_rate.device.type == "cuda"
    assert_on_manifold(sphere, samples)
    assert_mean(samples[..., 2].cpu(), VMF_MEAN_Z)


def test_vmf_on_sympy_circle():
    import sympy

    x, y = sympy.symbols("x y")
    circle = ImplicitManifold.from_sympy([(x**2 + y**2 - 1) / 2], [x, y],
                                         bounds=([-1.5, -1.5], [1.5, 1.5]))
    kappa = 2.0
    sampler = ConstrainedMALA(circle, lambda p: -kappa * p[:, 0], step_size=0.5, seed=10)
    samples, info = sampler.sample(start(circle, 500), n_steps=100, n_warmup=30)
    check_info(info, 500, 100)
    assert_on_manifold(circle, samples)
    k = torch.tensor(kappa, dtype=torch.float64)
    # von Mises on the circle: E[cos phi] = I1(kappa) / I0(kappa).
    assert_mean(samples[..., 0], float(torch.special.i1(k) / torch.special.i0(k)))


def test_langevin_and_mala_on_a_learned_manifold():
    from implicit_geom.datasets import von_mises_circle
    from implicit_geom.learning import NeuralImplicitManifold

    data = von_mises_circle(300, kappa=0.5, seed=0)
    mdf = NeuralImplicitManifold(2, hidden=(8, 8, 8), epochs=20, batch_size=300,
                                 n_negatives=32, buffer_size=128, langevin_steps=2,
                                 progress=False).fit(data)
    landed = mdf.solve_projection(data, closest=False)
    x0 = landed.x[landed.converged][:200]
    assert x0.shape[0] > 50
    energy = torch.nn.Linear(2, 1).double()
    for cls in (ConstrainedLangevin, ConstrainedMALA):
        x_final, info = cls(mdf, energy, step_size=0.05, seed=0).run(x0, n_steps=10)
        assert_on_manifold(mdf, x_final)
        assert info.max_abs_F <= 1e-9
    assert all(p.grad is None for p in energy.parameters())
    assert all(p.grad is None for p in mdf.net.parameters())


def test_langevin_refuses_steps_outside_the_energy_support():
    # A log barrier: E = -log(z - 1/2) is NaN below z = 1/2 (density zero
    # there). Catches the unadjusted Langevin step landing chains where E is
    # NaN: they were emitted there and then stuck (NaN drift, every later
    # step a "projection failure"). Such steps must be refused like a NaN start.
    sphere = ImplicitSphere(2)
    x0 = torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64).repeat(8, 1)
    samples, info = ConstrainedLangevin(sphere, lambda x: -torch.log(x[:, 2] - 0.5), seed=0,
                                        step_size=0.5).sample(x0, 100)
    assert bool((samples[..., 2] > 0.5).all())
    assert 0 < float(info.acceptance_rate.mean()) < 1
    assert_on_manifold(sphere, samples)


def test_numpy_scalars_are_accepted_as_settings():
    # Catches numpy integers and float32 being refused with a contradictory
    # message ("n_steps must be an int >= 1, got np.int64(3)", "step_size must
    # be a positive float, got np.float32(0.5)"); the draws equal those of
    # the Python numbers, and the info holds Python ints.
    import numpy as np

    sphere = ImplicitSphere(2)
    x0 = start(sphere, 4)
    ref, _ = ConstrainedHMC(sphere, vmf_energy, step_size=0.5, seed=1, n_leapfrog=2).sample(
        x0, 6, n_warmup=2, thin=2)
    out, info = ConstrainedHMC(sphere, vmf_energy, step_size=np.float32(0.5), seed=np.int64(1),
                               n_leapfrog=np.int32(2), max_iter=np.int64(10)).sample(
        x0, np.int64(6), n_warmup=np.int64(2), thin=np.int64(2))
    assert torch.equal(out, ref)
    assert type(info.n_steps) is int and type(info.thin) is int
    with pytest.raises(ValueError, match="step_size"):
        ConstrainedMALA(sphere, vmf_energy, step_size=True)


def test_an_energy_independent_of_x_samples_like_the_uniform_law():
    # Catches autograd's "element 0 of tensors does not require grad" for an energy
    # with no graph to x (a constant: ais_log_partition of a flat energy crashed).
    sphere = ImplicitSphere(2)
    x0 = start(sphere, n=16)
    flat = ConstrainedMALA(sphere, lambda x: torch.zeros(x.shape[0], dtype=x.dtype),
                           step_size=0.3, seed=0).sample(x0, 5)[0]
    uniform = ConstrainedMALA(sphere, None, step_size=0.3, seed=0).sample(x0, 5)[0]
    assert torch.equal(flat, uniform)


@pytest.mark.parametrize("cls", [ConstrainedLangevin, ConstrainedMALA, ConstrainedHMC])
def test_chains_run_in_a_float32_manifolds_dtype(cls):
    # Catches chains forced to float64 on a float32 manifold (a float32 energy
    # or network then met float64 points) and the float64-only 1e-10 Newton and
    # 1e-8 reversibility tolerances, which float32 cannot meet (floored at its eps).
    sphere = ImplicitSphere(2).to(torch.float32)
    x0 = torch.tensor([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]], dtype=torch.float32)
    w = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float32)
    x, info = cls(sphere, lambda y: -(y * w).sum(-1), step_size=0.3, seed=0).run(x0, 20)
    assert x.dtype == torch.float32
    assert info.max_abs_F <= sphere.tol_for()
    assert float(info.acceptance_rate.mean()) > 0.5


@pytest.mark.parametrize("cls", [ConstrainedLangevin, ConstrainedMALA, ConstrainedHMC])
def test_float32_starts_projected_to_the_rounding_floor_of_F_are_accepted(cls):
    # Catches the start check testing the projected starts against a bare
    # |F| <= tol (64 eps) where Newton, belongs and the emission check accept
    # |F| up to F's rounding, 64 eps |J| |x| = 2 * 64 eps for |x|^2 - 1 in
    # float32: "starting point(s) projected only to |F| = 1.5e-05 > tol = 7.6e-06".
    sphere = ImplicitManifold(lambda y: (y * y).sum(-1, keepdim=True) - 1, 3).to(torch.float32)
    x0 = 1.3 * torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    w = torch.tensor([0.0, 0.0, 1.0])
    x, info = cls(sphere, lambda y: -(y * w).sum(-1), step_size=0.3, seed=0).run(x0, 3)
    assert x.dtype == torch.float32 and bool(sphere.belongs(x).all())
    # On the unit sphere to float32 accuracy: within 64 eps (Newton's floor) in float64.
    eps = torch.finfo(torch.float32).eps
    assert float((x.double().norm(dim=-1) - 1).abs().max()) <= 64 * eps * 1.001


def _float64_energies():
    """A float64 EnergyMLP (autograd path) and a float64 nn.Sequential (the
    graph-free MLP path)."""
    from implicit_geom.models.energy_nets import EnergyMLP

    torch.manual_seed(0)
    seq = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(),
                              torch.nn.Linear(8, 1)).double()
    return {"EnergyMLP": EnergyMLP(3, hidden=(8,), seed=0), "Sequential": seq}


@pytest.mark.parametrize("kind", ["EnergyMLP", "Sequential"])
@pytest.mark.parametrize("cls", [ConstrainedLangevin, ConstrainedMALA, ConstrainedHMC])
def test_a_float64_energy_on_a_float32_manifold(cls, kind):
    # Catches samplers called directly with an energy of another dtype than
    # the manifold's: a float64 network met the float32 chains ("mat1 and mat2
    # must have the same dtype"); only ConstrainedEBM used to cast. The chains
    # stay float32, the energy runs in float64.
    energy = _float64_energies()[kind]
    sphere = ImplicitSphere(2).to(torch.float32)
    x0 = torch.tensor([[0.0, 0.6, 0.8], [1.0, 0.0, 0.0]], dtype=torch.float32)
    x, info = cls(sphere, energy, step_size=0.3, seed=0).run(x0, 10)
    assert x.dtype == torch.float32
    assert info.max_abs_F <= sphere.tol_for()
    assert float(info.acceptance_rate.mean()) > 0.5


def test_chains_at_large_coordinates_emit_points_newton_accepts():
    # Catches the emitted-|F| check disagreeing with Newton's rounding floor:
    # on a circle of radius 1e4 given as |x|^2 - r^2 Newton accepts |F| ~ 1e-6
    # (the rounding of F there), and the check at 1e-9 raised "internal error".
    import math

    from implicit_geom import ImplicitManifold

    r = 1e4
    circle = ImplicitManifold(lambda x: (x * x).sum(-1, keepdim=True) - r**2, ambient_dim=2,
                              codim=1)
    t = torch.linspace(0, 2 * math.pi, 9, dtype=torch.float64)[:-1]
    x0 = circle.projection(1.1 * r * torch.stack([t.cos(), t.sin()], -1))
    x, info = ConstrainedMALA(circle, None, step_size=0.05 * r, seed=0).run(x0, 50)
    assert float(info.acceptance_rate.min()) > 0.5
    assert float((x.norm(dim=-1) / r - 1).abs().max()) < 1e-13  # on M to float64's resolution
