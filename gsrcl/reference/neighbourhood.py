"""Is a query cell like the reference cells of its predicted type? (the `Unassigned` check)

A classifier of one type against the rest only knows the reference's types: a cell of a type the
reference never saw is still scored against them, and can score high for the nearest one
(granulocytes for monocytes). So each predicted cell is also placed in the reference's own
expression space — normalised and logged, the 2000 most variable genes scaled by the reference's
mean and spread (a new batch's depth moves the rarely expressed genes most), 50 principal
components — and compared with the reference cells of its predicted type: its distance (cosine)
to its k-th nearest such cell, over the type's radius (the median of that distance among the
type's own cells: steadier than a high percentile for a small type), is its `distance ratio`;
above the model's multiplier it lies outside.
50 components, chosen on the references alone (bench/constants.py, docs/constants.md: each
Baron human reference's donors held out in turn): a donor's shift lies in the leading
components, so with 20 it is a large share of the distance (1.9-4.1 % of the held-out donor's
cells of known types beyond 3 radii, beyond the 2 % budget; 0.4-0.8 % with 50), while with 100
a type the reference lacks crowds in with the others (fewer of its cells caught than with 50).
The multiplier is chosen at export (`gsrcl.reference.rule`). Plain arrays (`.npz`, loaded with
allow_pickle=False).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import anndata as ad
import numpy as np
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from gsrcl.data.preprocess import fit_lognorm
from gsrcl.model.checkpoints import EncoderInput

COMPONENTS = 50
VARIABLE_GENES = 2000
NEIGHBOURS = 5
RADIUS_QUANTILE = 0.5  # the median
CLIP = 10.0  # scaled values beyond ±10 spread: as scanpy's scale(max_value=10)


@dataclass(frozen=True)
class Space:
    """The reference's expression space (fitted once per export, shared by the candidates):
    what places a cell in it, and where the reference's own cells lie."""

    arrays: dict  # target_sum, genes, gene_mean, gene_std, pca_mean, pca_components
    coordinates: np.ndarray  # the reference's cells, in its order


def fit_space(adata: ad.AnnData, values: str, components: int = COMPONENTS) -> Space:
    """Normalise and log, the VARIABLE_GENES most variable genes scaled, `components` principal
    components of the reference's cells (bench/constants.py scores other numbers)."""
    lognorm = fit_lognorm(adata, values)
    x = lognorm.transform(adata)
    genes = np.sort(np.argsort(-x.var(axis=0), kind="stable")[:VARIABLE_GENES])
    mean = x[:, genes].mean(axis=0)
    std = x[:, genes].std(axis=0)
    std = np.where(std > 0, std, 1).astype(np.float32)
    scaled = _scale(x[:, genes], mean, std)
    pca = PCA(min(components, *scaled.shape), svd_solver="randomized", random_state=0)
    pca.fit(scaled)
    arrays = {
        "target_sum": np.array(np.nan if lognorm.target_sum is None else lognorm.target_sum),
        "genes": genes,
        "gene_mean": mean.astype(np.float32),
        "gene_std": std,
        "pca_mean": pca.mean_.astype(np.float32),
        "pca_components": pca.components_.astype(np.float32),
    }
    return Space(arrays, pca.transform(scaled).astype(np.float32))


def fit(space: Space, labels: np.ndarray, types: list[str]) -> dict:
    """The arrays that describe each type's neighbourhood among the reference cells. A type of
    one cell has no spread of its own: it gets the median radius of the others."""
    radius = np.array([_radius(space.coordinates[labels == t]) for t in types])
    finite = radius[np.isfinite(radius)]
    if len(finite):
        radius[~np.isfinite(radius)] = np.median(finite)
    arrays = {**space.arrays, "radius": radius}
    for i, t in enumerate(types):
        arrays[f"cells_{i}"] = space.coordinates[labels == t]
    return arrays


def _scale(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    return np.clip((x - mean) / std, -CLIP, CLIP)


def _radius(own: np.ndarray) -> float:
    """The RADIUS_QUANTILE of each cell's distance to its k-th nearest other cell of the type."""
    k = min(NEIGHBOURS, len(own) - 1)
    if k < 1:
        return np.inf  # a type of one cell has no neighbourhood to judge by
    distances = NearestNeighbors(n_neighbors=k + 1, metric="cosine").fit(own).kneighbors(own)[0]
    return float(np.quantile(distances[:, k], RADIUS_QUANTILE))


def save(path: Path, arrays: dict) -> None:
    np.savez_compressed(path, **arrays)


class Neighbourhoods:
    """The stored arrays, ready to judge cells (`genes`: the reference's, in order)."""

    def __init__(self, arrays: dict, genes: list[str], values: str) -> None:
        target_sum = float(arrays["target_sum"])
        # cells are read as an encoder reads them: the reference's genes, normalised and logged
        self.input = EncoderInput(genes, values, None if np.isnan(target_sum) else target_sum)
        self.genes = arrays["genes"]
        self.gene_mean, self.gene_std = arrays["gene_mean"], arrays["gene_std"]
        self.mean, self.components = arrays["pca_mean"], arrays["pca_components"]
        self.radius = arrays["radius"]
        self.cells = [arrays[f"cells_{i}"] for i in range(len(self.radius))]
        self.indexes = []
        for own in self.cells:
            k = max(1, min(NEIGHBOURS, len(own) - 1))
            self.indexes.append((NearestNeighbors(n_neighbors=k, metric="cosine").fit(own), k))

    @cached_property
    def stored(self) -> np.ndarray:
        """Every stored cell's coordinates, in type order (made only to judge them)."""
        return np.concatenate(self.cells)

    @classmethod
    def load(cls, path: Path, genes: list[str], values: str) -> Neighbourhoods:
        with np.load(path, allow_pickle=False) as stored:
            return cls(dict(stored), genes, values)

    def coordinates(self, cells: ad.AnnData) -> np.ndarray:
        """The cells' place in the reference's space (its principal components)."""
        x, _ = self.input.prepare(cells)
        scaled = _scale(x[:, self.genes], self.gene_mean, self.gene_std)
        return (scaled - self.mean) @ self.components.T

    def ratios(self, coordinates: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """Each cell's distance to its k-th nearest reference cell of type index `predicted`,
        over that type's radius."""
        return self._ratios(coordinates, predicted, np.zeros(len(coordinates), dtype=bool))

    def held_out_ratios(
        self, predicted: np.ndarray, truth: np.ndarray, batches: np.ndarray | None = None
    ) -> np.ndarray:
        """`ratios` of the reference's own cells (stored in type order: cells_0, cells_1, ...),
        each judged without itself, as a query cell would be: `predicted` and `truth` are type
        indexes in that order. With `batches` (each stored cell's), a cell is judged against
        the cells of other batches only, as a new batch's cell would be (a type no other batch
        has is judged within)."""
        return HeldOutRatios(self, truth, batches)(predicted)

    def held_out_ratios_as(
        self, t: int, rows: np.ndarray, truth: np.ndarray, batches: np.ndarray | None
    ) -> np.ndarray:
        """`held_out_ratios` of the stored cells `rows` (a mask), all predicted type `t`."""
        judged = self.stored[rows]
        ratios = np.zeros(len(judged))
        within = np.ones(len(judged), dtype=bool)  # judged among the type's own stored cells
        if batches is not None:
            for batch in np.unique(batches[rows]):
                others = self.stored[(truth == t) & (batches != batch)]
                if len(others) == 0:
                    continue
                inside = batches[rows] == batch
                k = min(NEIGHBOURS, len(others))
                index = NearestNeighbors(n_neighbors=k, metric="cosine").fit(others)
                ratios[inside] = index.kneighbors(judged[inside])[0][:, -1] / self.radius[t]
                within &= ~inside
        if within.any():
            own = truth[rows][within] == t
            ratios[within] = self._ratios_as(t, judged[within], own)
        return ratios

    def _ratios(self, coordinates: np.ndarray, predicted: np.ndarray, own: np.ndarray):
        """`ratios`, where an `own` cell is one of its predicted type's stored cells: its
        nearest neighbour is itself, at distance 0, and is skipped."""
        ratios = np.zeros(len(coordinates))
        for t in np.unique(predicted):
            rows = predicted == t
            ratios[rows] = self._ratios_as(t, coordinates[rows], own[rows])
        return ratios

    def _ratios_as(self, t: int, coordinates: np.ndarray, own: np.ndarray) -> np.ndarray:
        index, k = self.indexes[t]
        wanted = min(k + 1, len(self.cells[t]))
        distances = index.kneighbors(coordinates, n_neighbors=wanted)[0]
        column = np.where(own, wanted - 1, k - 1)
        return distances[np.arange(len(column)), column] / self.radius[t]


class HeldOutRatios:
    """`Neighbourhoods.held_out_ratios` of one reference's stored cells (their types `truth`
    and `batches` fixed), each cell's ratio to a type computed once: the candidate models an
    export judges mostly predict the same types, so a later one needs only the cells it
    predicts otherwise (at 100 000 cells the ratios took most of the ~2 min each candidate's
    judging took)."""

    def __init__(
        self, regions: Neighbourhoods, truth: np.ndarray, batches: np.ndarray | None
    ) -> None:
        self.regions, self.truth, self.batches = regions, truth, batches
        self.known: dict[int, np.ndarray] = {}  # per type: each cell's ratio to it (NaN: not yet)

    def __call__(self, predicted: np.ndarray) -> np.ndarray:
        ratios = np.zeros(len(predicted))
        for t in np.unique(predicted):
            known = self.known.setdefault(int(t), np.full(len(predicted), np.nan))
            rows = predicted == t
            missing = rows & np.isnan(known)
            if missing.any():
                known[missing] = self.regions.held_out_ratios_as(
                    int(t), missing, self.truth, self.batches
                )
            ratios[rows] = known[rows]
        return ratios
