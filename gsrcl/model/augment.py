"""The two views of a cell, drawn on the data's device from a seeded generator."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gsrcl.config.settings import Method

Augment = Callable[[torch.Tensor], torch.Tensor]


def gaussian_noise(x: torch.Tensor, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """GsRCL's view: the log-expression plus independent N(0, sigma²) noise per entry."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return x + sigma * noise


def gene_masking(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """contrastive-sc's view: input dropout, each gene zeroed with probability p, survivors
    scaled by 1 / (1 - p) exactly as `torch.nn.Dropout` does."""
    keep = torch.rand(x.shape, generator=generator, device=x.device) >= p
    return x * keep / (1 - p)


def augmentation(method: Method, generator: torch.Generator) -> Augment:
    if method.augmentation == "noise":
        return lambda x: gaussian_noise(x, method.noise_sigma, generator)
    return lambda x: gene_masking(x, method.mask_p, generator)
