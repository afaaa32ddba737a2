"""Feature preparation fitted on training cells only, then applied unchanged to every other cell.

- `log1p`: log(x + 1) of all genes (the paper's input for Gaussian noise and its SVM baseline);
  stateless.
- `lognorm`: per-cell normalisation to the training cells' median total count, then log1p.
- masking (contrastive-sc): lognorm, the top-N highly variable genes of the training cells, scaled
  with the training cells' mean and std; `scaled` is the same with SCALED_GENES genes.
Data that is already log-normalised (`values="log"`) skips the normalisation and the log.
"""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import numpy as np
import scanpy as sc

from gsrcl.data.dataset import log_expression

SCALED_GENES = 2000  # a baseline's "scaled" features: genes kept


@dataclass(frozen=True)
class Fitted:
    """What was learnt from the training cells; `transform` applies it to any cells."""

    values: str
    target_sum: float | None  # None = no per-cell normalisation
    genes: np.ndarray | None = None  # column indices of the selected genes; None = all
    mean: np.ndarray | None = None
    std: np.ndarray | None = None

    def transform(self, adata: ad.AnnData) -> np.ndarray:
        if self.target_sum is not None:
            adata = adata.copy()
            sc.pp.normalize_total(adata, target_sum=self.target_sum)
        x = log_expression(adata, self.values)
        if self.genes is not None:
            x = x[:, self.genes]
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x.astype(np.float32, copy=False)


def fit_log1p(values: str) -> Fitted:
    return Fitted(values=values, target_sum=None)


def fit_lognorm(train: ad.AnnData, values: str) -> Fitted:
    if values == "log":
        return Fitted(values=values, target_sum=None)
    totals = np.asarray(train.X.sum(axis=1)).ravel()
    return Fitted(values=values, target_sum=float(np.median(totals)))


def fit_masking(train: ad.AnnData, values: str, n_genes: int) -> Fitted:
    """contrastive-sc's preprocessing: lognorm, top-N highly variable genes, scale."""
    lognorm = fit_lognorm(train, values)
    logged = ad.AnnData(lognorm.transform(train), var=train.var[[]])
    n_top = min(n_genes, logged.n_vars)
    sc.pp.highly_variable_genes(logged, n_top_genes=n_top, flavor="seurat")
    genes = np.flatnonzero(logged.var["highly_variable"].to_numpy())
    selected = logged[:, genes].copy()
    sc.pp.scale(selected)  # records the training mean and std in var
    std = selected.var["std"].to_numpy(dtype=np.float32)
    return Fitted(
        values=values,
        target_sum=lognorm.target_sum,
        genes=genes,
        mean=selected.var["mean"].to_numpy(dtype=np.float32),
        std=np.where(std > 0, std, 1).astype(np.float32),
    )


def fit_features(kind: str, train: ad.AnnData, values: str) -> Fitted:
    """A baseline's features (`Classifier.features`), fitted on `train`."""
    if kind == "scaled":
        return fit_masking(train, values, SCALED_GENES)
    if kind == "lognorm":
        return fit_lognorm(train, values)
    return fit_log1p(values)
