"""geomstats' estimators and product spaces run unchanged on implicit manifolds."""

import torch
from geomstats.geometry.hypersphere import Hypersphere
from geomstats.geometry.product_manifold import ProductManifold
from geomstats.learning.frechet_mean import FrechetMean
from geomstats.learning.kmeans import RiemannianKMeans
from geomstats.learning.pca import TangentPCA

import implicit_geom as ig
from implicit_geom.datasets import vmf_sphere


def test_frechet_mean_is_not_the_linear_mean():
    # A metric subclassing EuclideanMetric would make FrechetMean return the
    # (off-manifold) linear mean; ours must stay on M.
    sphere = ig.ImplicitSphere(2)
    est = FrechetMean(sphere)
    assert type(est) is FrechetMean
    pts = vmf_sphere(50, mu=[0.0, 0.0, 1.0], kappa=2.0, seed=0)
    mean = est.fit(pts).estimate_
    assert sphere.belongs(mean, atol=1e-9)


def test_tangent_pca_on_torus_patch():
    torus = ig.ImplicitTorus(2.0, 1.0)
    base = torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)
    # Points spread mostly along the equator (y direction): PC1 is that direction.
    gen = torch.Generator().manual_seed(0)
    coef = torch.randn(60, 2, generator=gen, dtype=torch.float64) * torch.tensor([0.4, 0.05])
    tangent = torch.stack([torch.zeros(60), coef[:, 0], coef[:, 1]], -1)
    pts = torus.metric.exp(tangent, base)
    tpca = TangentPCA(torus, n_components=2).fit(pts, base_point=base)
    assert tpca.explained_variance_ratio_[0] > 0.95
    pc1 = torch.as_tensor(tpca.components_[0])
    assert abs(float(pc1[1])) > 0.99


def test_riemannian_kmeans_separates_clusters():
    sphere = ig.ImplicitSphere(2)
    a = vmf_sphere(30, mu=[0.0, 0.0, 1.0], kappa=50.0, seed=1)
    b = vmf_sphere(30, mu=[1.0, 0.0, 0.0], kappa=50.0, seed=2)
    km = RiemannianKMeans(sphere, n_clusters=2, init="kmeans++", max_iter=20)
    torch.manual_seed(3)
    labels = km.fit(torch.cat([a, b])).labels_
    assert len(set(labels[:30].tolist())) == 1 and len(set(labels[30:].tolist())) == 1
    assert labels[0] != labels[-1]
    assert sphere.belongs(km.cluster_centers_, atol=1e-9).all()


def test_product_of_implicit_and_hypersphere():
    product = ProductManifold([ig.ImplicitTorus(2.0, 1.0), Hypersphere(2)])
    torus_pts = ig.ImplicitTorus(2.0, 1.0).metric.exp(
        0.2 * torch.randn(20, 3, dtype=torch.float64) * torch.tensor([0, 1.0, 1.0]),
        torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64))
    sphere_pts = vmf_sphere(20, mu=[0.0, 0.0, 1.0], kappa=10.0, seed=0)
    pts = torch.stack([torus_pts, sphere_pts], dim=-2)
    mean = FrechetMean(product).fit(pts).estimate_
    assert mean.shape == (2, 3)
    assert ig.ImplicitTorus(2.0, 1.0).belongs(mean[0], atol=1e-9)
    torch.testing.assert_close(mean[1].norm(), torch.tensor(1.0, dtype=torch.float64))
    d = product.metric.dist(pts[0], pts[1])
    parts = torch.stack([ig.ImplicitTorus(2.0, 1.0).metric.dist(pts[0, 0], pts[1, 0]),
                         Hypersphere(2).metric.dist(pts[0, 1], pts[1, 1])])
    torch.testing.assert_close(d, parts.norm())
