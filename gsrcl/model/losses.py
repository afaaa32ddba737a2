"""Contrastive losses on two views `z1`, `z2` (rows are cells, same order in both views)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _log_softmax_without_self(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """Cosine similarities / temperature over all 2N views, each row excluding itself."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    return F.log_softmax(logits, dim=1), self_pairs


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of the same cell."""
    log_prob, _ = _log_softmax_without_self(z1, z2, temperature)
    n = len(z1)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z1.device)
    return -log_prob[torch.arange(2 * n, device=z1.device), partner].mean()


def supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): the positives of a view are all
    other views with its label; the loss averages -log p over them, then over views."""
    log_prob, self_pairs = _log_softmax_without_self(z1, z2, temperature)
    both = torch.cat([labels, labels])
    positive = (both[:, None] == both[None, :]) & ~self_pairs
    summed = log_prob.masked_fill(~positive, 0).sum(dim=1)
    return -(summed / positive.sum(dim=1)).mean()
