"""Larger datasets from a real one: copies of its cells with their counts thinned, so that no two
cells are equal (each UMI of a copy kept with some chance), for the benches that need more cells
than ../shared/data holds."""

from __future__ import annotations

import numpy as np
from scipy import sparse


def thinned_copies(
    counts: sparse.csr_matrix, copies: int, keep: float, rng: np.random.Generator
) -> sparse.csr_matrix:
    """`copies` copies of every row of `counts` stacked, each UMI kept with chance `keep`."""
    parts = []
    for _ in range(copies):
        part = counts.copy()
        part.data = rng.binomial(part.data.astype(np.int64), keep).astype(np.float32)
        part.eliminate_zeros()
        parts.append(part)
    return sparse.vstack(parts).tocsr()
