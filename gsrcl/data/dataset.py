"""A dataset spec → a checked AnnData: float32 `X`, unique cell ids, `obs['label']` (and
`obs['batch']` when the spec names a batch column).

Labels come from an `obs` column or a file: a one-column file (one label per cell, in order), a
two-column file (cell id, label; matched by id), or the GsRCL paper's one-row binary files
`<type>_VR_Labels.csv` given as a glob (a cell's type is the file that marks it 1). A registered
dataset (`path="zenodo:<name>"`, `gsrcl.data.collection`) is fetched first and read from its
files; where the paper gives binary task files, each must mark exactly the cells its type labels.
Values are
checked against what the dataset declares (counts or log), and refused when NaN, infinite or
negative; all-zero genes and cells are removed with a warning.
"""

from __future__ import annotations

import glob
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from gsrcl.config.settings import Dataset
from gsrcl.data import collection, download
from gsrcl.data.readers import read_matrix
from gsrcl.errors import UserError

log = logging.getLogger(__name__)

LABEL = "label"
BATCH = "batch"
VR_SUFFIX = "_VR_Labels.csv"
LOG_MAX = 20.0  # log1p of any realistic count stays below this


def load_dataset(spec: Dataset) -> ad.AnnData:
    """Read the matrix and labels of `spec`, check them, and return the labelled cells."""
    entry = collection.entry_of(spec)
    if entry is not None:
        spec = _fetched(spec, download.fetch(entry))
    adata = read_matrix(spec)
    labels = _labels(spec, adata)
    if entry is not None:
        _check_paper_tasks(spec, labels, download.files(entry).tasks)
    adata, _ = labelled(spec, adata, labels)
    adata = checked_values(spec, adata)
    check_scale(spec, Scale.of(adata.X))
    adata = _without_empty(spec, adata)
    if entry is not None:
        _compare_with_registry(spec, entry, adata)
    return in_id_order(adata)


def labelled(
    spec: Dataset, adata: ad.AnnData, labels: pd.Series | None = None
) -> tuple[ad.AnnData, np.ndarray]:
    """The cells with a label, in obs[LABEL] (and obs[BATCH]), and which of `adata`'s they are.
    `labels`: the spec's labels when already read."""
    labels = _labels(spec, adata) if labels is None else labels
    if spec.batch is not None:
        adata.obs[BATCH] = _batches(spec, adata)
    adata.obs[LABEL] = labels
    kept = adata.obs[LABEL].notna().to_numpy()
    if not kept.any():
        raise UserError(f"dataset {spec.name}: no cell has a label; check `labels`/`labels_file`")
    if not kept.all():
        log.warning("dataset %s: dropped %d cells without a label", spec.name, (~kept).sum())
        adata = adata[kept].copy()
    return adata, kept


class DatasetCache:
    """Datasets read once and kept for the life of this object (a worker process, a run), at
    most `size` of them: an explicit cache, not a process-wide one."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._datasets: dict[Dataset, ad.AnnData] = {}
        self.seconds: dict[str, float] = {}  # dataset name → its first read (a worker's too)

    def get(self, spec: Dataset) -> ad.AnnData:
        if spec not in self._datasets:
            if len(self._datasets) >= self.size:
                self._datasets.pop(next(iter(self._datasets)))  # the oldest goes
            start = time.perf_counter()
            self._datasets[spec] = self._read(spec)
            self.seconds.setdefault(spec.name, time.perf_counter() - start)
        return self._datasets[spec]

    def _read(self, spec: Dataset) -> ad.AnnData:
        return load_dataset(spec)

    def with_values(self, spec: Dataset, cells: ad.AnnData) -> ad.AnnData:
        """`cells`, some of `get(spec)`'s, with their values (here they have them already)."""
        return cells


def in_id_order(adata: ad.AnnData) -> ad.AnnData:
    """The cells sorted by id: every split, shuffle and training batch is drawn from this order,
    so the same cells stored in another row order give identical results."""
    order = id_order(adata.obs_names)
    if (order == np.arange(adata.n_obs)).all():
        return adata
    x, adata.X = adata.X, None  # the matrix reordered once (a view's copy makes two)
    ordered = adata[order].copy()
    ordered.X, adata.X = x[order], x
    return ordered


def id_order(names: pd.Index) -> np.ndarray:
    """The positions of cell ids `names` sorted (stable)."""
    return np.argsort(names.to_numpy(dtype=str), kind="stable")


def checked_values(spec: Dataset, adata: ad.AnnData) -> ad.AnnData:
    adata = unique_names(spec, adata)
    adata.X = as_float32(adata.X)
    check_values(spec, adata.X)
    return adata


def check_values(spec: Dataset, x) -> None:
    """Float32 values (dense or sparse) are refused when NaN, infinite or negative."""
    values = _stored(x)
    where = f"dataset {spec.name}: {spec.path}"
    if not all(np.isfinite(block).all() for block in _value_blocks(values)):
        raise UserError(f"{where} holds NaN or infinite values; remove or impute them first")
    if any((block < 0).any() for block in _value_blocks(values)):
        raise UserError(
            f"{where} holds negative values (scaled data?); give raw counts or log-normalised "
            "values (for pbmc68k_reduced, use_raw=True)"
        )


def unique_names(spec: Dataset, adata: ad.AnnData) -> ad.AnnData:
    """Cell ids and gene names made unique (with a warning), in place; no gene is an error. A
    matrix read in blocks has its names checked once, on its obs and var alone."""
    if not adata.obs_names.is_unique:
        log.warning("dataset %s: cell ids are not unique; made unique with suffixes", spec.name)
        adata.obs_names_make_unique()
    if adata.n_vars == 0:
        raise UserError(f"dataset {spec.name}: {spec.path} holds no gene columns")
    if not adata.var_names.is_unique:
        repeated = adata.var_names[adata.var_names.duplicated()].unique()
        log.warning(
            "dataset %s: %d gene names occur more than once (e.g. %s); each repeat is kept as "
            "its own gene, renamed with a suffix (%s-1, ...), as anndata's var_names_make_unique",
            spec.name,
            len(repeated),
            list(repeated[:3]),
            repeated[0],
        )
        adata.var_names_make_unique()
    return adata


def scale_mismatch(declared: str, x) -> str | None:
    """How values `x` contradict the declared scale ("counts" or "log"), or None if they fit."""
    return Scale.of(x).mismatch(declared)


@dataclass(frozen=True)
class Scale:
    """What the declared scale is judged by: the largest value, and whether all are integers."""

    largest: float = 0.0
    integer: bool = True

    @classmethod
    def of(cls, x) -> Scale:
        values = _stored(x)
        integer = all(  # a block at a time: np.round of all values would copy them
            np.array_equal(block, np.round(block)) for block in _value_blocks(values)
        )
        return cls(float(values.max(initial=0.0)), integer)

    def __add__(self, other: Scale) -> Scale:
        """The scale of two blocks of values together."""
        return Scale(max(self.largest, other.largest), self.integer and other.integer)

    def mismatch(self, declared: str) -> str | None:
        if declared == "counts" and not self.integer:
            return f"holds non-integer values (largest {self.largest:.3g}), not raw counts"
        if declared == "log" and self.integer and self.largest > LOG_MAX:
            return (
                f"holds integers up to {self.largest:.0f}, which look like raw counts, not log "
                "values"
            )
        return None


# ---- labels ----


def _labels(spec: Dataset, adata: ad.AnnData) -> pd.Series:
    if spec.labels_file is None:
        if spec.labels not in adata.obs:
            raise UserError(
                f"dataset {spec.name}: {spec.path} has no obs column {spec.labels!r}; "
                f"columns are {list(adata.obs.columns)}; set `labels` or `labels_file`"
            )
        values = adata.obs[spec.labels].to_numpy(dtype=object)
    elif spec.labels_file.endswith(VR_SUFFIX):
        values = _labels_from_vr_files(spec, adata.n_obs)
    else:
        values = _labels_from_table(spec, adata)
    labels = pd.Series(values, index=adata.obs_names, dtype=object)
    return labels.map(lambda v: None if pd.isna(v) or str(v) == "" else str(v))


def _fetched(spec: Dataset, files: download.Files) -> Dataset:
    """The spec read from a registered dataset's local files (labels from its label file, unless
    the spec names other labels)."""
    labels = spec.labels_file or str(files.labels)
    return replace(spec, path=str(files.matrix), labels_file=labels)


def _check_paper_tasks(spec: Dataset, labels: pd.Series, tasks: dict[str, Path]) -> None:
    """Each of the paper's task files marks exactly the cells labelled with its type: else these
    labels are not the ones the paper's tasks were made from."""
    for cell_type, path in tasks.items():
        marked = _labels_from_vr_files(replace(spec, labels_file=str(path)), len(labels))
        differ = int(((marked == cell_type) != (labels.to_numpy() == cell_type)).sum())
        if differ:
            raise UserError(
                f"dataset {spec.name}: the paper's task file {path} disagrees with "
                f"{spec.labels_file} on {differ} cells of {cell_type!r}: these are not the labels "
                f"the paper's tasks were made from. To run on them anyway, give the files "
                f"themselves: path={spec.path!r}, labels_file={spec.labels_file!r}"
            )


def _compare_with_registry(spec: Dataset, entry: collection.Entry, adata: ad.AnnData) -> None:
    """Said when the files differ from the shape the registry records (which --check plans by)."""
    read = (adata.n_obs, adata.n_vars, adata.obs[LABEL].nunique())
    recorded = (entry.cells, entry.genes, entry.types)
    if read != recorded:
        log.warning(
            "dataset %s: %s holds %d cells × %d genes with a count, %d cell types; the registry "
            "(gsrcl/data/collection.py), by which --check plans, records %d × %d, %d",
            spec.name,
            spec.path,
            *read,
            *recorded,
        )


def _batches(spec: Dataset, adata: ad.AnnData) -> pd.Series:
    """Each cell's batch, as text; every cell needs one."""
    if spec.batch not in adata.obs:
        raise UserError(
            f"dataset {spec.name}: {spec.path} has no obs column {spec.batch!r} for `batch`; "
            f"columns are {list(adata.obs.columns)}"
        )
    values = adata.obs[spec.batch]
    if values.isna().any():
        raise UserError(
            f"dataset {spec.name}: {values.isna().sum()} cells have no {spec.batch!r} (batch); "
            "give every cell a batch, or set batch=None"
        )
    return values.astype(str)


def _labels_from_table(spec: Dataset, adata: ad.AnnData) -> np.ndarray:
    path = _existing(spec, spec.labels_file)
    sep = "," if ".csv" in path.name.lower() else "\t"
    table = pd.read_csv(path, sep=sep, dtype=str)
    if table.shape[1] == 2:  # cell id, label: matched by id
        by_id = pd.Series(table.iloc[:, 1].to_numpy(), index=table.iloc[:, 0].to_numpy())
        if by_id.index.duplicated().any():
            raise UserError(f"dataset {spec.name}: labels file {path} lists a cell id twice")
        matched = by_id.reindex(adata.obs_names)
        if matched.isna().all():
            genes = adata.var_names.isin(by_id.index).any() and not spec.transpose
            hint = "; they are the matrix's column names: set transpose=True" if genes else ""
            raise UserError(
                f"dataset {spec.name}: no cell id of {path} matches the matrix's cell ids "
                f"(e.g. {list(by_id.index[:2])} vs {list(adata.obs_names[:2])}){hint}"
            )
        return matched.to_numpy(dtype=object)
    if table.shape[1] != 1:
        raise UserError(
            f"dataset {spec.name}: labels file {path} has {table.shape[1]} columns; give one "
            "column (a label per cell, in order) or two (cell id, label)"
        )
    if len(table) != adata.n_obs:
        hint = (
            f"; the matrix has {adata.n_vars} columns, one per label: if its rows are genes and "
            "its columns cells, set transpose=True"
            if len(table) == adata.n_vars and not spec.transpose
            else ""
        )
        raise UserError(
            f"dataset {spec.name}: labels file {path} has {len(table)} labels for {adata.n_obs} "
            f"cells; it needs one label per cell, in the matrix's cell order{hint}"
        )
    return table.iloc[:, 0].to_numpy(dtype=object)


def _labels_from_vr_files(spec: Dataset, n_cells: int) -> np.ndarray:
    """GsRCL's `<type>_VR_Labels.csv`: one row of 0/1 per cell type; together, one label a cell."""
    paths = sorted(glob.glob(spec.labels_file))
    if not paths:
        raise UserError(f"dataset {spec.name}: no file matches labels_file {spec.labels_file}")
    marks = {}
    for path in paths:
        row = pd.read_csv(path, header=None).to_numpy().ravel()
        if len(row) != n_cells or not np.isin(row, (0, 1)).all():
            raise UserError(
                f"dataset {spec.name}: {path} must hold one row of {n_cells} values 0 or 1 "
                f"(one per cell); it holds {len(row)} values"
            )
        marks[Path(path).name.removesuffix(VR_SUFFIX)] = row.astype(bool)
    if len(marks) == 1:  # a single binary file: the type against the rest
        ((name, positive),) = marks.items()
        return np.where(positive, name, f"not {name}").astype(object)
    stacked = np.stack(list(marks.values()), axis=1)
    if (stacked.sum(axis=1) > 1).any():
        raise UserError(f"dataset {spec.name}: some cells are marked 1 in several VR label files")
    names = np.array(list(marks), dtype=object)
    return np.where(stacked.any(axis=1), names[stacked.argmax(axis=1)], None)


def _existing(spec: Dataset, name: str) -> Path:
    path = Path(name)
    if not path.exists():
        raise UserError(f"dataset {spec.name}: labels file {path} not found")
    return path


# ---- values ----


def as_float32(x) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def _stored(x) -> np.ndarray:
    return x.data if sp.issparse(x) else x.ravel()


def _value_blocks(values: np.ndarray, size: int = 1 << 22) -> Iterator[np.ndarray]:
    """Consecutive blocks of at most `size` values (16 MB of float32)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]


def check_scale(spec: Dataset, scale: Scale) -> None:
    mismatch = scale.mismatch(spec.values)
    if mismatch is not None:
        other = "log" if spec.values == "counts" else "counts"
        raise UserError(
            f"dataset {spec.name}: {spec.path} is declared values={spec.values!r} but {mismatch}; "
            f"set values={other!r} if that is what it holds"
        )


def _without_empty(spec: Dataset, adata: ad.AnnData) -> ad.AnnData:
    # sums, not counts of nonzeros: the values are checked non-negative, and a sum makes no
    # matrix-sized temporary (`X != 0` does: half again the matrix's memory at load)
    cells = np.asarray(adata.X.sum(axis=1)).ravel() > 0
    genes = np.asarray(adata.X.sum(axis=0)).ravel() > 0
    if not check_empty(spec, cells, genes):
        return adata
    return adata[cells][:, genes].copy()


def check_empty(spec: Dataset, cells: np.ndarray, genes: np.ndarray) -> bool:
    """Whether some cells or genes (`cells`, `genes`: which have a count) are to be removed,
    said with a warning; no count at all is an error."""
    if cells.all() and genes.all():
        return False
    if not cells.any():
        raise UserError(
            f"dataset {spec.name}: every value of {spec.path} is 0 ({len(cells)} cells × "
            f"{len(genes)} genes): it holds no expression; choose the matrix that does "
            "(layer or use_raw)"
        )
    log.warning(
        "dataset %s: removed %d all-zero cells and %d all-zero genes",
        spec.name,
        (~cells).sum(),
        (~genes).sum(),
    )
    return True


def log_expression(adata: ad.AnnData, values: str) -> np.ndarray:
    """log(x + 1) of all genes as a dense float32 array (values that are already log stay as-is)."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    return np.log1p(x, out=x) if values == "counts" else x
