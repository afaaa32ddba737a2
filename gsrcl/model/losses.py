"""Contrastive losses on two views `z1`, `z2` (rows are cells, same order in both views).

Both are means over the 2N views of log Σ_{j≠i} exp(s_ij) minus the view's positive
similarities, s_ij = cos(z_i, z_j) / temperature. Up to FULL_MATRIX_VIEWS views (a batch of up
to 4096 cells) the 2N × 2N matrix is made whole, as the paper does. Past it (a batch of 8192
cells would make 16 384² similarities and their gradients: about 5 GB on a CPU) the log-sums are
made BLOCK_ROWS rows at a time, each block made again in the backward pass, and the positives'
similarities from per-class sums of the views: memory grows as 2N × BLOCK_ROWS, and the loss and
its gradient are the same to float rounding (tests/test_losses.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FULL_MATRIX_VIEWS = 8192  # views (2 × cells of a batch) whose similarities are made whole
BLOCK_ROWS = 1024  # rows of similarities made at a time past it


def similarity_bytes(views: int) -> int:
    """The memory of a loss's similarities over `views` views and their gradient (float32): the
    whole matrix about four times (logits, masked, log-softmax, gradient), or a few blocks."""
    rows = views if views <= FULL_MATRIX_VIEWS else 3 * BLOCK_ROWS
    return 4 * 4 * rows * views


def _unit_views(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Both views' rows, stacked (2N), scaled to unit length: their dot products are cosines."""
    return F.normalize(torch.cat([z1, z2]), dim=1)


def _log_softmax_without_self(z1: torch.Tensor, z2: torch.Tensor, temperature: float):
    """Cosine similarities / temperature over all 2N views, each row excluding itself."""
    z = _unit_views(z1, z2)
    logits = z @ z.T / temperature
    self_pairs = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_pairs, float("-inf"))
    return F.log_softmax(logits, dim=1), self_pairs


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of the same cell."""
    n = len(z1)
    if 2 * n > FULL_MATRIX_VIEWS:
        z = _unit_views(z1, z2)
        partner = z.roll(n, dims=0)  # view i's other view: i ± n
        return (_log_partitions(z, temperature) - (z * partner).sum(1) / temperature).mean()
    log_prob, _ = _log_softmax_without_self(z1, z2, temperature)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z1.device)
    return -log_prob[torch.arange(2 * n, device=z1.device), partner].mean()


def supcon(z1: torch.Tensor, z2: torch.Tensor, labels: torch.Tensor, temperature: float):
    """Supervised contrastive loss (Khosla et al. 2020, L_out): the positives of a view are all
    other views with its label; the loss averages -log p over them, then over views."""
    both = torch.cat([labels, labels])
    if len(both) > FULL_MATRIX_VIEWS:
        z = _unit_views(z1, z2)
        _, classes = torch.unique(both, return_inverse=True)
        sums = torch.zeros(int(classes.max()) + 1, z.shape[1], dtype=z.dtype, device=z.device)
        sums = sums.index_add(0, classes, z)  # each class's views summed
        positives = torch.bincount(classes)[classes] - 1  # a view's others of its class
        similarity = (z * (sums[classes] - z)).sum(1) / temperature  # Σ over those others
        return (_log_partitions(z, temperature) - similarity / positives).mean()
    log_prob, self_pairs = _log_softmax_without_self(z1, z2, temperature)
    positive = (both[:, None] == both[None, :]) & ~self_pairs
    summed = log_prob.masked_fill(~positive, 0).sum(dim=1)
    return -(summed / positive.sum(dim=1)).mean()


def _log_partitions(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """log Σ_{j≠i} exp(z_i · z_j / temperature) of every row i, BLOCK_ROWS rows at a time, in
    float32 at least (outside a bf16 autocast: its backward pass runs outside it)."""
    with torch.autocast(z.device.type, enabled=False):
        return _LogPartitions.apply(z.float() if z.dtype != torch.float64 else z, temperature)


class _LogPartitions(torch.autograd.Function):
    """Row log-sum-exps of z zᵀ / temperature without the diagonal, made and differentiated a
    block of rows at a time: only the rows' log-sums are kept for the backward pass, which makes
    each block's softmax again (one exp pass each way, as log_softmax on the whole matrix)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, temperature: float) -> torch.Tensor:
        out = torch.cat([_block_logits(z, rows, temperature).logsumexp(1) for rows in _blocks(z)])
        ctx.save_for_backward(z, out)
        ctx.temperature = temperature
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, out = ctx.saved_tensors
        grad_z = torch.zeros_like(z)
        for rows in _blocks(z):  # d out_i / d s_ij = softmax_ij; s_ij = z_i · z_j / T
            weights = (_block_logits(z, rows, ctx.temperature) - out[rows, None]).exp_()
            weights *= grad[rows, None]
            grad_z[rows] += weights @ z
            grad_z += weights.T @ z[rows]
        return grad_z / ctx.temperature, None


def _blocks(z: torch.Tensor) -> list[slice]:
    return [slice(start, start + BLOCK_ROWS) for start in range(0, len(z), BLOCK_ROWS)]


def _block_logits(z: torch.Tensor, rows: slice, temperature: float) -> torch.Tensor:
    """z[rows] zᵀ / temperature, each row's own entry -inf."""
    logits = z[rows] @ z.T / temperature
    own = torch.arange(logits.shape[0], device=z.device)
    logits[own, rows.start + own] = float("-inf")
    return logits
