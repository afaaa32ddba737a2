"""The paper's datasets by name: download, checksum, resume, unpack and read, against a local
server holding the collection's layout (tests/fetch_server.py); no network."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import replace

import numpy as np
import pytest
import torch

from gsrcl.config.settings import Dataset
from gsrcl.data import collection, download
from gsrcl.data.dataset import LABEL, load_dataset
from gsrcl.errors import UserError
from tests import fetch_server
from tests.conftest import shared_file

ARCHIVE = f"zenodo/{collection.BENCHMARK.name}"


@pytest.fixture
def fixture():
    return fetch_server.make_collection()


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A server on 127.0.0.1, the registry's URLs and the cache pointed at it."""
    served, http = fetch_server.serve(tmp_path / "served")
    monkeypatch.setenv(collection.ZENODO.env, f"{served.url}/zenodo/")
    monkeypatch.setenv(collection.GSRCL_TASKS.env, f"{served.url}/tasks/")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    yield served
    http.shutdown()


@pytest.fixture
def server(served, monkeypatch, fixture):
    """...with the registry holding the fixture's sizes and checksums."""
    for name, entry in fetch_server.registered(fixture).items():
        monkeypatch.setitem(collection.DATASETS, name, entry)
    return served


def _cached(tmp_path) -> list[str]:
    """Every file in the cache but the locks."""
    cache = tmp_path / "cache"
    return sorted(
        str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file() and p.name != ".lock"
    )


def test_a_dataset_by_name_is_downloaded_checked_unpacked_once_and_read(
    tmp_path, server, fixture, caplog
):
    fetch_server.publish(server, fixture)
    spec = collection.paper_dataset("pbmc_10xv2")
    assert spec.path == "zenodo:pbmc_10xv2"
    assert spec.cell_types == ("CD4+ T cell", "Cytotoxic T cell", "Natural killer cell")

    adata = load_dataset(spec)
    assert adata.n_obs == 60 and adata.n_vars == 30
    by_id = dict(zip(adata.obs_names, adata.obs[LABEL], strict=True))
    assert by_id["pbmc1_10X_v2_0002"] == "Natural killer cell"
    assert sorted(set(by_id.values())) == sorted(fetch_server.TYPES)
    asked = [name for name, _ in server.requests]
    assert asked.count(ARCHIVE) == 1 and len(asked) == 4  # the archive and 3 task files

    assert load_dataset(spec).n_obs == 60 and load_dataset(collection.paper_dataset("baron_mouse"))
    assert "holds 60 cells × 30 genes with a count, 5 cell types; the registry" in caplog.text
    assert [name for name, _ in server.requests].count(ARCHIVE) == 1  # unpacked once, kept
    cached = _cached(tmp_path)
    assert "zenodo-3357167/scRNAseq_Benchmark_datasets.zip" in cached
    assert f"zenodo-3357167/scRNAseq_Benchmark_datasets/{fetch_server.PBMC.matrix}" in cached
    assert not [name for name in cached if name.endswith(".part")]


@pytest.mark.parametrize("fault", ["changed bytes", "truncated", "truncated, no size recorded"])
def test_a_corrupt_or_truncated_download_is_refused_with_one_message_and_nothing_kept(
    tmp_path, server, fixture, monkeypatch, fault
):
    bad = bytearray(fixture.archive)
    if fault == "changed bytes":
        bad[len(bad) // 2] ^= 0xFF
    else:
        bad = bad[: len(bad) // 2]
    if fault == "truncated, no size recorded":  # then the checksum alone catches it
        entry = collection.DATASETS["baron_mouse"]
        no_size = replace(entry, archive=replace(entry.archive, size=None))
        monkeypatch.setitem(collection.DATASETS, "baron_mouse", no_size)
    fetch_server.publish(server, fixture, archive=bytes(bad))
    with pytest.raises(UserError) as refused:
        load_dataset(Dataset(name="baron", path="zenodo:baron_mouse"))
    message = str(refused.value)
    assert "scRNAseq_Benchmark_datasets.zip (from http://127.0.0.1:" in message
    assert ") was refused: " in message
    assert ("truncated" if fault == "truncated" else "does not match the known hash") in message
    assert "Nothing of it was kept" in message
    assert _cached(tmp_path) == []


def test_an_interrupted_download_resumes_where_it_stopped(tmp_path, server, fixture, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 1024)  # what arrives is written a chunk at a time
    fetch_server.publish(server, fixture)
    half = len(fixture.archive) // 2
    server.cut_after[ARCHIVE] = half
    spec = Dataset(name="baron", path="zenodo:baron_mouse")
    with pytest.raises(UserError) as stopped:
        load_dataset(spec)
    part = tmp_path / "cache" / "zenodo-3357167" / "scRNAseq_Benchmark_datasets.zip.part"
    assert f"kept in {part}: run again to resume" in str(stopped.value)
    kept = part.stat().st_size
    assert 0 < kept <= half and _cached(tmp_path) == [str(part.relative_to(tmp_path / "cache"))]

    assert load_dataset(spec).n_obs == 60
    assert server.requests[-1] == (ARCHIVE, f"bytes={kept}-")  # only the rest was asked for
    assert not part.exists()


def test_a_file_without_a_recorded_checksum_is_used_unverified_and_its_sha256_said(
    tmp_path, server, fixture, monkeypatch, caplog
):
    unchecked = fetch_server.registered(fixture, archive_checksum=None)["baron_mouse"]
    monkeypatch.setitem(collection.DATASETS, "baron_mouse", unchecked)
    fetch_server.publish(server, fixture)
    with caplog.at_level(logging.WARNING, logger="gsrcl.data.download"):
        assert load_dataset(Dataset(name="baron", path="zenodo:baron_mouse")).n_obs == 60
    said = caplog.text
    assert "scRNAseq_Benchmark_datasets.zip (from http://127.0.0.1:" in said
    assert "was NOT verified" in said
    assert hashlib.sha256(fixture.archive).hexdigest() in said


def test_the_papers_task_files_must_mark_the_cells_the_labels_name(tmp_path, server, fixture):
    flipped = bytearray(fixture.tasks["Natural killer cell"])
    flipped[0:1] = b"1" if flipped[0:1] == b"0" else b"0"
    fixture.tasks["Natural killer cell"] = bytes(flipped)
    for name, entry in fetch_server.registered(fixture).items():
        collection.DATASETS[name] = entry  # the server's fixture restores them after the test
    fetch_server.publish(server, fixture)
    with pytest.raises(UserError) as refused:
        load_dataset(collection.paper_dataset("pbmc_10xv2"))
    message = str(refused.value)
    assert "Natural killer cell_VR_Labels.csv disagrees with" in message
    assert "10Xv2_pbmc1Labels.csv on 1 cells of 'Natural killer cell'" in message


def test_an_unknown_name_lists_the_registered_ones():
    with pytest.raises(UserError, match="zenodo:nope is not a registered dataset.*zenodo:xin"):
        load_dataset(Dataset(name="x", path="zenodo:nope"))


def test_the_registry_has_baron_mouses_cells_genes_and_types():
    """The shared baron_mouse.h5ad holds the paper's Baron Mouse (same cells and labels)."""
    adata = load_dataset(Dataset(name="baron", path=str(shared_file("baron_mouse.h5ad"))))
    entry = collection.DATASETS["baron_mouse"]
    types = np.unique(adata.obs[LABEL]).size
    assert (adata.n_obs, adata.n_vars, types) == (entry.cells, entry.genes, entry.types)


def test_check_plans_datasets_by_name_from_the_registry_without_downloading(tmp_path, served):
    from gsrcl.runner.pipeline import check
    from tests.conftest import tiny_experiment

    datasets = tuple(collection.paper_dataset(n) for n in ("baron_mouse", "pbmc_10xv2"))
    lines = []
    assert check(tiny_experiment(tmp_path, datasets=datasets), log=lines.append) == 0
    text = "\n".join(lines)
    assert served.requests == [] and not (tmp_path / "cache").exists()
    assert (
        "baron_mouse: not downloaded yet, planned from the registry (Baron Mouse (pancreas)): "
        "1886 cells × 14861 genes, 13 cell types; every cell type a task" in text
    )
    assert "pbmc_10xv2: not downloaded yet" in text
    assert "tasks: CD4+ T cell, Cytotoxic T cell, Natural killer cell" in text
    assert (
        "download on first use: scRNAseq_Benchmark_datasets.zip (3.67 GB), 3 task files of the "
        "paper; 3.67 GB in all, into " in text
    )
    assert "estimate: timing a stand-in/simclr-noise" in text
    assert "24 jobs planned" in text and "estimate: the run takes ~" in text
    assert "pbmc_10xv2/supcon-noise: 3 CPU jobs of ~" in text
    assert "disk: results keep up to" in text


def test_a_tiny_run_through_the_runner_on_a_dataset_fetched_by_name(tmp_path, server, fixture):
    import pandas as pd

    from gsrcl.config.settings import Compute, Contrastive, Method, Split
    from gsrcl.runner.pipeline import run_experiment
    from tests.conftest import tiny_experiment

    fetch_server.publish(server, fixture)
    experiment = tiny_experiment(
        tmp_path,
        datasets=(collection.paper_dataset("pbmc_10xv2"),),
        methods=(Method(loss="simclr", augmentation="noise", encoder=(32,), head=(16,)),),
        contrastive=Contrastive(epochs=2, validate_every=2, lr=1e-3),
        split=Split(folds=2),
        compute=Compute(cpu_workers=1),  # one worker process to start
    )
    lines = []
    assert run_experiment(experiment, log=lines.append) == 0, "\n".join(lines)
    summary = pd.read_csv(tmp_path / "results" / "tiny" / "summary.csv")
    assert sorted(summary["task"].unique()) == sorted(
        collection.DATASETS["pbmc_10xv2"].paper_cell_types
    )
    assert set(summary["method"]) == {"baseline-svm", "simclr-noise"}
    assert [name for name, _ in server.requests].count(ARCHIVE) == 1  # the workers read the cache


def test_a_planned_shape_has_the_training_cells_the_split_makes():
    from gsrcl.config.settings import Split
    from gsrcl.data.splits import make_folds
    from gsrcl.runner.estimate import planned_shape

    sizes = [894, 275, 218, 191, 139, 47, 41, 36, 14, 10, 8, 7, 6]  # Baron Mouse's types
    labels = np.repeat([f"t{i}" for i in range(len(sizes))], sizes)
    folds = make_folds([f"c{i}" for i in range(len(labels))], labels, Split(), 0, None)
    shape = planned_shape(len(labels), 14861, 13, Split())
    assert shape.train == len(folds.train(0)) == 1206


def test_a_timing_is_carried_to_a_shape_by_cells_weights_and_tasks():
    from gsrcl.config.settings import Method
    from gsrcl.runner.calibrate import Timing
    from gsrcl.runner.estimate import Shape, parameters, scaled

    noise = Method(loss="simclr", augmentation="noise", encoder=(64, 32), head=(16,))
    measured, timing = Shape(100, 50, 2, 60), Timing(epoch=1.0, step=3.0, embed=1.0)
    same_net = scaled(timing, measured, Shape(200, 50, 4, 120), noise)
    assert same_net.epoch == pytest.approx(2.0)  # twice the training cells
    assert same_net.embed == pytest.approx(2.0)  # twice the cells to embed
    assert same_net.step == pytest.approx(2.0 + 2.0 * 2 * 4)  # scoring: tasks × cells²
    wider = scaled(timing, measured, Shape(100, 500, 2, 60), noise)
    with torch.device("meta"):
        from gsrcl.model.encoder import ContrastiveModel

        small, large = (ContrastiveModel(g, (64, 32), (16,), True, 0.01) for g in (50, 500))
    assert wider.epoch == pytest.approx(parameters(large) / parameters(small))
    assert scaled(Timing(job=5.0), measured, Shape(100, 500, 4, 120), None).job == 40.0


def test_a_file_the_server_does_not_have_is_one_message_naming_the_mirror_setting(tmp_path, server):
    with pytest.raises(UserError) as missing:
        load_dataset(Dataset(name="baron", path="zenodo:baron_mouse"))
    message = str(missing.value)
    assert "could not download scRNAseq_Benchmark_datasets.zip from http://127.0.0.1:" in message
    assert "404" in message and "nothing arrived" in message and "GSRCL_ZENODO_URL" in message
    assert _cached(tmp_path) == []
