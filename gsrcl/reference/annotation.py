"""Label query cells with an exported reference model.

Query genes are matched to the reference's by name (a reference gene the query lacks is read as 0,
extra query genes are dropped); cells go through in chunks, so memory stays bounded whatever the
query's size. Each cell type's calibrated classifier gives the probability that a cell is of that
type (one type against the rest), reported as its share of their sum (`gsrcl.reference.rule.
shares`; a multi-class baseline's already sum to 1). The prediction is the most probable type, or
`Unassigned` by the model's rule (`gsrcl.reference.rule`, chosen at export): that probability is
below its threshold, or the cell lies outside the reference neighbourhood of that type
(`gsrcl.reference.neighbourhood`: a type the reference never saw can still score high for its
nearest known type).
"""

from __future__ import annotations

import dataclasses
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

from gsrcl.config.settings import Dataset
from gsrcl.data import dataset as data
from gsrcl.data.readers import BUNDLED, read_matrix, select_matrix
from gsrcl.errors import UserError
from gsrcl.files import atomic_write, write_csv
from gsrcl.reference import model as reference
from gsrcl.reference.fast_kernel import with_matrix_kernels
from gsrcl.reference.rule import UnassignedRule, shares

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


@dataclass
class Annotation:
    """Query cells labelled by a reference model: `table` has one row per cell (prediction, its
    probability, `outside_reference`, `distance_ratio`, the most probable type and why a cell is
    Unassigned, `p_<type>` for every type), `embedding` the encoder's
    representation (of the encoder most types share)."""

    query: ad.AnnData
    table: pd.DataFrame
    embedding: np.ndarray
    model: reference.ReferenceModel
    threshold: float  # the model's, unless the caller gave one
    umap: np.ndarray | None = None  # 2-D coordinates, once `umap_coordinates` has run

    def umap_coordinates(self) -> np.ndarray:
        if self.umap is None:
            from gsrcl.report.figures import umap_coordinates  # umap-learn only when asked for

            self.umap = umap_coordinates(self.embedding)
        return self.umap

    def to_adata(self, key_added: str = "gsrcl", umap: bool = False) -> ad.AnnData:
        """A copy of the query with obs `<key>_prediction`, `<key>_probability`,
        `<key>_outside_reference`, `<key>_distance_ratio`, `<key>_most_probable` (the answer
        without the Unassigned rule), `<key>_unassigned_because`, `<key>_p_<type>`, the
        embedding in obsm `X_<key>` and (with `umap`, or when already computed) its UMAP in obsm
        `X_<key>_umap`."""
        labelled = self.query.copy()
        table = self.table
        labelled.obs[f"{key_added}_prediction"] = pd.Categorical(table["predicted"].to_numpy())
        labelled.obs[f"{key_added}_probability"] = table["probability"].to_numpy()
        labelled.obs[f"{key_added}_outside_reference"] = table["outside_reference"].to_numpy()
        labelled.obs[f"{key_added}_distance_ratio"] = table["distance_ratio"].to_numpy()
        labelled.obs[f"{key_added}_most_probable"] = pd.Categorical(table["most_probable"])
        labelled.obs[f"{key_added}_unassigned_because"] = table["unassigned_because"].to_numpy()
        for column in [c for c in table if c.startswith("p_")]:
            labelled.obs[f"{key_added}_{column}"] = table[column].to_numpy()
        labelled.obsm[f"X_{key_added}"] = self.embedding
        if umap or self.umap is not None:
            labelled.obsm[f"X_{key_added}_umap"] = self.umap_coordinates()
        labelled.uns[key_added] = {
            "model": str(self.model.folder),
            "dataset": self.model.manifest["dataset"],
            "method": self.model.manifest["method"],
            "threshold": self.threshold,
            "manifest": json.dumps(self.model.manifest["files"]),
        }
        return labelled

    def write(self, out: str | Path, umap: bool = True, say: Callable[[str], None] = print) -> Path:
        """predictions.csv, query.h5ad and (with `umap`) umap.png in the folder `out`."""
        out = output_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "predictions.csv", self.table)
        atomic_write(out / "query.h5ad", self.to_adata(umap=umap).write_h5ad)
        if umap:
            _write_umap(out / "umap.png", self)
        counts = self.table["predicted"].value_counts()
        say(
            f"labelled {len(self.table)} cells: " + ", ".join(f"{t} {n}" for t, n in counts.items())
        )
        say(f"results in {out}")
        return out


def output_folder(out: str | Path) -> Path:
    """Where an annotation is written: a folder, made if missing; never an existing file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(
            f"--out {out} is a file; give a folder to write the labels into (made if missing)"
        )
    return out


def annotate(
    adata: ad.AnnData,
    model: reference.ReferenceModel,
    threshold: float | None = None,
    chunk_size: int = 2048,
    use_raw: bool = False,
    layer: str | None = None,
    say: Callable[[str], None] = print,
) -> Annotation:
    """Label the cells of an in-memory AnnData (left unchanged) with a loaded reference model."""
    _check_options(threshold, chunk_size)
    spec = Dataset(name="query", path="the AnnData", use_raw=use_raw, layer=layer)
    query = _checked_query(select_matrix(spec, adata.copy()), model, "the query")
    return _label(query, model, threshold, chunk_size, say)


def annotate_file(
    model_dir: str | Path,
    query: Query,
    out: str | Path,
    threshold: float | None = None,
    chunk_size: int = 2048,
    umap: bool = True,
    say: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Label the query file's cells; write predictions.csv, query.h5ad and umap.png into `out`."""
    _check_options(threshold, chunk_size)  # before the model is read: a typo fails at once
    output_folder(out)
    annotation = _annotate_query(query, reference.load(model_dir), threshold, chunk_size, say)
    annotation.write(out, umap, say)
    return annotation.table


def _annotate_query(
    query: Query, model, threshold: float | None, chunk_size: int, say
) -> Annotation:
    _check_options(threshold, chunk_size)
    return _label(_read_query(query, model), model, threshold, chunk_size, say)


def annotate_adata_or_file(
    cells: ad.AnnData | str | Path,
    model: reference.ReferenceModel,
    threshold: float | None = None,
    chunk_size: int = 2048,
    use_raw: bool = False,
    layer: str | None = None,
    transpose: bool = False,
    say: Callable[[str], None] = print,
) -> Annotation:
    """`annotate` for an AnnData, or for a file read as the runner reads it."""
    if isinstance(cells, ad.AnnData):
        return annotate(cells, model, threshold, chunk_size, use_raw, layer, say)
    if not isinstance(cells, str | Path):
        raise TypeError(
            "gsrcl.annotate labels an AnnData or the path of a file the runner reads "
            f"(.h5ad, .zarr, .loom, 10x, CSV), not a {type(cells).__name__}; wrap a matrix "
            "as anndata.AnnData(X, var=pandas.DataFrame(index=gene_names))"
        )
    query = Query(str(cells), use_raw, layer, transpose)
    return _annotate_query(query, model, threshold, chunk_size, say)


def embed_cells(model: reference.ReferenceModel, adata: ad.AnnData, chunk_size: int) -> np.ndarray:
    """The representation of `adata`'s cells (left unchanged), in chunks: the main encoder's, or
    for an expression model the reference's principal components."""
    query = _checked_query(adata.copy(), model, "the cells")
    first = next(t for t in model.types if t.encoder_file == model.main_encoder)
    parts = []
    for start in range(0, query.n_obs, chunk_size):
        part = query[start : start + chunk_size]
        if model.kind == "expression":
            parts.append(model.neighbourhoods.coordinates(part))
        else:
            x, _ = first.input.prepare(part)
            with torch.no_grad():
                parts.append(first.encoder(torch.from_numpy(x)).numpy())
    return np.concatenate(parts)


def _check_options(threshold: float | None, chunk_size: int) -> None:
    if threshold is not None and not 0 <= threshold <= 1:
        raise UserError(f"--threshold must be a probability between 0 and 1, got {threshold}")
    if chunk_size < 1:
        raise UserError("--chunk-size must be at least 1")


def _label(adata, model, threshold: float | None, chunk_size: int, say) -> Annotation:
    types = model.cell_types
    unvalidated = types.loc[~types["validated"].astype(bool), "name"].tolist()
    say(f"model: {model.manifest['method']}, {len(types)} cell types: {', '.join(types['name'])}")
    if unvalidated:
        say(f"  not validated (too few reference cells for the CV): {', '.join(unvalidated)}")
    rule = model.rule if threshold is None else dataclasses.replace(model.rule, threshold=threshold)
    say(
        f"  Unassigned: best probability below {rule.threshold:.3f}"
        + (" (--threshold)" if threshold is not None else "")
        + f", or farther than {rule.multiplier:.2f} × its type's radius from the reference cells"
    )
    calibrated = model.manifest["unassigned"].get("calibrated_on")
    if calibrated and threshold is None:
        say(f"  the rule was calibrated on {calibrated}")
    _check_genes(adata, model, say)
    probabilities, ratios, embedding = _probabilities(model, adata, chunk_size)
    table = _predictions(adata.obs_names, model, probabilities, ratios, rule)
    return Annotation(adata, table, embedding, model, rule.threshold)


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
    return _checked_query(read_matrix(spec), model, f"query {query.path}")


def _checked_query(adata: ad.AnnData, model: reference.ReferenceModel, what: str) -> ad.AnnData:
    """Unique ids and genes, float32 values checked finite and non-negative, in the scale the
    model was trained on."""
    if adata.n_obs == 0:
        raise UserError(f"{what} holds no cells: there is nothing to label")
    adata = data.checked_values(Dataset(name="query", path=what, values=model.values), adata)
    mismatch = data.scale_mismatch(model.values, adata.X)
    if mismatch is not None:
        wanted = "raw counts" if model.values == "counts" else "log-normalised values"
        raise UserError(
            f"{what} {mismatch}, but the reference model was trained on {wanted}; "
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
    """(cells × types probabilities, each cell's distance ratio to the neighbourhood of its most
    probable type, the embedding: by the encoder most types share, or the reference's principal
    components for an expression model)."""
    by_encoder: dict[str, list[int]] = {}
    for i, cell_type in enumerate(model.types):
        by_encoder.setdefault(cell_type.encoder_file, []).append(i)
    # an RBF SVC decides by matrix products here, not libsvm's pair-at-a-time kernel
    classifiers = [with_matrix_kernels(cell_type.classifier) for cell_type in model.types]
    probabilities = np.empty((adata.n_obs, len(model.types)), dtype=np.float32)
    ratios = np.empty(adata.n_obs)
    parts = []
    starts = range(0, adata.n_obs, chunk_size)
    for start in tqdm(starts, desc="labelling", unit="chunk", disable=None, leave=False):
        part = adata[start : start + chunk_size]
        rows = slice(start, start + part.n_obs)
        logged: dict[tuple, np.ndarray] = {}  # one normalise-and-log per preprocessing, not encoder
        for encoder_file, members in by_encoder.items():
            first = model.types[members[0]]
            reads = first.input
            if reads.key not in logged:
                logged[reads.key] = reads.logged(part)
            x, _ = reads.prepare(part, logged[reads.key])
            with torch.no_grad():
                z = first.encoder(torch.from_numpy(x)).numpy()
            predicted: dict[int, np.ndarray] = {}  # a multi-class model predicts once for all
            for i in members:
                classifier = classifiers[i]
                if id(classifier) not in predicted:
                    predicted[id(classifier)] = classifier.predict_proba(z)
                probabilities[rows, i] = predicted[id(classifier)][:, model.types[i].column]
            if encoder_file == model.main_encoder and model.kind == "encoder":
                parts.append(z)
        coordinates = model.neighbourhoods.coordinates(part)
        ratios[rows] = model.neighbourhoods.ratios(coordinates, probabilities[rows].argmax(axis=1))
        if model.kind == "expression":
            parts.append(coordinates)
    return shares(probabilities), ratios, np.concatenate(parts).astype(np.float32)


def _predictions(cells, model, probabilities, ratios, rule: UnassignedRule) -> pd.DataFrame:
    names = np.array([t.name for t in model.types], dtype=object)
    best = probabilities.argmax(axis=1)
    top = probabilities[np.arange(len(best)), best]
    table = pd.DataFrame({"cell": np.asarray(cells)})
    table["predicted"] = np.where(rule.unassigned(top, ratios), UNASSIGNED, names[best])
    table["probability"] = top
    table["outside_reference"] = ratios > rule.multiplier
    table["distance_ratio"] = ratios
    table["most_probable"] = names[best]  # the answer without the Unassigned rule
    table["unassigned_because"] = unassigned_reasons(top < rule.threshold, ratios > rule.multiplier)
    for i, name in enumerate(names):
        table[f"p_{name}"] = probabilities[:, i]
    return table


def unassigned_reasons(low: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """Why each cell is Unassigned ("" when it is not): its best probability is below the
    threshold, it lies outside its type's reference neighbourhood, or both."""
    reasons = np.full(len(low), "", dtype=object)
    reasons[low] = "low probability"
    reasons[outside] = "outside the reference"
    reasons[low & outside] = "low probability; outside the reference"
    return reasons


def _write_umap(path: Path, annotation: Annotation) -> None:
    from gsrcl.report import figures  # matplotlib only when a figure is asked for

    fig = figures.query_umap(
        annotation.umap_coordinates(),
        annotation.table["predicted"].to_numpy(),
        [t.name for t in annotation.model.types],
        UNASSIGNED,
    )
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
