"""Label query cells with an exported reference model.

Query genes are matched to the reference's by name (a reference gene the query lacks is read as 0,
extra query genes are dropped); cells go through in chunks, so memory stays bounded whatever the
query's size. Each cell type's calibrated classifier gives the probability that a cell is of that
type (one type against the rest, so the probabilities need not sum to 1); the prediction is the
most probable type, or `Unassigned` when that probability is below the threshold or the cell lies
outside the reference neighbourhood of that type (`gsrcl.neighbourhood`: a type the reference
never saw can still score high for its nearest known type).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from gsrcl import data, reference
from gsrcl.checkpoints import encoder_input, logged_expression, preprocessing_key
from gsrcl.errors import UserError
from gsrcl.files import atomic_write, write_csv
from gsrcl.readers import BUNDLED
from gsrcl.settings import Dataset

log = logging.getLogger(__name__)

UNASSIGNED = "Unassigned"
WARN_MISSING, REFUSE_MISSING = 0.5, 0.9  # shares of the reference's genes absent from the query


@dataclass(frozen=True)
class Query:
    """The file to label and how to read it (the runner's readers and options)."""

    path: str
    use_raw: bool = False
    layer: str | None = None
    transpose: bool = False


def annotate(
    model_dir: str | Path,
    query: Query,
    out: str | Path,
    threshold: float = 0.5,
    chunk_size: int = 2048,
    umap: bool = True,
    say: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Label the query's cells; write predictions.csv, query.h5ad and umap.png into `out`."""
    if not 0 <= threshold <= 1:
        raise UserError(f"--threshold must be a probability between 0 and 1, got {threshold}")
    model = reference.load(model_dir)
    adata = _read_query(query, model)
    _check_genes(adata, model, say)
    probabilities, outside, embedding = _probabilities(model, adata, chunk_size)
    table = _predictions(adata.obs_names, model, probabilities, outside, threshold)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "predictions.csv", table)
    _write_h5ad(out / "query.h5ad", adata, table, embedding, model, threshold)
    if umap:
        _write_umap(out / "umap.png", embedding, table["predicted"].to_numpy(), model)
    counts = table["predicted"].value_counts()
    say(f"labelled {len(table)} cells: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    say(f"results in {out}")
    return table


def _read_query(query: Query, model: reference.ReferenceModel) -> ad.AnnData:
    if query.path not in BUNDLED and not Path(query.path).exists():
        raise UserError(f"query {query.path} not found; check --query")
    spec = Dataset(
        name="query",
        path=query.path,
        values=model.values,
        use_raw=query.use_raw,
        layer=query.layer,
        transpose=query.transpose,
    )
    adata = data.load_unlabelled(spec)
    mismatch = data.scale_mismatch(model.values, adata.X)
    if mismatch is not None:
        wanted = "raw counts" if model.values == "counts" else "log-normalised values"
        raise UserError(
            f"query {query.path} {mismatch}, but the reference model was trained on {wanted}; "
            f"give the query as {wanted} (choose the matrix with --layer or --use-raw)"
        )
    return adata


def _check_genes(adata: ad.AnnData, model: reference.ReferenceModel, say) -> None:
    genes = model.genes
    found = int(adata.var_names.isin(genes).sum())
    missing = 1 - found / len(genes)
    say(
        f"query: {adata.n_obs} cells × {adata.n_vars} genes; {found} of the reference's "
        f"{len(genes)} genes found ({missing:.0%} missing, read as 0); "
        f"{adata.n_vars - found} query genes not in the reference are ignored"
    )
    if missing >= REFUSE_MISSING:
        raise UserError(
            f"the query lacks {missing:.0%} of the reference's genes; check that both use the "
            f"same gene names (e.g. symbols vs Ensembl ids: query {list(adata.var_names[:3])}, "
            f"reference {genes[:3]})"
        )
    if missing > WARN_MISSING:
        say(f"warning: the query lacks {missing:.0%} of the reference's genes; labels may suffer")


def _probabilities(model: reference.ReferenceModel, adata: ad.AnnData, chunk_size: int):
    """(cells × types probabilities, whether each cell lies outside the neighbourhood of its most
    probable type, the embedding by the encoder most types share)."""
    by_encoder: dict[str, list[int]] = {}
    for i, cell_type in enumerate(model.types):
        by_encoder.setdefault(cell_type.encoder_file, []).append(i)
    shown = max(by_encoder, key=lambda f: len(by_encoder[f]))
    probabilities = np.empty((adata.n_obs, len(model.types)), dtype=np.float32)
    outside = np.empty(adata.n_obs, dtype=bool)
    embedding = None
    starts = range(0, adata.n_obs, chunk_size)
    for start in tqdm(starts, desc="labelling", unit="chunk", disable=None, leave=False):
        part = adata[start : start + chunk_size]
        logged: dict[tuple, np.ndarray] = {}  # one normalise-and-log per preprocessing, not encoder
        for encoder_file, members in by_encoder.items():
            first = model.types[members[0]]
            key = preprocessing_key(first.checkpoint)
            if key not in logged:
                logged[key] = logged_expression(first.checkpoint, part)
            x, _ = encoder_input(first.checkpoint, part, logged[key])
            with torch.no_grad():
                z = first.encoder(torch.from_numpy(x)).numpy()
            for i in members:
                classifier = model.types[i].classifier
                positive = list(classifier.classes_).index(True)
                probabilities[start : start + len(z), i] = classifier.predict_proba(z)[:, positive]
            if encoder_file == shown:
                if embedding is None:
                    embedding = np.empty((adata.n_obs, z.shape[1]), dtype=np.float32)
                embedding[start : start + len(z)] = z
        rows = slice(start, start + part.n_obs)
        outside[rows] = model.neighbourhoods.outside(part, probabilities[rows].argmax(axis=1))
    return probabilities, outside, embedding


def _predictions(cells, model, probabilities, outside, threshold: float) -> pd.DataFrame:
    names = np.array([t.name for t in model.types], dtype=object)
    best = probabilities.argmax(axis=1)
    top = probabilities[np.arange(len(best)), best]
    table = pd.DataFrame({"cell": np.asarray(cells)})
    table["predicted"] = np.where((top >= threshold) & ~outside, names[best], UNASSIGNED)
    table["probability"] = top
    table["outside_reference"] = outside
    for i, name in enumerate(names):
        table[f"p_{name}"] = probabilities[:, i]
    return table


def _write_h5ad(path: Path, adata, table: pd.DataFrame, embedding, model, threshold) -> None:
    adata.obs["gsrcl_prediction"] = pd.Categorical(table["predicted"].to_numpy())
    adata.obs["gsrcl_probability"] = table["probability"].to_numpy()
    adata.obs["gsrcl_outside_reference"] = table["outside_reference"].to_numpy()
    for column in [c for c in table if c.startswith("p_")]:
        adata.obs[f"gsrcl_{column}"] = table[column].to_numpy()
    adata.obsm["X_gsrcl"] = embedding
    adata.uns["gsrcl"] = {
        "model": str(model.folder),
        "dataset": model.manifest["dataset"],
        "method": model.manifest["method"],
        "threshold": threshold,
        "manifest": json.dumps(model.manifest["files"]),
    }
    atomic_write(path, adata.write_h5ad)


def _write_umap(path: Path, embedding: np.ndarray, predicted: np.ndarray, model) -> None:
    from gsrcl import figures  # matplotlib and UMAP only when a figure is asked for

    fig = figures.query_umap(embedding, predicted, [t.name for t in model.types], UNASSIGNED)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
