"""NeuralImplicitManifold with the residual architecture on high-dimensional data:
the general capability behind the image experiments (benchmarks/images.py)."""

import torch

from implicit_geom.learning import NeuralImplicitManifold
from implicit_geom.learning.presets import HIGH_DIM, HIGH_DIM_FROM, mdf_preset


def _curved_surface(n, seed):
    """A curved 2-D surface in R^16 (not contained in any 2-D affine subspace)."""
    gen = torch.Generator().manual_seed(seed)
    t = 2 * torch.rand(n, 2, generator=gen, dtype=torch.float64) - 1
    feats = torch.stack([t[:, 0], t[:, 1], t[:, 0] ** 2, t[:, 1] ** 2, t[:, 0] * t[:, 1],
                         torch.sin(2 * t[:, 0])], -1)
    q, _ = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64))
    return feats @ q[:6]


def _pca_distance(train, points, dim):
    mean = train.mean(0)
    basis = torch.linalg.svd(train - mean, full_matrices=False)[2][:dim]
    centred = points - mean
    return (centred - centred @ basis.T @ basis).norm(dim=-1)


def test_residual_manifold_fits_held_out_data_better_than_pca(tmp_path):
    # Dimension 2 in R^16 (codimension 14), the high-dimensional preset's
    # architecture: held-out points must lie much closer to the learned
    # manifold than to PCA's plane of the same dimension (the principal
    # subspace is where training starts, so a fit that does not bend it, e.g.
    # F shrinking its slopes instead, fails), every projection must converge,
    # and a save/load round trip must keep the zero set (the principal
    # normals are a buffer of the network).
    train, test = _curved_surface(600, 1), _curved_surface(200, 2)
    model = NeuralImplicitManifold(16, 14, hidden=(64, 64), architecture="residual",
                                   s_min=2.0 / float(train.std(0).mean()), s_max=200.0,
                                   w_neg=0.0, beta=0.0, lr=3e-3, epochs=45, batch_size=200,
                                   rank_batch=32, progress=False, seed=0).fit(train)
    res = model.solve_projection(test)
    assert bool(res.converged.all())
    ours = (test - res.x).norm(dim=-1).median()
    pca = _pca_distance(train, test, 2).median()
    assert ours < 0.3 * pca
    model.save(tmp_path / "m.ckpt")
    again = NeuralImplicitManifold.load(tmp_path / "m.ckpt", progress=False)
    assert again.architecture == "residual" and again.rank_batch == 32
    torch.testing.assert_close(again.submersion(test), model.submersion(test))


def test_high_dimensional_preset():
    # Data of HIGH_DIM_FROM or more dimensions without a preset of their own get
    # the residual architecture with slopes scaled to their spread; low
    # dimensional data and named presets are untouched.
    points = 0.25 * torch.randn(100, HIGH_DIM_FROM, dtype=torch.float64)
    preset = mdf_preset("my_images", 100, points)
    assert preset["architecture"] == HIGH_DIM["architecture"] == "residual"
    spread = float(points.std(0).mean())
    assert abs(preset["s_min"] * spread - 2.0) < 1e-12
    assert "architecture" not in mdf_preset("mine", 100, points[:, :3])
    assert "architecture" not in mdf_preset("two_circles", 100, points)
