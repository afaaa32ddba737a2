"""File formats → AnnData (cells × genes). Labels and value checks are `gsrcl.data.dataset`'s job.

Formats: `.h5ad` (X, a layer, or .raw), `.zarr` and `.loom` (anndata's readers); 10x `.h5` and
matrix-market folders (scanpy's readers); the scziDesk-style `.h5` of the GsRCL paper's data
(`exprs` dense or CSR group, `obs`, `obs_names`, `var_names`); CSV/TSV/TXT, optionally gzipped,
cells × genes or genes × cells (`transpose`). An `.h5ad` or `.zarr` file can also be read a
block of cells at a time (`read_rows`), for a query too large to hold.
"""

from __future__ import annotations

import csv
import gzip
import logging
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from gsrcl.config.settings import Dataset
from gsrcl.errors import UserError

BUNDLED = {"scanpy:pbmc68k_reduced": sc.datasets.pbmc68k_reduced}
TABLE_SUFFIXES = (".csv", ".tsv", ".txt")
SEPARATORS = {"\t": "tab", ",": "comma", ";": "semicolon"}

log = logging.getLogger(__name__)


def read_matrix(spec: Dataset) -> ad.AnnData:
    if spec.path in BUNDLED:
        return select_matrix(spec, BUNDLED[spec.path]())
    path = Path(spec.path)
    if not path.exists():
        raise UserError(f"dataset {spec.name}: {path} not found; check `path` in the config")
    name = path.name.lower().removesuffix(".gz")
    try:
        if name.endswith(".zarr"):
            return select_matrix(spec, ad.read_zarr(path))
        if name.endswith(".loom"):
            return select_matrix(spec, _read_loom(path))
        if path.is_dir():
            return sc.read_10x_mtx(path)
        if name.endswith(".h5ad"):
            with warnings.catch_warnings():  # duplicated ids are made unique, with a warning, later
                warnings.filterwarnings("ignore", message=".*names are not unique")
                return select_matrix(spec, ad.read_h5ad(path))
        if name.endswith(".h5"):
            return _read_h5(path)
        if name.endswith(TABLE_SUFFIXES):
            return _read_table(spec, path)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"dataset {spec.name}: cannot read {path}: {error}") from None
    raise UserError(
        f"dataset {spec.name}: unknown format of {path}; use .h5ad, .zarr, .loom, .h5 (10x or "
        "scziDesk), a 10x matrix-market folder, or CSV/TSV"
    )


def select_matrix(spec: Dataset, adata: ad.AnnData) -> ad.AnnData:
    """The matrix the dataset names: X, a layer, or .raw (with the same cells and obs)."""
    if spec.use_raw:
        if adata.raw is None:
            raise _no_raw(spec)
        return adata.raw.to_adata()
    if spec.layer is not None:
        if spec.layer not in adata.layers:
            raise _no_layer(spec, list(adata.layers))
        adata.X = adata.layers[spec.layer]
    if adata.X is None:  # an .h5ad may keep its values in layers only
        raise _empty_x(spec, [name for name, layer in adata.layers.items() if layer is not None])
    return adata


def _no_raw(spec: Dataset) -> UserError:
    return UserError(f"dataset {spec.name}: {spec.path} has no .raw; set use_raw=False")


def _no_layer(spec: Dataset, layers: list[str]) -> UserError:
    return UserError(
        f"dataset {spec.name}: {spec.path} has no layer {spec.layer!r}; layers are {layers}"
    )


def _empty_x(spec: Dataset, held: list[str]) -> UserError:
    where = f"the layers {held}" if held else "no layer either"
    return UserError(
        f"dataset {spec.name}: {spec.path} has an empty X ({where}); choose the matrix with "
        "layer=NAME (annotate: --layer NAME) or use_raw=True"
    )


class Rows:
    """The cells of an `.h5ad` or `.zarr` file's matrix (X, a layer, or .raw), read a block of
    rows at a time with anndata's element readers: `cells` holds obs and var (read whole), the
    matrix is never read whole (a CSR one through `anndata.io.sparse_dataset`, a dense one by
    slicing). Use it as a context manager: the file stays open until the block ends."""

    def __init__(self, store, matrix, cells: ad.AnnData) -> None:
        self.store, self.matrix, self.cells = store, matrix, cells

    def rows(self, start: int, stop: int) -> ad.AnnData:
        """Cells `start` to `stop` (obs names only), as stored (values unchecked)."""
        return ad.AnnData(
            X=self.matrix[start:stop],
            obs=pd.DataFrame(index=self.cells.obs_names[start:stop]),
            var=pd.DataFrame(index=self.cells.var_names),
        )

    def __enter__(self) -> Rows:
        return self

    def __exit__(self, *_) -> None:
        if isinstance(self.store, h5py.File):
            self.store.close()


def read_rows(spec: Dataset) -> Rows | None:
    """The dataset's cells read a block at a time (`Rows`), or None where the file is read whole
    by `read_matrix`: formats other than `.h5ad` and `.zarr`, a CSC-stored matrix (its rows are
    scattered through the file), and files written before anndata 0.7 (no encoding metadata)."""
    path = Path(spec.path)
    name = path.name.lower()
    if spec.path in BUNDLED or not name.endswith((".h5ad", ".zarr")) or not path.exists():
        return None
    try:
        store = h5py.File(path, "r") if name.endswith(".h5ad") else _open_zarr(path)
        rows = _rows(spec, store)
    except (OSError, ValueError, KeyError) as error:
        raise UserError(f"dataset {spec.name}: cannot read {path}: {error}") from None
    if rows is None and isinstance(store, h5py.File):
        store.close()
    return rows


def _open_zarr(path: Path):
    import zarr  # anndata's dependency: only for a .zarr query

    return zarr.open_group(path, mode="r")


def _rows(spec: Dataset, store) -> Rows | None:
    from anndata.io import read_elem, sparse_dataset

    if "encoding-type" not in store.attrs:
        return None
    layers = list(store["layers"]) if "layers" in store else []
    if spec.use_raw:
        if "raw" not in store:
            raise _no_raw(spec)
        matrix, var = store["raw/X"], store["raw/var"]
    elif spec.layer is not None:
        if spec.layer not in layers:
            raise _no_layer(spec, layers)
        matrix, var = store[f"layers/{spec.layer}"], store["var"]
    elif "X" not in store:
        raise _empty_x(spec, layers)
    else:
        matrix, var = store["X"], store["var"]
    encoding = matrix.attrs.get("encoding-type")
    if encoding == "csc_matrix":
        log.warning(
            "dataset %s: %s stores its matrix by gene (CSC), so it is read whole; stored by cell "
            "(CSR: adata.X = adata.X.tocsr()) it is read a block of cells at a time",
            spec.name,
            spec.path,
        )
    if encoding not in ("csr_matrix", "array"):
        return None
    genes = pd.DataFrame(index=read_elem(var).index)  # var's other columns are not needed
    with warnings.catch_warnings():  # duplicated ids are made unique, with a warning, later
        warnings.filterwarnings("ignore", message=".*names are not unique")
        cells = ad.AnnData(obs=read_elem(store["obs"]), var=genes)
    return Rows(store, sparse_dataset(matrix) if encoding == "csr_matrix" else matrix, cells)


def _read_loom(path: Path) -> ad.AnnData:
    """A loom file through anndata's reader (which needs loompy); cell and gene names from the
    loom convention's CellID / Gene attributes, or the obs_names / var_names anndata writes."""
    try:
        import loompy  # noqa: F401  (anndata's read_loom imports it)
        from anndata.io import read_loom
    except ImportError:
        raise UserError(f"reading {path} needs loompy: pip install loompy") from None
    with h5py.File(path, "r") as f:
        cells, genes = set(f.get("col_attrs", {})), set(f.get("row_attrs", {}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return read_loom(
            path,
            sparse=True,
            obs_names="CellID" if "CellID" in cells else "obs_names",
            var_names="Gene" if "Gene" in genes else "var_names",
        )


def _read_h5(path: Path) -> ad.AnnData:
    with h5py.File(path, "r") as f:
        scziDesk = "exprs" in f
    return _read_sczidesk(path) if scziDesk else sc.read_10x_h5(path)


def _read_sczidesk(path: Path) -> ad.AnnData:
    with h5py.File(path, "r") as f:
        exprs = f["exprs"]
        if isinstance(exprs, h5py.Group):
            shape = tuple(exprs["shape"][...])
            x = sp.csr_matrix(
                (exprs["data"][...], exprs["indices"][...], exprs["indptr"][...]), shape
            )
        else:
            x = exprs[...]
        obs = pd.DataFrame(
            {key: _decoded(f["obs"][key][...]) for key in f.get("obs", {})},
            index=_decoded(f["obs_names"][...]),
        )
        var = pd.DataFrame(index=_decoded(f["var_names"][...]))
    return ad.AnnData(X=x, obs=obs, var=var)


def _decoded(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "S" or values.dtype == object:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    return values


def _read_table(spec: Dataset, path: Path) -> ad.AnnData:
    header, sep = _header(spec, path)
    table = pd.read_csv(path, sep=sep, index_col=0)
    if len(header) == table.shape[1] + 1:  # pandas renames repeated names (X.1): keep them,
        table.columns = header[1:]  # so the repeat is reported and named as for .h5ad
    if spec.transpose:
        table = table.T
    non_numeric = [
        str(c)
        for c, kind in zip(table.columns, table.dtypes, strict=True)
        if not pd.api.types.is_numeric_dtype(kind)
    ]
    if non_numeric:
        layout = (
            "genes as rows, cells as columns"
            if spec.transpose
            else "cells as rows, genes as columns"
        )
        raise UserError(
            f"dataset {spec.name}: {path} has non-numeric values in columns {non_numeric[:3]}; "
            f"expected {layout}, ids in the first column and names in the header"
        )
    return ad.AnnData(
        X=table.to_numpy(dtype=np.float32),
        obs=pd.DataFrame(index=table.index.astype(str)),
        var=pd.DataFrame(index=table.columns.astype(str)),
    )


def _header(spec: Dataset, path: Path) -> tuple[list[str], str]:
    """The header's names and the separator it uses: the one of tab, comma and semicolon that
    splits it most (a tab-separated file named .csv is common), said when it is not the one the
    file name suggests."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rt", errors="replace") as file:
        first = file.readline().rstrip("\r\n")
    sep = max(SEPARATORS, key=first.count)
    named = "," if ".csv" in path.name.lower() else "\t"
    if first.count(sep) == 0:
        sep = named
    elif sep != named:
        log.warning(
            "dataset %s: %s is %s-separated, not as its name says; read as %s-separated",
            spec.name,
            path,
            SEPARATORS[sep],
            SEPARATORS[sep],
        )
    return next(csv.reader([first], delimiter=sep), []), sep
