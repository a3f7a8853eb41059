"""Energy networks: small float64 MLPs mapping points to scalar energies.

An MLP on raw coordinates is biased toward smooth functions: on S^2 and T^2
it needs many steps to carve the narrow peaks of real densities (flood
events along coasts and rivers). Random Fourier features of the ambient
coordinates (:class:`FourierFeatures`, ``EnergyMLP(..., fourier=m)``) give it
high frequencies from the start, on analytic and learned manifolds alike.
"""

import math

import torch
from torch import nn

_ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}


class FourierFeatures(nn.Module):
    """Fixed random Fourier features ``x -> [x, sin(W x), cos(W x)]``.

    The rows of ``W`` have uniformly random directions and lengths spread
    log-uniformly over ``[1, max_frequency]`` (in inverse units of x), so the
    features span scales from the whole space down to ``2 pi / max_frequency``.

    Parameters
    ----------
    dim : int
    n_features : int
        Frequencies (the output has ``dim + 2 n_features`` columns).
    max_frequency : float
    seed : int
    dtype : torch.dtype
    """

    def __init__(self, dim, n_features=64, max_frequency=8.0, seed=0, dtype=torch.float64):
        super().__init__()
        if int(n_features) < 1 or not max_frequency >= 1:
            raise ValueError(f"need n_features >= 1 and max_frequency >= 1, got {n_features}, "
                             f"{max_frequency}")
        gen = torch.Generator().manual_seed(int(seed))
        direction = torch.randn(int(n_features), int(dim), generator=gen, dtype=dtype)
        direction = direction / direction.norm(dim=-1, keepdim=True)
        length = torch.exp(torch.rand(int(n_features), 1, generator=gen, dtype=dtype)
                           * math.log(max_frequency))
        self.register_buffer("frequencies", direction * length)
        self.out_dim = int(dim) + 2 * int(n_features)

    def forward(self, x):
        proj = x @ self.frequencies.T
        return torch.cat([x, proj.sin(), proj.cos()], dim=-1)


class EnergyMLP(nn.Module):
    """Multilayer perceptron ``E: R^n -> R`` with smooth activations.

    Smooth activations (SiLU by default) keep ``grad_x E`` continuous, which
    Langevin dynamics needs.

    Parameters
    ----------
    dim : int
        Input dimension ``n``.
    hidden : sequence of int
        Widths of the hidden layers.
    activation : {"silu", "tanh", "softplus", "gelu"}
    seed : int, optional
        Seed of the weight initialisation (the global torch RNG is untouched).
    dtype : torch.dtype
        Parameter dtype (float64 by default).
    fourier : int
        Random Fourier features fed to the MLP (0: raw coordinates only).
    max_frequency : float
        Highest feature frequency (see :class:`FourierFeatures`).
    """

    def __init__(self, dim, hidden=(64, 64), activation="silu", seed=None,
                 dtype=torch.float64, fourier=0, max_frequency=8.0):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        self.fourier, self.max_frequency = int(fourier), float(max_frequency)
        self.features = (FourierFeatures(self.dim, self.fourier, self.max_frequency,
                                         0 if seed is None else int(seed), dtype)
                         if self.fourier > 0 else None)
        widths = (self.dim if self.features is None else self.features.out_dim, *self.hidden)
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b, dtype=dtype), _ACTIVATIONS[activation]()]
        layers.append(nn.Linear(widths[-1], 1, dtype=dtype))
        self.net = nn.Sequential(*layers)
        if seed is not None:
            gen = torch.Generator().manual_seed(int(seed))
            with torch.no_grad():
                for layer in self.net:
                    if isinstance(layer, nn.Linear):
                        bound = layer.in_features ** -0.5
                        layer.weight.copy_(torch.empty_like(layer.weight).uniform_(
                            -bound, bound, generator=gen))
                        layer.bias.copy_(torch.empty_like(layer.bias).uniform_(
                            -bound, bound, generator=gen))

    def config(self):
        """Constructor arguments, enough to rebuild the architecture."""
        config = {"dim": self.dim, "hidden": list(self.hidden), "activation": self.activation}
        if self.fourier:
            config.update(fourier=self.fourier, max_frequency=self.max_frequency)
        return config

    def forward(self, x):
        """Energies of points ``x`` of shape ``(..., n)``; returns shape ``(...,)``."""
        if self.features is not None:
            x = self.features(x)
        return self.net(x).squeeze(-1)
