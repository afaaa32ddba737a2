"""A large dataset checked a block of cells at a time, for `--check` and a run's own process:
every check and message of `load_dataset`, the cells' ids, labels and batches and the genes with
a count, in memory that does not grow with the matrix; the values of the few cells a timing or a
figure samples are read afterwards (`Survey.values`). A run's workers still read the dataset
whole (`load_dataset`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from gsrcl.config.settings import Dataset
from gsrcl.data import collection
from gsrcl.data.dataset import (
    DatasetCache,
    Scale,
    as_float32,
    check_empty,
    check_scale,
    check_values,
    id_order,
    labelled,
    unique_names,
)
from gsrcl.data.readers import Rows, read_rows
from gsrcl.errors import UserError

# datasets of more cells are surveyed by --check; fewer are read whole, as a run reads them
SURVEY_CELLS = 20_000
BLOCK_VALUES = 1 << 24  # a block of cells of at most this many values (64 MB of float32)


@dataclass
class Survey:
    """A dataset as `load_dataset` would return it, without its values: `cells` (X None) has
    obs[LABEL] (and obs[BATCH]) and the genes with a count, the cells in id order; `rows` is
    each cell's row in the file, `genes` each gene's column."""

    spec: Dataset
    cells: ad.AnnData
    rows: np.ndarray
    genes: np.ndarray

    def values(self, names: pd.Index) -> np.ndarray | sp.csr_matrix:
        """The checked float32 values of the cells named `names`, in that order (as stored:
        dense or CSR), read a block of the file at a time."""
        index = self.cells.obs_names.get_indexer(names)
        if (index < 0).any():
            raise KeyError(f"cells not in dataset {self.spec.name}: {list(names[index < 0][:3])}")
        wanted = self.rows[index]
        found = {}
        with _open(self.spec) as rows, _reading(self.spec):
            for start, stop in _blocks(rows):
                inside = wanted[(wanted >= start) & (wanted < stop)]
                if len(inside):
                    block = as_float32(rows.matrix[start:stop])[inside - start][:, self.genes]
                    found.update(zip(inside, _rows_of(block), strict=True))
        parts = [found[row] for row in wanted]
        return sp.vstack(parts, format="csr") if sp.issparse(parts[0]) else np.stack(parts)


class SurveyCache(DatasetCache):
    """The datasets of `--check` and of a run's own process: a large one surveyed
    (`survey_dataset`), its cells without values until `with_values` reads those of the cells
    asked for; others read whole."""

    def __init__(self, size: int = 4) -> None:
        super().__init__(size)
        self.surveys: dict[Dataset, Survey] = {}

    def _read(self, spec: Dataset) -> ad.AnnData:
        surveyed = survey_dataset(spec)
        if surveyed is None:
            return super()._read(spec)
        self.surveys[spec] = surveyed
        return surveyed.cells

    def with_values(self, spec: Dataset, cells: ad.AnnData) -> ad.AnnData:
        if cells.X is None:
            cells = cells.copy() if cells.is_view else cells
            cells.X = self.surveys[spec].values(cells.obs_names)
        return cells


def survey_dataset(spec: Dataset, most_cells: int | None = None) -> Survey | None:
    """The dataset surveyed, or None where `load_dataset` should read it whole: a registered
    dataset, a format or layout not read by blocks of cells (`read_rows`), or `most_cells` cells
    or fewer (None: SURVEY_CELLS)."""
    if collection.entry_of(spec) is not None:
        return None
    rows = read_rows(spec)
    if rows is None:
        return None
    with rows, _reading(spec):
        if rows.cells.n_obs <= (SURVEY_CELLS if most_cells is None else most_cells):
            return None
        return _surveyed(spec, rows)


def _surveyed(spec: Dataset, rows: Rows) -> Survey:
    cells, kept = labelled(spec, rows.cells)
    cells = unique_names(spec, cells)
    positions = np.flatnonzero(kept)
    cell_sums = np.zeros(len(positions))
    gene_sums = np.zeros(cells.n_vars)
    scale = Scale()
    for start, stop in _blocks(rows):
        inside = (positions >= start) & (positions < stop)
        block = as_float32(rows.matrix[start:stop])[positions[inside] - start]
        check_values(spec, block)
        scale = scale + Scale.of(block)
        cell_sums[inside] = np.asarray(block.sum(axis=1)).ravel()
        gene_sums += np.asarray(block.sum(axis=0)).ravel()
    check_scale(spec, scale)
    with_count, genes = cell_sums > 0, gene_sums > 0
    if check_empty(spec, with_count, genes):
        cells, positions = cells[with_count, genes].copy(), positions[with_count]
    order = id_order(cells.obs_names)
    return Survey(spec, cells[order].copy(), positions[order], np.flatnonzero(genes))


def _blocks(rows: Rows) -> list[tuple[int, int]]:
    cells, genes = rows.cells.shape
    step = max(1, BLOCK_VALUES // max(genes, 1))
    return [(start, min(start + step, cells)) for start in range(0, cells, step)]


def _rows_of(block) -> list:
    """A block's rows, each a 1-row CSR matrix or a 1-d array."""
    return [block[i] for i in range(block.shape[0])]


@contextmanager
def _reading(spec: Dataset) -> Iterator[None]:
    """A file that fails to read part-way says so as `read_matrix` does, naming it."""
    try:
        yield
    except (OSError, ValueError) as error:
        raise UserError(f"dataset {spec.name}: cannot read {spec.path}: {error}") from None


def _open(spec: Dataset) -> Rows:
    rows = read_rows(spec)
    assert rows is not None, "a surveyed dataset is read by blocks"
    return rows
