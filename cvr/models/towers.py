"""MLP towers: hidden layers with an activation (and optional dropout), then a linear output layer."""

from __future__ import annotations

from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "tanh": nn.Tanh}


def mlp(in_dim: int, hidden: list[int], out_dim: int, activation: str = "relu", dropout: float = 0.0) -> nn.Sequential:
    """Linear layers in_dim -> hidden... -> out_dim; the activation follows every layer but the last."""
    layers: list[nn.Module] = []
    width = in_dim
    for size in hidden:
        layers.append(nn.Linear(width, size))
        layers.append(ACTIVATIONS[activation]())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = size
    layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)
