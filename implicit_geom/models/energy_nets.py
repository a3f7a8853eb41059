"""Energy networks: small float64 MLPs mapping points to scalar energies."""

import torch
from torch import nn

from ..numerics import mlp


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
    activation : {"silu", "tanh", "softplus", "gelu", "sigmoid"}
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
        self.dim = int(dim)
        self.hidden = tuple(int(h) for h in hidden)
        self.activation = activation
        # The library's one MLP builder (exact graph-free Jacobians in samplers).
        gen = None if seed is None else torch.Generator().manual_seed(int(seed))
        self.net = mlp.build_mlp(self.dim, 1, self.hidden, activation, dtype, gen)

    def config(self):
        """Constructor arguments, enough to rebuild the architecture."""
        return {"dim": self.dim, "hidden": list(self.hidden), "activation": self.activation}

    def forward(self, x):
        """Energies of points ``x`` of shape ``(..., n)``; returns shape ``(...,)``."""
        return self.net(x).squeeze(-1)
