"""Is a query cell like the reference cells of its predicted type? (the `Unassigned` check)

A classifier of one type against the rest only knows the reference's types: a cell of a type the
reference never saw is still scored against them, and can score high for the nearest one
(granulocytes for monocytes). So each predicted cell is also placed in the reference's own
expression space (normalised, log1p, 20 principal components of the reference cells) and compared
with the reference cells of its predicted type: when its k-th nearest such cell (cosine distance)
is farther than for 99 % of those cells among themselves, it lies outside the type's neighbourhood.
Everything is stored as plain arrays (`.npz`, loaded with allow_pickle=False).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from gsrcl.data.preprocess import fit_lognorm
from gsrcl.model.checkpoints import EncoderInput

COMPONENTS = 20
NEIGHBOURS = 5
QUANTILE = 0.99


def fit(adata: ad.AnnData, labels: np.ndarray, values: str, types: list[str]) -> dict:
    """The arrays that describe each type's neighbourhood among the reference cells."""
    lognorm = fit_lognorm(adata, values)
    x = lognorm.transform(adata)
    pca = PCA(min(COMPONENTS, *x.shape), svd_solver="randomized", random_state=0).fit(x)
    coordinates = pca.transform(x).astype(np.float32)
    arrays = {
        "target_sum": np.array(np.nan if lognorm.target_sum is None else lognorm.target_sum),
        "pca_mean": pca.mean_.astype(np.float32),
        "pca_components": pca.components_.astype(np.float32),
        "radius": np.array([_radius(coordinates[labels == t]) for t in types]),
    }
    for i, t in enumerate(types):
        arrays[f"cells_{i}"] = coordinates[labels == t]
    return arrays


def _radius(own: np.ndarray) -> float:
    """The QUANTILE of each cell's distance to its k-th nearest other cell of the type."""
    k = min(NEIGHBOURS, len(own) - 1)
    if k < 1:
        return np.inf  # a type of one cell has no neighbourhood to judge by
    distances = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(own).kneighbors(own)[0]
    return float(np.quantile(distances[:, k], QUANTILE))


def save(path: Path, arrays: dict) -> None:
    np.savez_compressed(path, **arrays)


class Neighbourhoods:
    """The stored arrays, ready to judge query cells (`genes`: the reference's, in order)."""

    def __init__(self, path: Path, genes: list[str], values: str) -> None:
        with np.load(path, allow_pickle=False) as stored:
            arrays = dict(stored)
        target_sum = float(arrays["target_sum"])
        # query cells are read as an encoder reads them: the reference's genes, normalised
        self.input = EncoderInput(genes, values, None if np.isnan(target_sum) else target_sum)
        self.mean, self.components = arrays["pca_mean"], arrays["pca_components"]
        self.radius = arrays["radius"]
        self.indexes = []
        for i in range(len(self.radius)):
            own = arrays[f"cells_{i}"]
            k = max(1, min(NEIGHBOURS, len(own) - 1))
            self.indexes.append((NearestNeighbors(n_neighbors=k, metric="cosine").fit(own), k))

    def outside(self, cells: ad.AnnData, predicted: np.ndarray) -> np.ndarray:
        """For each cell, whether it lies outside the neighbourhood of type index `predicted`."""
        x, _ = self.input.prepare(cells)
        coordinates = (x - self.mean) @ self.components.T
        outside = np.zeros(len(x), dtype=bool)
        for t in np.unique(predicted):
            rows = predicted == t
            index, k = self.indexes[t]
            distances = index.kneighbors(coordinates[rows], n_neighbors=k)[0][:, -1]
            outside[rows] = distances > self.radius[t]
        return outside
