"""The encoder (kept after training) and projection head (dropped), as in the GsRCL paper."""

from __future__ import annotations

import torch
from torch import nn


def mlp(n_in: int, widths: tuple[int, ...], batchnorm: bool) -> nn.Sequential:
    """Linear → [BatchNorm] → ReLU for every hidden layer; the last layer is linear."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        layers.append(nn.Linear(n_in, width))
        if i < len(widths) - 1:
            if batchnorm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
        n_in = width
    return nn.Sequential(*layers)


class ContrastiveModel(nn.Module):
    def __init__(
        self,
        n_genes: int,
        encoder: tuple[int, ...],
        head: tuple[int, ...],
        batchnorm: bool,
        init_std: float,
    ) -> None:
        super().__init__()
        self.kwargs = dict(n_genes=n_genes, encoder=tuple(encoder), batchnorm=batchnorm)
        self.encoder = mlp(n_genes, encoder, batchnorm)
        self.head = mlp(encoder[-1], head, batchnorm)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, init_std)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def build_encoder(n_genes: int, encoder: tuple[int, ...], batchnorm: bool) -> nn.Sequential:
    """An encoder alone, for loading a saved checkpoint (weights + these kwargs)."""
    return mlp(n_genes, encoder, batchnorm)
