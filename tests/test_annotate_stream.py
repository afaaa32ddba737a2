"""A query file is labelled a chunk at a time: never read whole, the labels of the whole query,
the whole query's messages, and past LARGE_QUERY cells compact results."""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

import gsrcl
from gsrcl.config.settings import Compute, Contrastive, Method, Split
from gsrcl.data import readers
from gsrcl.errors import UserError
from gsrcl.reference import annotation
from gsrcl.reference.annotation import Query, annotate_file
from gsrcl.reference.export import export_model
from gsrcl.report.figures import query_umap
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import tiny_experiment

CHUNK = 256
COPIES = 4  # pbmc68k_reduced's 700 cells, 4 times: 2800 cells, 11 chunks


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A SimCLR model of three pbmc68k_reduced types (log values), 2 epochs: seconds to make."""
    folder = tmp_path_factory.mktemp("stream")
    simclr = Method(loss="simclr", augmentation="noise", encoder=(64, 32), head=(32, 16))
    evaluation = replace(tiny_experiment(folder).evaluation, baselines=(), inner_folds=2)
    experiment = tiny_experiment(
        folder,
        methods=(simclr,),
        contrastive=Contrastive(epochs=2, validate_every=2, lr=1e-3),
        split=Split(folds=2),
        evaluation=evaluation,
        compute=Compute(cpu_workers=1),  # one worker process to start, not one per core
    )
    assert run_experiment(experiment, log=lambda _: None) == 0
    return export_model(experiment, method="simclr-noise", log=lambda _: None)


def _query(copies: int = COPIES) -> ad.AnnData:
    """pbmc68k_reduced's log values, tiled, each copy's cells named apart."""
    cells = sc.datasets.pbmc68k_reduced().raw.to_adata()
    tiled = ad.concat([cells] * copies, index_unique="-")
    tiled.obs_names = [f"c{i}" for i in range(tiled.n_obs)]
    tiled.X = sp.csr_matrix(tiled.X, dtype=np.float32)
    return tiled


@pytest.fixture
def spied(monkeypatch):
    """The blocks of rows read from the file; reading a query whole fails the test."""
    blocks = []
    rows = readers.Rows.rows

    def spy(self, start, stop):
        blocks.append((type(self.matrix).__name__, stop - start))
        return rows(self, start, stop)

    def whole(*args, **kwargs):
        raise AssertionError("the query was read whole")

    monkeypatch.setattr(readers.Rows, "rows", spy)
    monkeypatch.setattr(readers, "read_matrix", whole)
    monkeypatch.setattr(annotation, "read_matrix", whole)
    monkeypatch.setattr(ad, "read_h5ad", whole)
    return blocks


def _annotated_file(model, tmp_path, say):
    """tmp_path/query.h5ad labelled into tmp_path/out in chunks of CHUNK cells, no figure."""
    query = Query(str(tmp_path / "query.h5ad"))
    return annotate_file(model, query, tmp_path / "out", chunk_size=CHUNK, umap=False, say=say)


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_a_large_query_file_is_read_a_chunk_at_a_time_with_the_whole_querys_labels(
    model, tmp_path, monkeypatch, spied, layout
):
    query = _query()
    if layout == "dense":
        query.X = query.X.toarray()
    query.write_h5ad(tmp_path / "query.h5ad")
    monkeypatch.setattr(annotation, "LARGE_QUERY", 1000)  # 2800 cells: compact results
    said = []
    table = _annotated_file(model, tmp_path, said.append)
    backed = {"csr": "_CSRDataset", "dense": "Dataset"}[layout]
    assert {kind for kind, _ in spied} == {backed}  # anndata's / h5py's on-disk matrix
    assert max(size for _, size in spied) == CHUNK and sum(s for _, s in spied) == query.n_obs
    monkeypatch.undo()  # read the results whole
    memory = gsrcl.annotate(query, model, chunk_size=CHUNK, say=lambda _: None)
    assert table.equals(memory.table)
    assert not (tmp_path / "out" / "query.h5ad").exists()
    labels = ad.read_h5ad(tmp_path / "out" / "labels.h5ad")
    assert labels.n_vars == 0 and list(labels.obs_names) == list(query.obs_names)
    assert (labels.obs["gsrcl_prediction"].astype(str) == table["predicted"].to_numpy()).all()
    assert np.array_equal(labels.obsm["X_gsrcl"], memory.embedding)
    assert any("labels.h5ad: the labels (obs) and embedding (obsm) without" in s for s in said)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no scratch


def test_the_notebook_api_streams_a_file_and_keeps_a_large_embedding_on_disk(
    model, tmp_path, monkeypatch, spied
):
    query = _query()
    query.write_h5ad(tmp_path / "query.h5ad")
    monkeypatch.setattr(annotation, "LARGE_QUERY", 1000)
    monkeypatch.setattr(annotation, "UMAP_CELLS", 300)
    streamed = gsrcl.annotate(tmp_path / "query.h5ad", model, chunk_size=CHUNK, say=print)
    assert spied and streamed.large and streamed.query.X is None
    assert streamed.embedding.shape == (query.n_obs, 32)  # on disk: read by slicing
    assert len(streamed.umap_cells()) == 300
    labelled = streamed.to_adata()
    assert labelled.n_vars == 0 and labelled.n_obs == query.n_obs
    folder = Path(streamed.scratch.name)
    assert folder.is_dir()
    streamed.close()
    assert not folder.exists()


def test_a_small_query_file_is_labelled_in_chunks_and_copied_whole(model, tmp_path):
    query = _query(copies=1)
    query.write_h5ad(tmp_path / "query.h5ad")
    table = _annotated_file(model, tmp_path, lambda _: None)
    copy = ad.read_h5ad(tmp_path / "out" / "query.h5ad")  # the query with its labels, as before
    assert copy.n_vars == query.n_vars and copy.obsm["X_gsrcl"].shape == (query.n_obs, 32)
    assert (copy.obs["gsrcl_prediction"].astype(str) == table["predicted"].to_numpy()).all()


@pytest.mark.parametrize(
    "bad, message", [(np.nan, "NaN or infinite values"), (-1.0, "negative values")]
)
def test_a_bad_value_in_a_late_chunk_stops_with_the_whole_querys_message(
    model, tmp_path, spied, bad, message
):
    query = _query()
    x = query.X.tocsr()
    x.data[-1] = bad  # the last cell's
    query.X = x
    query.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(
        UserError, match=re.escape(f"query {tmp_path / 'bad.h5ad'} holds {message}")
    ):
        annotate_file(
            model,
            Query(str(tmp_path / "bad.h5ad")),
            tmp_path / "out",
            chunk_size=CHUNK,
            umap=False,
            say=lambda _: None,
        )
    assert len(spied) == -(-query.n_obs // CHUNK)  # every chunk up to the last was read
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_a_layer_raw_or_zarr_query_is_read_in_chunks_with_the_same_messages(
    model, tmp_path, monkeypatch, spied
):
    monkeypatch.setattr(annotation, "LARGE_QUERY", 100)  # labels.h5ad: no copy read whole
    query = _query(copies=1)
    values = query.X.copy()
    stored = ad.AnnData(X=None, obs=query.obs, var=query.var, layers={"logged": values})
    stored.write_h5ad(tmp_path / "layers.h5ad")
    label = lambda q: annotate_file(  # noqa: E731
        model, q, tmp_path / "out", chunk_size=CHUNK, umap=False, say=lambda _: None
    )
    with pytest.raises(UserError, match=r"has an empty X \(the layers \['logged'\]\)"):
        label(Query(str(tmp_path / "layers.h5ad")))
    with pytest.raises(UserError, match="has no layer 'nope'; layers are \\['logged'\\]"):
        label(Query(str(tmp_path / "layers.h5ad"), layer="nope"))
    spied.clear()
    reference = label(Query(str(tmp_path / "layers.h5ad"), layer="logged"))
    assert len(spied) == -(-query.n_obs // CHUNK)
    raw = ad.AnnData(X=np.zeros((query.n_obs, 2), dtype=np.float32), obs=query.obs)
    raw.raw = query
    raw.write_h5ad(tmp_path / "raw.h5ad")
    assert label(Query(str(tmp_path / "raw.h5ad"), use_raw=True)).equals(reference)
    query.write_zarr(tmp_path / "query.zarr")
    spied.clear()
    assert label(Query(str(tmp_path / "query.zarr"))).equals(reference)
    assert len(spied) == -(-query.n_obs // CHUNK)


def test_a_csc_query_is_read_whole_and_said(model, tmp_path, caplog):
    query = _query(copies=1)
    query.X = query.X.tocsc()  # its rows are scattered through the file
    query.write_h5ad(tmp_path / "csc.h5ad")
    with caplog.at_level(logging.WARNING):
        table = annotate_file(
            model, Query(str(tmp_path / "csc.h5ad")), tmp_path / "out", umap=False, say=print
        )
    assert "stores its matrix by gene (CSC), so it is read whole" in caplog.text
    assert len(table) == query.n_obs


def test_a_sampled_umap_says_so_in_its_title():
    rng = np.random.default_rng(0)
    predicted = np.array(["B", "T", "Unassigned"] * 10)
    fig = query_umap(rng.normal(size=(30, 2)), predicted, ["B", "T"], "Unassigned", of=1000)
    assert fig.axes[0].get_title().startswith("a random 30 of 1000 query cells")
    fig = query_umap(rng.normal(size=(30, 2)), predicted, ["B", "T"], "Unassigned")
    assert fig.axes[0].get_title().startswith("30 query cells")
