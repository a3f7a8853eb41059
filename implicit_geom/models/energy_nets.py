"""Energy networks: small float64 MLPs mapping points to scalar energies."""

import torch
from torch import nn

_ACTIVATIONS = {"silu": nn.SiLU, "tanh": nn.Tanh, "softplus": nn.Softplus, "gelu": nn.GELU}


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
    """

    def __init__(self, dim, hidden=(64, 64), activation="silu", seed=None,
                 dtype=torch.float64):
        super().__init__()
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACTIVATIONS)}")
        self.dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        widths = (self.dim, *self.hidden)
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
        return {"dim": self.dim, "hidden": list(self.hidden), "activation": self.activation}

    def forward(self, x):
        """Energies of points ``x`` of shape ``(..., n)``; returns shape ``(...,)``."""
        return self.net(x).squeeze(-1)
