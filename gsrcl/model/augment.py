"""The two views of a cell, drawn on the data's device from a seeded generator.

A view is written into a given tensor (`out`), in place: on a CPU the temporaries of
`x + sigma * randn(...)` and the concatenation of the two views cost as much as drawing the noise
(bench/training.py), and the values are the same bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from gsrcl.config.settings import Method

Augment = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (cells, out) → out, one view


def gaussian_noise(
    x: torch.Tensor, sigma: float, generator: torch.Generator, out: torch.Tensor | None = None
) -> torch.Tensor:
    """GsRCL's view: the log-expression plus independent N(0, sigma²) noise per entry."""
    out = torch.empty_like(x) if out is None else out
    return out.normal_(generator=generator).mul_(sigma).add_(x)


def gene_masking(
    x: torch.Tensor, p: float, generator: torch.Generator, out: torch.Tensor | None = None
) -> torch.Tensor:
    """contrastive-sc's view: input dropout, each gene zeroed with probability p, survivors
    scaled by 1 / (1 - p) exactly as `torch.nn.Dropout` does."""
    out = torch.empty_like(x) if out is None else out
    keep = out.uniform_(generator=generator) >= p
    return torch.mul(x, keep, out=out).div_(1 - p)


def augmentation(method: Method, generator: torch.Generator) -> Augment:
    if method.augmentation == "noise":
        return lambda x, out: gaussian_noise(x, method.noise_sigma, generator, out)
    return lambda x, out: gene_masking(x, method.mask_p, generator, out)


def two_views(augment: Augment, x: torch.Tensor, buffer: torch.Tensor | None) -> torch.Tensor:
    """Both views of `x`, stacked, drawn into `buffer` where it has their shape (a training
    step's views are dead once its backward pass is done, so the next step reuses them)."""
    shape = (2 * x.shape[0], *x.shape[1:])
    if buffer is None or buffer.shape != shape or buffer.dtype != x.dtype:
        buffer = torch.empty(shape, dtype=x.dtype, device=x.device)
    for half in buffer.chunk(2):
        augment(x, half)
    return buffer
