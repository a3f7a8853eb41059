"""Densities under manifold arithmetic: product on intersections, mixture on unions."""

import json
import math

import pytest
import torch
from torch import nn

from implicit_geom import ImplicitSphere
from implicit_geom.models import ConstrainedEBM, IntersectionEBM, UnionEBM, combine_densities
from implicit_geom.models.normalization import circle_quadrature, manifold_quadrature


class LinearEnergy(nn.Module):
    """``E(x) = -kappa <mu, x - c>``: von Mises-Fisher on a sphere centred at c."""

    def __init__(self, mu, kappa, center):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float64))
        self.register_buffer("c", torch.as_tensor(center, dtype=torch.float64))
        self.kappa = kappa

    def forward(self, x):
        return -self.kappa * ((x - self.c) @ self.mu)


def vmf_model(center, mu, kappa, dim=2):
    return ConstrainedEBM(ImplicitSphere(dim, center=center), LinearEnergy(mu, kappa, center),
                          step_size=0.3, seed=0)


def test_intersection_is_product_density_on_the_circle():
    a = vmf_model([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 2.0)
    b = vmf_model([1.0, 0.0, 0.0], [0.0, 1.0, 0.0], 2.0)
    model = combine_densities("intersection", a, b)
    assert isinstance(model, IntersectionEBM) and model.manifold.codim == 2
    x = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    assert torch.allclose(model.energy(x), a.energy(x) + b.energy(x))
    # Exact moments on the circle x = 0.5, |(y, z)| = sqrt(3)/2.
    rho = math.sqrt(3) / 2
    t = torch.linspace(0, 2 * math.pi, 4001, dtype=torch.float64)[:-1]
    circle = torch.stack([torch.full_like(t, 0.5), rho * t.cos(), rho * t.sin()], -1)
    w = torch.softmax(-(a.energy(circle) + b.energy(circle)), 0)
    exact_mean = (w[:, None] * circle).sum(0)
    init = circle[torch.randint(len(circle), (1000,), generator=torch.Generator().manual_seed(0))]
    samples = model.sample(1000, n_steps=60, sampler="mala", step_size=0.5, init=init)
    value = model.manifold.submersion(samples)
    assert float(value.abs().max()) <= 1e-9
    assert samples.mean(0).numpy() == pytest.approx(exact_mean.numpy(), abs=0.05)


def test_union_is_a_normalised_mixture():
    a = vmf_model([-2.0, 0.0], [1.0, 0.0], 3.0, dim=1)
    b = vmf_model([2.0, 0.0], [0.0, 1.0], 1.0, dim=1)
    model = UnionEBM(a, b, weights=[0.25, 0.75])
    # log Z_i by quadrature: 2 pi I0(kappa) on unit circles.
    i0 = lambda k: sum(((k / 2) ** j / math.factorial(j)) ** 2 for j in range(40))  # noqa: E731
    assert [m.log_partition() for m in (a, b)] == pytest.approx(
        [math.log(2 * math.pi * i0(3.0)), math.log(2 * math.pi * i0(1.0))], abs=1e-8)
    rule = manifold_quadrature(model.manifold, 256)
    total = float((model.log_prob(rule.points).exp() * rule.weights).sum())
    assert total == pytest.approx(1.0, abs=1e-10)
    left = circle_quadrature(256, center=(-2.0, 0.0))
    mass_left = float((model.log_prob(left.points).exp() * left.weights).sum())
    assert mass_left == pytest.approx(0.25, abs=1e-10)
    init_a = left.points[:1].expand(400, 2)
    a.buffer_ = init_a.clone()
    b.buffer_ = circle_quadrature(400, center=(2.0, 0.0)).points
    samples = model.sample(2000, n_steps=5, seed=0)
    assert samples.shape == (2000, 2)
    frac_left = float((samples[:, 0] < 0).double().mean())
    assert frac_left == pytest.approx(0.25, abs=0.03)
    assert float(model.manifold.submersion(samples).abs().max()) <= 1e-9


def test_points_off_the_manifold_score_at_their_closest_points():
    # Catches ConstrainedEBM.nll evaluating the energy at points off M (it then
    # disagreed with score_samples and evaluation.held_out_nll) and
    # UnionEBM.score_samples scoring off-M points where they are, not at their
    # projections. The energies are linear in x, so the two differ off M.
    a = vmf_model([-2.0, 0.0], [1.0, 0.0], 3.0, dim=1)
    b = vmf_model([2.0, 0.0], [0.0, 1.0], 1.0, dim=1)
    t = torch.linspace(0.0, 6.0, 7, dtype=torch.float64)
    unit = torch.stack([t.cos(), t.sin()], -1)
    shift = torch.tensor([2.0, 0.0], dtype=torch.float64)
    on_a, on_b = unit - shift, unit + shift
    off_a, off_b = 1.05 * unit - shift, 0.97 * unit + shift
    assert torch.allclose(a.score_samples(off_a), a.log_prob(on_a), atol=1e-10)
    assert a.nll(off_a) == pytest.approx(float(-a.log_prob(on_a).mean()), abs=1e-10)
    assert abs(a.nll(off_a) + float(a.log_prob(off_a).mean())) > 1e-2
    model = UnionEBM(a, b, weights=[0.25, 0.75])
    off, on = torch.cat([off_a, off_b]), torch.cat([on_a, on_b])
    assert torch.allclose(model.score_samples(off), model.log_prob(on), atol=1e-10)
    # Catches float32 points projected onto the union in float32 (their
    # scores then carried float32 rounding) instead of in float64.
    assert torch.equal(model.score_samples(off.float()), model.score_samples(off.float().double()))
    assert not torch.allclose(model.log_prob(off), model.log_prob(on), atol=1e-3)
    # A piece whose F is 100 times steeper: |F_i| alone would give the point
    # 0.05 outside it to the other circle (|F| 10.25 against 7.7).
    from implicit_geom import ImplicitManifold

    center = torch.tensor([-2.0, 0.0], dtype=torch.float64)
    steep = ImplicitManifold(lambda x: 100.0 * ((x - center.to(x)).square().sum(-1, keepdim=True)
                                                - 1.0), 2, bounds=([-3.5, -1.5], [-0.5, 1.5]))
    c = ConstrainedEBM(steep, LinearEnergy([1.0, 0.0], 3.0, [-2.0, 0.0]), seed=0)
    model = UnionEBM(c, b, weights=[0.25, 0.75])
    point = torch.tensor([[-0.95, 0.0]], dtype=torch.float64)
    assert torch.allclose(model.score_samples(point),
                          model.log_prob(torch.tensor([[-1.0, 0.0]], dtype=torch.float64)))


def test_errors():
    a = vmf_model([0.0, 0.0], [1.0, 0.0], 1.0, dim=1)
    with pytest.raises(ValueError):
        combine_densities("difference", a, a)
    with pytest.raises(TypeError):
        IntersectionEBM(a)
    with pytest.raises(ValueError):
        UnionEBM(a, vmf_model([3.0, 0.0], [1.0, 0.0], 1.0, dim=1), weights=[1.0, -1.0])
    # Catches sample(0) / sample(-1) failing in torch.multinomial with a
    # RuntimeError instead of the ValueError of the other models.
    union = UnionEBM(a, vmf_model([3.0, 0.0], [1.0, 0.0], 1.0, dim=1))
    for n in (0, -1, 2.5):  # 2.5: drew 2 (int() truncated the count)
        with pytest.raises(ValueError, match="n_samples"):
            union.sample(n, n_steps=1)


def test_intersection_saves_and_loads_on_the_intersection(tmp_path):
    # Catches IntersectionEBM.load going through the factor-taking constructor
    # (an "incompatible checkpoint" error), the product's members reloaded in
    # another order or with lost weights (energies differ), and a loaded model
    # not normalised on the intersection circle (its mass there != 1).
    from implicit_geom.manifolds.arithmetic import intersection
    from implicit_geom.models import EnergyMLP

    sa, sb = ImplicitSphere(2), ImplicitSphere(2, center=[1.0, 0.0, 0.0])
    a = ConstrainedEBM(sa, EnergyMLP(3, hidden=(8,), seed=0), seed=0)
    b = ConstrainedEBM(sb, EnergyMLP(3, hidden=(8,), seed=1), seed=0)
    a._fitted = b._fitted = True  # (stand-ins for fitted factors: an unfitted product is
    model = IntersectionEBM(a, b)  # not saved)
    model.save(tmp_path / "cap.pt")
    back = IntersectionEBM.load(tmp_path / "cap.pt", intersection(sa, sb))
    rho = math.sqrt(3) / 2
    t = torch.linspace(0, 2 * math.pi, 4001, dtype=torch.float64)[:-1]
    circle = torch.stack([torch.full_like(t, 0.5), rho * t.cos(), rho * t.sin()], -1)
    assert torch.equal(back.energy(circle), a.energy(circle) + b.energy(circle))
    mass = float(back.log_prob(circle).exp().mean()) * 2 * math.pi * rho
    assert mass == pytest.approx(1.0, abs=1e-6)


def test_union_of_models_on_one_manifold_raises():
    # Catches UnionEBM of two models on the same sphere integrating to 0.5
    # (every point scored by the first model only): ComponentError instead.
    from implicit_geom.exceptions import ComponentError

    a = vmf_model([0.0, 0.0, 0.0], [0.0, 0.0, 1.0], 2.0)
    b = vmf_model([0.0, 0.0, 0.0], [0.0, 1.0, 0.0], 2.0)
    with pytest.raises(ComponentError, match="share a part of positive measure"):
        UnionEBM(a, b)


def test_product_keeps_the_factors_component_weights(tmp_path):
    # A density fitted by maximum likelihood on two spheres (80% of the data
    # on the left one) times a uniform density on the plane z = 0: the product
    # on the two equators must give the left one 80% of the mass, as p1 does.
    # The product summed the bare networks and dropped the factor's component
    # offsets log Z_c - log w_c: 42/58 instead of 80/20.
    from implicit_geom import ImplicitManifold, union
    from implicit_geom.models import PolynomialEnergy

    c1 = torch.tensor([-2.0, 0.0, 0.0], dtype=torch.float64)
    spheres = union(ImplicitSphere(2, center=c1), ImplicitSphere(2, center=-c1))
    x = torch.randn(400, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    data = torch.cat([x[:320] + c1, x[320:] - c1])
    p1 = ConstrainedEBM(spheres, PolynomialEnergy(3, 1), n_iter=50, lr=0.05,
                        batch_size=400).fit(data)
    flat = PolynomialEnergy(3, 1)
    flat.coef.requires_grad_(False)  # the uniform density: nothing to fit
    plane = ImplicitManifold(lambda y: y[:, 2:3], 3, 1, bounds=([-4, -2, -2], [4, 2, 2]))
    product = IntersectionEBM(p1, ConstrainedEBM(plane, flat))
    rule = product.quadrature()
    mass = p1.log_prob(rule.points).exp() * rule.weights
    expected = torch.zeros(2, dtype=torch.float64).index_add_(0, rule.labels, mass) / mass.sum()
    assert torch.allclose(product.component_mass(), expected, atol=1e-9)
    left = int(rule.labels[rule.points[:, 0] < 0][0])
    assert float(product.component_mass()[left]) == pytest.approx(320.5 / 401, abs=1e-6)
    total = (product.log_prob(rule.points).exp() * rule.weights).sum()
    assert float(total) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(TypeError, match="component weights"):
        product.save(tmp_path / "product.pt")


def test_a_float32_product_is_float32_and_reloads_in_its_dtype(tmp_path):
    # Catches the intersection (and union) of float32 manifolds being float64
    # (the product's samples came back float64), the checkpoint not restoring
    # the energy's float32 (a file without a dtype must still load as
    # float64), and factors of two dtypes crashing in SumEnergy with a torch
    # dtype mismatch instead of a TypeError.
    from implicit_geom import union
    from implicit_geom.manifolds.arithmetic import intersection
    from implicit_geom.models import EnergyMLP

    f32 = torch.float32
    sa, sb = ImplicitSphere(2).to(f32), ImplicitSphere(2, center=[1.0, 0.0, 0.0]).to(f32)
    assert union(sa, ImplicitSphere(2, center=[3.0, 0.0, 0.0]).to(f32)).dtype == f32
    a = ConstrainedEBM(sa, EnergyMLP(3, hidden=(8,), seed=0).to(f32), seed=0)
    b = ConstrainedEBM(sb, EnergyMLP(3, hidden=(8,), seed=1).to(f32), seed=0)
    a._fitted = b._fitted = True
    model = IntersectionEBM(a, b)
    assert model.manifold.dtype == f32
    t = torch.linspace(0, 2 * math.pi, 17, dtype=f32)[:-1]
    rho = math.sqrt(3) / 2
    init = torch.stack([torch.full_like(t, 0.5), rho * t.cos(), rho * t.sin()], -1)
    x = model.sample(16, n_steps=3, init=init)
    assert x.dtype == f32
    assert float(model.manifold.submersion(x).abs().max()) <= model.manifold.tol_for()
    model.save(tmp_path / "cap.pt")
    back = IntersectionEBM.load(tmp_path / "cap.pt", intersection(sa, sb))
    assert back._param().dtype == f32 and back.manifold.dtype == f32
    assert torch.equal(back.log_prob(x), model.log_prob(x))
    record = torch.load(tmp_path / "cap.pt", weights_only=True)
    del record["dtype"]  # an older checkpoint
    torch.save(record, tmp_path / "old.pt")
    assert IntersectionEBM.load(tmp_path / "old.pt", intersection(sa, sb))._param().dtype \
        == torch.float64
    b64 = ConstrainedEBM(ImplicitSphere(2, center=[1.0, 0.0, 0.0]),
                         EnergyMLP(3, hidden=(8,), seed=1), seed=0)
    with pytest.raises(TypeError, match="different dtypes"):
        IntersectionEBM(a, b64)


def _fitted_circles_union(dtype=torch.float64):
    from implicit_geom.models import EnergyMLP

    gen = torch.Generator().manual_seed(0)
    models = []
    for k, c in enumerate((-2.0, 2.0)):
        circle = ImplicitSphere(1, center=[c, 0.0]).to(dtype)
        t = torch.rand(40, generator=gen, dtype=torch.float64) * math.pi  # upper halves
        data = torch.stack([t.cos() + c, t.sin()], -1).to(dtype)
        net = EnergyMLP(2, hidden=(8,), seed=k).to(dtype)
        models.append(ConstrainedEBM(circle, net, n_iter=5, batch_size=40, seed=0).fit(data))
    return UnionEBM(*models, weights=[0.3, 0.7])


def test_union_saves_and_loads(tmp_path):
    # Catches a fitted union that could not be saved at all (UnionEBM had no
    # save/load), a reload with other energies, weights or normalisers (scores,
    # masses and seeded samples then differ), pieces given back in the wrong
    # number, and a bad file read as a union instead of a CheckpointError.
    from implicit_geom import union
    from implicit_geom.exceptions import CheckpointError

    model = _fitted_circles_union()
    model.save(tmp_path / "union.pt")
    pieces = [m.manifold for m in model.models]
    back = UnionEBM.load(tmp_path / "union.pt", union(*pieces))
    x = torch.tensor([[-2.0, 1.1], [-0.9, 0.0], [2.0, -1.05], [3.0, 0.1]], dtype=torch.float64)
    assert torch.equal(back.score_samples(x), model.score_samples(x))
    assert torch.equal(back.weights, model.weights)
    for m, b in zip(model.models, back.models):
        assert torch.equal(b.component_mass(), m.component_mass())
    assert torch.equal(back.sample(50, n_steps=3, seed=4), model.sample(50, n_steps=3, seed=4))
    assert torch.equal(UnionEBM.load(tmp_path / "union.pt", pieces).score_samples(x),
                       model.score_samples(x))  # the pieces as a list
    with pytest.raises(CheckpointError, match="2 models, got 1"):
        UnionEBM.load(tmp_path / "union.pt", pieces[:1])
    data = (tmp_path / "union.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        UnionEBM.load(tmp_path / "cut.pt", pieces)
    model.models[0].save(tmp_path / "one.pt")
    with pytest.raises(CheckpointError, match="holds a 'ConstrainedEBM', not a 'UnionEBM'"):
        UnionEBM.load(tmp_path / "one.pt", pieces)
    with pytest.raises(CheckpointError, match="holds a 'UnionEBM', not a 'ConstrainedEBM'"):
        ConstrainedEBM.load(tmp_path / "union.pt", pieces[0])
    record = torch.load(tmp_path / "union.pt", weights_only=True)
    record["models"][1]["state_dict"] = {}  # a piece's weights lost
    torch.save(record, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="incompatible checkpoint"):
        UnionEBM.load(tmp_path / "bad.pt", pieces)


def test_a_float32_union_reloads_in_float32(tmp_path):
    # Catches a float32 union's pieces coming back float64 (their dtype not
    # recorded per piece), which changed their scores and samples.
    from implicit_geom import union

    model = _fitted_circles_union(torch.float32)
    model.save(tmp_path / "union.pt")
    back = UnionEBM.load(tmp_path / "union.pt", union(*[m.manifold for m in model.models]))
    assert all(m._param().dtype == torch.float32 for m in back.models)
    x = torch.tensor([[-2.0, 1.0], [3.0, 0.0]], dtype=torch.float32)
    assert torch.equal(back.log_prob(x), model.log_prob(x))
    samples = back.sample(20, n_steps=3, seed=1)
    assert samples.dtype == torch.float32
    assert torch.equal(samples, model.sample(20, n_steps=3, seed=1))


def test_union_load_refuses_pieces_other_than_the_saved_ones(tmp_path):
    # Catches UnionEBM.load pairing each saved density with whatever piece
    # came at its position: the pieces swapped (or another circle) loaded
    # silently, every model on the other model's circle. Rebuilt pieces
    # equal to the saved ones (a fresh ImplicitSphere, or float32 copies of
    # exactly representable values) still load, and a file saved before the
    # pieces were recorded loads unchecked, with a warning.
    from implicit_geom import ImplicitManifold, union
    from implicit_geom.exceptions import CheckpointError

    from implicit_geom.exceptions import NotFittedError
    from implicit_geom.models import EnergyMLP

    model = _fitted_circles_union()
    path = tmp_path / "union.pt"
    model.save(path)
    a, b = (m.manifold for m in model.models)
    # A piece whose trainable energy was never fitted is not saved either.
    half = UnionEBM(model.models[0], ConstrainedEBM(b, EnergyMLP(2, hidden=(4,))))
    with pytest.raises(NotFittedError, match="call fit first"):
        half.save(tmp_path / "half.pt")
    assert not (tmp_path / "half.pt").exists()
    with pytest.raises(CheckpointError, match="piece 0 .* was given as piece 1"):
        UnionEBM.load(path, union(b, a))
    # (The message names the parameter that differs.)
    with pytest.raises(CheckpointError, match=r"radius 1.5 \(saved: 1.0\)"):
        UnionEBM.load(path, [a, ImplicitSphere(1, center=[2.0, 0.0], radius=1.5)])
    with pytest.raises(CheckpointError, match=r"dim 2 \(saved: 1\), ambient_dim 3"):
        UnionEBM.load(path, [ImplicitSphere(2), ImplicitSphere(2, center=[5.0, 0.0, 0.0])])
    circle = ImplicitManifold(lambda y: (y - torch.tensor([-2.0, 0.0], dtype=y.dtype))
                              .square().sum(-1, keepdim=True) - 1, 2, 1)
    with pytest.raises(CheckpointError, match="class 'ImplicitManifold'"):
        UnionEBM.load(path, [circle, b])
    x = torch.tensor([[-2.0, 1.1], [2.0, -1.05]], dtype=torch.float64)
    fresh = [ImplicitSphere(1, center=[-2.0, 0.0]), ImplicitSphere(1, center=[2.0, 0.0])]
    assert torch.equal(UnionEBM.load(path, fresh).score_samples(x), model.score_samples(x))
    record = torch.load(path, weights_only=True)
    config = json.loads(record["config"])
    del config["pieces"]  # an older checkpoint
    record["config"] = json.dumps(config)
    torch.save(record, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="without its pieces' fingerprints"):
        old = UnionEBM.load(tmp_path / "old.pt", [a, b])
    assert torch.equal(old.score_samples(x), model.score_samples(x))


def test_union_load_sees_a_plain_f_and_can_be_overridden(tmp_path):
    # Catches the pieces' fingerprint blind to a plain F's numbers: two
    # lambdas share the qualified name '<lambda>', so the circle of radius 2
    # passed for the saved unit circle. check_manifold=False loads with a
    # warning (the caller's decision, not silence).
    from implicit_geom import ImplicitManifold, union
    from implicit_geom.exceptions import CheckpointError
    from implicit_geom.models import PolynomialEnergy

    def circle(c, r):
        return ImplicitManifold(lambda y: (y[..., :1] - c) ** 2 + y[..., 1:] ** 2 - r * r, 2, 1)

    def model(manifold):
        energy = PolynomialEnergy(2, 1)
        return ConstrainedEBM(manifold, energy.requires_grad_(False))

    saved = UnionEBM(model(circle(-2.0, 1.0)), model(circle(2.0, 1.0)),
                     log_partitions=[0.0, 0.0])
    path = tmp_path / "union.pt"
    saved.save(path)
    UnionEBM.load(path, [circle(-2.0, 1.0), circle(2.0, 1.0)])
    with pytest.raises(CheckpointError, match="piece 1 .*check_manifold=False"):
        UnionEBM.load(path, [circle(-2.0, 1.0), circle(2.0, 2.0)])
    with pytest.warns(UserWarning, match="loaded anyway"):
        UnionEBM.load(path, [circle(-2.0, 1.0), circle(2.0, 2.0)], check_manifold=False)
