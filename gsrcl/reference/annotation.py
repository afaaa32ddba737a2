"""Label query cells with an exported reference model.

Query genes are matched to the reference's by name (a reference gene the query lacks is read as 0,
extra query genes are dropped); cells go through in chunks. An `.h5ad` or `.zarr` query file is
read a chunk at a time too (`gsrcl.data.readers.Rows`; other formats, and a CSC-stored matrix, are
read whole) and each chunk is checked as a whole query is. A query file of more than `LARGE_QUERY`
cells gets compact results, so memory does not grow with its embedding: the embedding goes to disk
chunk by chunk, the labelled file holds the labels and embedding without the expression
(`labels.h5ad`, not a copy of the query), and the UMAP shows a random `UMAP_CELLS` of the cells.
Each cell type's calibrated classifier gives the probability that a cell is of that
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
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from gsrcl.config.settings import Dataset
from gsrcl.data import dataset as data
from gsrcl.data.readers import BUNDLED, read_matrix, read_rows, select_matrix
from gsrcl.data.splits import random_rows
from gsrcl.errors import UserError
from gsrcl.files import atomic_write, write_csv
from gsrcl.reference import model as reference
from gsrcl.reference.fast_kernel import with_matrix_kernels
from gsrcl.reference.rule import UnassignedRule, shares

log = logging.getLogger(__name__)

UNASSIGNED = "Unassigned"
WARN_MISSING, REFUSE_MISSING = 0.5, 0.9  # shares of the reference's genes absent from the query
# A query file of more cells gets compact results: the copy of the query (read whole) and a UMAP
# of every cell peak at 2.7 GB for 100 000 Baron Mouse cells (docs/annotate-scale.md) and grow
# with the cells, and a copy of a million cells would double the user's largest file on disk
LARGE_QUERY = 100_000
UMAP_CELLS = 50_000  # the random sample a large query's UMAP shows


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
    representation (of the encoder most types share). For a query file read in chunks, `query`
    holds its obs and var only and `source` names the file; past `LARGE_QUERY` cells `embedding`
    is an HDF5 dataset on disk (slice it to read rows), removed by `close()` or with the object."""

    query: ad.AnnData
    table: pd.DataFrame
    embedding: np.ndarray | h5py.Dataset
    model: reference.ReferenceModel
    threshold: float  # the model's, unless the caller gave one
    umap: np.ndarray | None = None  # 2-D coordinates, once `umap_coordinates` has run
    source: Query | None = None  # the file the cells were read from in chunks
    scratch: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def large(self) -> bool:
        """A query file of more than LARGE_QUERY cells: compact results (the module's doc)."""
        return self.source is not None and self.query.n_obs > LARGE_QUERY

    def umap_cells(self) -> np.ndarray:
        """The rows the UMAP shows: every cell, or for a large query a random UMAP_CELLS."""
        return random_rows(self.query.n_obs, UMAP_CELLS if self.large else self.query.n_obs)

    def umap_coordinates(self) -> np.ndarray:
        """UMAP of the embedding of `umap_cells()`, one row each."""
        if self.umap is None:
            from gsrcl.report.figures import umap_coordinates  # umap-learn only when asked for

            cells = self.umap_cells()
            x = _rows_of(self.embedding, cells) if self.large else self.embedding
            self.umap = umap_coordinates(x)
        return self.umap

    def close(self) -> None:
        """Remove a large query's embedding from disk (done anyway when the object goes)."""
        if self.scratch is not None:
            self.embedding.file.close()
            self.scratch.cleanup()

    def to_adata(self, key_added: str = "gsrcl", umap: bool = False) -> ad.AnnData:
        """A copy of the query with obs `<key>_prediction`, `<key>_probability`,
        `<key>_outside_reference`, `<key>_distance_ratio`, `<key>_most_probable` (the answer
        without the Unassigned rule), `<key>_unassigned_because`, `<key>_p_<type>`, the
        embedding in obsm `X_<key>` and (with `umap`, or when already computed) its UMAP in obsm
        `X_<key>_umap`. A query file read in chunks is read again, whole; past LARGE_QUERY cells
        the result holds the query's obs and these labels but no expression (no X, no genes),
        its embedding stays on disk (written chunk by chunk with the AnnData) and the UMAP rows
        of cells outside the sample are NaN."""
        labelled = self._copied_query()
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
            xy = np.full((self.query.n_obs, 2), np.nan, dtype=np.float32)
            xy[self.umap_cells()] = self.umap_coordinates()
            labelled.obsm[f"X_{key_added}_umap"] = xy
        labelled.uns[key_added] = {
            "model": str(self.model.folder),
            "dataset": self.model.manifest["dataset"],
            "method": self.model.manifest["method"],
            "threshold": self.threshold,
            "manifest": json.dumps(self.model.manifest["files"]),
        }
        return labelled

    def _copied_query(self) -> ad.AnnData:
        if self.source is None:
            return self.query.copy()
        if self.large:
            return ad.AnnData(obs=self.query.obs.copy())
        return _read_query(self.source, self.model)  # small: the copy with X, as before chunks

    @property
    def labelled_file(self) -> str:
        """The labelled AnnData's file name: a copy of the query, or its labels alone."""
        return "labels.h5ad" if self.large else "query.h5ad"

    def write(self, out: str | Path, umap: bool = True, say: Callable[[str], None] = print) -> Path:
        """predictions.csv, query.h5ad (labels.h5ad past LARGE_QUERY cells of a file) and (with
        `umap`) umap.png in the folder `out`."""
        out = output_folder(out)
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / "predictions.csv", self.table)
        atomic_write(out / self.labelled_file, self.to_adata(umap=umap).write_h5ad)
        if umap:
            _write_umap(out / "umap.png", self)
        counts = self.table["predicted"].value_counts()
        say(
            f"labelled {len(self.table)} cells: " + ", ".join(f"{t} {n}" for t, n in counts.items())
        )
        if self.large:
            say(
                f"  {self.labelled_file}: the labels (obs) and embedding (obsm) without the "
                f"expression: the query has more than {LARGE_QUERY} cells, so it is not copied; "
                "join it to the query by cell id"
                + (f"; umap.png shows a random {UMAP_CELLS} cells" if umap else "")
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
    return _label(query, None, model, threshold, chunk_size, say)


def annotate_file(
    model_dir: str | Path,
    query: Query,
    out: str | Path,
    threshold: float | None = None,
    chunk_size: int = 2048,
    umap: bool = True,
    say: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Label the query file's cells; write predictions.csv, query.h5ad (labels.h5ad for a large
    query) and umap.png into `out` (a large query's embedding waits there until written)."""
    _check_options(threshold, chunk_size)  # before the model is read: a typo fails at once
    out = output_folder(out)
    model = reference.load(model_dir)
    annotation = _annotate_query(query, model, threshold, chunk_size, say, scratch=out)
    try:
        annotation.write(out, umap, say)
    finally:
        annotation.close()
    return annotation.table


def _annotate_query(
    query: Query, model, threshold: float | None, chunk_size: int, say, scratch: Path | None = None
) -> Annotation:
    """Label a file: read a chunk at a time where its format allows (`read_rows`), else whole.
    A large query's embedding is written into a temporary folder in `scratch` (None: the
    system's temporary folder)."""
    _check_options(threshold, chunk_size)
    spec = _query_spec(query, model)
    rows = read_rows(spec)
    if rows is None:
        return _label(_read_query(query, model), None, model, threshold, chunk_size, say)
    what = f"query {query.path}"
    with rows:
        cells = _checked_cells(rows.cells, model, what)
        chunk = lambda start, stop: _checked_query(rows.rows(start, stop), model, what)  # noqa: E731
        embedding = _Embedding(cells.n_obs, cells.n_obs > LARGE_QUERY, scratch)
        annotation = _label(cells, chunk, model, threshold, chunk_size, say, embedding)
    return dataclasses.replace(annotation, source=query, scratch=embedding.scratch)


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


def _label(
    adata, chunk, model, threshold: float | None, chunk_size: int, say, embedding=None
) -> Annotation:
    """Label the cells of `adata`, read `chunk(start, stop)` at a time (None: sliced from
    `adata`, held whole), the embedding kept by `embedding` (None: in memory)."""
    chunk = chunk or (lambda start, stop: adata[start:stop])
    embedding = embedding or _Embedding(adata.n_obs)
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
    probabilities, ratios = _probabilities(model, adata.n_obs, chunk, chunk_size, embedding)
    table = _predictions(adata.obs_names, model, probabilities, ratios, rule)
    return Annotation(adata, table, embedding.result(), model, rule.threshold)


def _query_spec(query: Query, model: reference.ReferenceModel) -> Dataset:
    if query.path not in BUNDLED and not Path(query.path).exists():
        raise UserError(f"query {query.path} not found; check --query")
    return Dataset(
        name="query",
        path=query.path,
        values=model.values,
        use_raw=query.use_raw,
        layer=query.layer,
        transpose=query.transpose,
    )


def _read_query(query: Query, model: reference.ReferenceModel) -> ad.AnnData:
    spec = _query_spec(query, model)
    return _checked_query(read_matrix(spec), model, f"query {query.path}")


def _checked_cells(adata: ad.AnnData, model: reference.ReferenceModel, what: str) -> ad.AnnData:
    """Some cells, with unique ids and genes (the checks of the whole query's names)."""
    if adata.n_obs == 0:
        raise UserError(f"{what} holds no cells: there is nothing to label")
    return data.unique_names(Dataset(name="query", path=what, values=model.values), adata)


def _checked_query(adata: ad.AnnData, model: reference.ReferenceModel, what: str) -> ad.AnnData:
    """Unique ids and genes, float32 values checked finite and non-negative, in the scale the
    model was trained on: the whole query, or each chunk of one read in chunks (the first
    chunk that breaks a check stops the labelling with the whole query's message)."""
    adata = _checked_cells(adata, model, what)
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


def _probabilities(model: reference.ReferenceModel, n_obs: int, chunk, chunk_size: int, embedding):
    """(cells × types probabilities, each cell's distance ratio to the neighbourhood of its most
    probable type), the cells read `chunk(start, stop)` at a time; the embedding (by the encoder
    most types share, or the reference's principal components for an expression model) goes to
    `embedding`, chunk by chunk."""
    by_encoder: dict[str, list[int]] = {}
    for i, cell_type in enumerate(model.types):
        by_encoder.setdefault(cell_type.encoder_file, []).append(i)
    # an RBF SVC decides by matrix products here, not libsvm's pair-at-a-time kernel
    classifiers = [with_matrix_kernels(cell_type.classifier) for cell_type in model.types]
    probabilities = np.empty((n_obs, len(model.types)), dtype=np.float32)
    ratios = np.empty(n_obs)
    starts = range(0, n_obs, chunk_size)
    for start in tqdm(starts, desc="labelling", unit="chunk", disable=None, leave=False):
        part = chunk(start, min(start + chunk_size, n_obs))
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
                embedding.add(z)
        coordinates = model.neighbourhoods.coordinates(part)
        ratios[rows] = model.neighbourhoods.ratios(coordinates, probabilities[rows].argmax(axis=1))
        if model.kind == "expression":
            embedding.add(coordinates)
    return shares(probabilities), ratios


class _Embedding:
    """The query's embedding as its chunks come: kept in memory, or `on_disk`, written chunk by
    chunk into an HDF5 file in a temporary folder (`scratch`) in `folder` (None: the system's),
    so memory does not grow with the query."""

    def __init__(self, n_obs: int, on_disk: bool = False, folder: Path | None = None) -> None:
        self.n_obs, self.parts, self.done = n_obs, [], 0
        self.dataset: h5py.Dataset | None = None
        self.scratch = None
        if on_disk:
            if folder is not None:
                Path(folder).mkdir(parents=True, exist_ok=True)
            self.scratch = tempfile.TemporaryDirectory(dir=folder, prefix=".gsrcl-")

    def add(self, z: np.ndarray) -> None:
        if self.scratch is None:
            self.parts.append(z)
            return
        if self.dataset is None:  # the width is known from the first chunk
            file = h5py.File(Path(self.scratch.name) / "embedding.h5", "w")
            rows = max(1, min(len(z), (1 << 20) // (4 * z.shape[1])))  # HDF5 chunks ≤ 1 MiB
            self.dataset = file.create_dataset(
                "embedding", (self.n_obs, z.shape[1]), np.float32, chunks=(rows, z.shape[1])
            )
        self.dataset[self.done : self.done + len(z)] = z
        self.done += len(z)

    def result(self) -> np.ndarray | h5py.Dataset:
        if self.scratch is None:
            return np.concatenate(self.parts).astype(np.float32)
        return self.dataset


def _rows_of(dataset: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """The sorted `rows` of an on-disk array, read a block of about 64 MiB at a time."""
    block = max(1, (64 << 20) // (4 * dataset.shape[1]))
    parts = []
    for start in range(0, dataset.shape[0], block):
        inside = rows[(rows >= start) & (rows < start + block)]
        if len(inside):
            parts.append(dataset[start : start + block][inside - start])
    return np.concatenate(parts)


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

    predicted = annotation.table["predicted"].to_numpy()
    fig = figures.query_umap(
        annotation.umap_coordinates(),
        predicted[annotation.umap_cells()],
        [t.name for t in annotation.model.types],
        UNASSIGNED,
        of=len(predicted),
    )
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
