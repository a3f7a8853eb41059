"""The tuned pushforward baseline, shared by ``likelihood.py`` and ``paper.py``.

One autoencoder, then latent EBMs (:func:`pushforward_candidates`) on its
codes, each stopped early on the validation points; a candidate whose kept
``log Z`` the latent grid does not resolve to 0.01 is dropped, as ours drops
uncertified states (:func:`fit_pushforward_candidates`). ``likelihood.py``
reports their validation-weighted mixture and the best single candidate;
``paper.py`` the best single candidate (its W evaluation decodes one model's
latent lattice, :func:`implicit_geom.evaluation.model_mass`).

The benchmark scripts run as ``python benchmarks/x.py``, so this folder is on
``sys.path`` and they import this module by its bare name.
"""

import math

import torch

from implicit_geom import NormalizationError, TrainingDivergedError
from implicit_geom.evaluation import held_out_nll
from implicit_geom.models import Autoencoder, EnergyMLP, PushforwardEBM

#: The largest estimated error of a kept candidate's latent ``log Z``.
MAX_LOG_Z_ERROR = 0.01


def pushforward_candidates(m, seed, quick):
    """Latent EBMs the pushforward baseline chooses from: ``(label, PushforwardEBM kwargs)``.

    The same care as ours: the same energy families trained by exact maximum
    likelihood (the latent space is a box of R^m, m <= 2, where ``log Z`` is
    a grid sum), each at the default latent box and at the reference code's
    wider one (0.5), plus the paper's PCD training.
    """
    # The latent EBM's default grids: 64 nodes per axis in training (shifted
    # every step), 128 in validation, 256 for the reported log Z; a candidate
    # whose two last disagree by > 0.01 (Richardson) is dropped.
    mle = dict(method="mle", n_iter=150 if quick else 1500, lr=1e-2, lr_floor=0.1,
               batch_size=2048, val_every=10, patience=10)
    nets = {"MLP": dict(hidden=(64, 64)),
            "Fourier MLP (max frequency 4)": dict(hidden=(64, 64), fourier=32, max_frequency=4.0),
            "Fourier MLP (max frequency 16)": dict(hidden=(64, 64), fourier=64,
                                                  max_frequency=16.0)}
    out = [(f"{label}, exact, box pad {pad}",
            dict(energy_net=EnergyMLP(m, seed=seed, **net), latent_pad=pad, **mle))
           for pad in (0.1, 0.5) for label, net in nets.items()]
    out.append(("MLP, PCD (the paper's training)",
                dict(n_iter=150 if quick else 1000, n_mcmc_steps=15, step_size=0.3,
                     batch_size=128, buffer_size=500, lr=3e-3, lr_floor=0.1, beta=0.01,
                     val_every=25, patience=8)))
    return out


def fit_pushforward_candidates(train, val, m, seed, quick, log=print):
    """Fit one autoencoder on ``train``, then every candidate latent EBM on its codes.

    Every candidate decodes through the same autoencoder, so their densities
    are on one manifold (the decoder image). Each is stopped early on the
    codes of ``val`` and scored by its held-out NLL there; a candidate whose
    training diverged, whose validation NLL is not finite or whose kept
    ``log Z`` error exceeds :data:`MAX_LOG_Z_ERROR` is dropped.

    Returns
    -------
    fitted : list of (label, PushforwardEBM, validation NLL)
        The kept candidates, in :func:`pushforward_candidates` order.
    info : dict
        How far the decoder image (the manifold the density lives on) is
        from the validation points: median and max ``|dec(enc(x)) - x|``.

    Raises
    ------
    NormalizationError
        If no candidate is kept.
    """
    n = train.shape[1]
    ae = Autoencoder(n, m, seed=seed)
    ae.fit(torch.as_tensor(train, dtype=torch.float64), n_iter=1000 if quick else 3000, seed=seed)
    fitted = []
    for label, kwargs in pushforward_candidates(m, seed, quick):
        model = PushforwardEBM(n, m, autoencoder=ae, seed=seed, **kwargs)
        try:
            model.fit(train, val)
        except TrainingDivergedError as err:
            log(f"    [pushforward {label}]: dropped, {err}")
            continue
        error = model.latent_ebm.log_partition_error()
        score = held_out_nll(model, val)
        log(f"    [pushforward {label}]: validation NLL {score:.4f}; log Z error {error:.1e}")
        if math.isfinite(score) and error <= MAX_LOG_Z_ERROR:
            fitted.append((label, model, score))
    if not fitted:
        raise NormalizationError("no pushforward candidate kept a certified finite log Z")
    with torch.no_grad():
        x = torch.as_tensor(val, dtype=torch.float64)
        gap = (ae(x) - x).norm(dim=-1)
    return fitted, {"val_reconstruction_median": round(float(gap.median()), 5),
                    "val_reconstruction_max": round(float(gap.max()), 4)}


def best_candidate(fitted):
    """The kept candidate with the lowest validation NLL: ``(label, model, score)``."""
    return min(fitted, key=lambda f: f[2])
