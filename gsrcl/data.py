"""Readers: a dataset spec → an AnnData with float32 `X`, unique cell ids and `obs['label']`."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp

from gsrcl.errors import UserError
from gsrcl.settings import Dataset

log = logging.getLogger(__name__)

LABEL = "label"
BUNDLED = {"scanpy:pbmc68k_reduced": sc.datasets.pbmc68k_reduced}


def load_dataset(spec: Dataset) -> ad.AnnData:
    """Read the matrix and labels of `spec`, check them, and return cells that have a label."""
    adata = _read_matrix(spec)
    if spec.use_raw:
        if adata.raw is None:
            raise UserError(f"dataset {spec.name}: {spec.path} has no .raw; set use_raw=False")
        adata = adata.raw.to_adata()
    adata.obs[LABEL] = _read_labels(spec, adata)
    if not adata.obs_names.is_unique:
        log.warning("dataset %s: cell ids are not unique; made unique with suffixes", spec.name)
        adata.obs_names_make_unique()
    unlabelled = adata.obs[LABEL].isna().to_numpy()
    if unlabelled.any():
        log.warning("dataset %s: dropped %d cells without a label", spec.name, unlabelled.sum())
        adata = adata[~unlabelled].copy()
    adata.X = _as_float32(adata.X)
    _check_values(spec, adata.X)
    return adata


def _read_matrix(spec: Dataset) -> ad.AnnData:
    if spec.path in BUNDLED:
        return BUNDLED[spec.path]()
    path = Path(spec.path)
    if not path.exists():
        raise UserError(f"dataset {spec.name}: file {path} not found; check `path` in the config")
    name = path.name.lower()
    if name.endswith(".h5ad"):
        with warnings.catch_warnings():  # duplicated ids are handled (and logged) by the caller
            warnings.filterwarnings("ignore", message=".*names are not unique")
            return ad.read_h5ad(path)
    if name.endswith((".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")):
        return _read_table(spec, path)
    raise UserError(
        f"dataset {spec.name}: cannot read {path}; use .h5ad or a CSV/TSV (cells × genes)"
    )


def _read_table(spec: Dataset, path: Path) -> ad.AnnData:
    sep = "\t" if ".tsv" in path.name.lower() else ","
    table = pd.read_csv(path, sep=sep, index_col=0)
    non_numeric = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
    if non_numeric:
        raise UserError(
            f"dataset {spec.name}: {path} has non-numeric values in columns {non_numeric[:5]}; "
            "expected cells as rows, genes as columns and the cell id in the first column"
        )
    return ad.AnnData(
        X=table.to_numpy(dtype=np.float32),
        obs=pd.DataFrame(index=table.index.astype(str)),
        var=pd.DataFrame(index=table.columns.astype(str)),
    )


def _read_labels(spec: Dataset, adata: ad.AnnData) -> pd.Series:
    if spec.labels_file is None:
        if spec.labels not in adata.obs:
            raise UserError(
                f"dataset {spec.name}: {spec.path} has no obs column {spec.labels!r}; "
                f"columns are {list(adata.obs.columns)}; set `labels` or `labels_file`"
            )
        labels = adata.obs[spec.labels]
    else:
        labels = _labels_from_file(spec, adata.n_obs)
    labels = pd.Series(labels.to_numpy(dtype=object), index=adata.obs_names)
    return labels.where(labels.notna(), None).map(lambda v: None if v is None else str(v))


def _labels_from_file(spec: Dataset, n_cells: int) -> pd.Series:
    path = Path(spec.labels_file)
    if not path.exists():
        raise UserError(f"dataset {spec.name}: labels file {path} not found")
    table = pd.read_csv(path)
    if table.shape[1] != 1:
        raise UserError(
            f"dataset {spec.name}: labels file {path} has {table.shape[1]} columns; expected one"
        )
    if len(table) != n_cells:
        raise UserError(
            f"dataset {spec.name}: labels file {path} has {len(table)} labels for {n_cells} cells; "
            "it needs one label per cell, in the matrix's cell order"
        )
    return table.iloc[:, 0]


def _as_float32(x) -> np.ndarray | sp.csr_matrix:
    if sp.issparse(x):
        return sp.csr_matrix(x, dtype=np.float32)
    return np.asarray(x, dtype=np.float32)


def _check_values(spec: Dataset, x) -> None:
    values = x.data if sp.issparse(x) else x
    if not np.isfinite(values).all():
        raise UserError(f"dataset {spec.name}: {spec.path} holds NaN or infinite values")
    if (values < 0).any():
        raise UserError(
            f"dataset {spec.name}: {spec.path} holds negative values; give counts or "
            "log-normalised values (not scaled data; for pbmc68k_reduced use use_raw=True)"
        )


def log_expression(adata: ad.AnnData, values: str) -> np.ndarray:
    """log(x + 1) of all genes as a dense float32 array (values that are already log stay as-is)."""
    x = adata.X.toarray() if sp.issparse(adata.X) else np.array(adata.X)
    return np.log1p(x, out=x) if values == "counts" else x
