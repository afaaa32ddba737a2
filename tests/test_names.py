"""Cell-type names map one-to-one to files, whatever they hold: names that a slug would merge,
unicode, and names longer than a file name may be."""

import dataclasses

import anndata as ad
import pandas as pd
import scanpy as sc

import gsrcl
from gsrcl.config.settings import Dataset, Export
from gsrcl.files import safe_name
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import tiny_experiment

LONG = "γδ T cell, " + "tissue-resident " * 25  # 411 characters, unicode
RENAMED = {"CD19+ B": "T/cell", "CD34+": "T_cell", "Dendritic": LONG}


def test_safe_names_are_one_to_one_and_bounded():
    names = ["T/cell", "T_cell", "T cell", "αβ T cell", "γδ T cell", LONG, LONG + "x", ""]
    files = [safe_name(n) for n in names]
    assert len(set(files)) == len(names)
    assert all(0 < len(f) <= 57 and "/" not in f and not f.startswith(".") for f in files)


def test_colliding_unicode_and_long_names_go_through_run_report_export_and_annotate(tmp_path):
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    adata.obs = pd.DataFrame(
        {"cell_type": adata.obs["bulk_labels"].astype(str).replace(RENAMED)},
        index=adata.obs_names,
    )
    adata.write_h5ad(tmp_path / "cells.h5ad")
    dataset = Dataset(
        name="renamed",
        path=str(tmp_path / "cells.h5ad"),
        values="log",
        cell_types=tuple(RENAMED.values()),
    )
    base = tiny_experiment(tmp_path)
    experiment = tiny_experiment(
        tmp_path,
        datasets=(dataset,),
        methods=base.methods[:1],
        evaluation=dataclasses.replace(base.evaluation, baselines=()),
        export=Export(after_run=True, method="simclr-noise"),
    )
    assert run_experiment(experiment, log=lambda _: None) == 0
    run_dir = tmp_path / "results" / "tiny"
    summary = pd.read_csv(run_dir / "summary.csv")
    assert set(summary["task"]) == set(RENAMED.values())
    # one file per name (each kept in the fold export takes it from), three distinct names
    held = [p.name for p in run_dir.glob("jobs/renamed/simclr-noise/fold-*/encoder-*.pt")]
    assert sorted(held) == sorted(f"encoder-{safe_name(name)}.pt" for name in RENAMED.values())
    assert len(set(held)) == 3
    page = (run_dir / "report.html").read_text()
    assert "T/cell" in page and "T_cell" in page and "γδ T cell" in page

    model = gsrcl.ReferenceModel.load(run_dir / "models" / "renamed-simclr-noise")
    assert set(model.cell_types["name"]) == set(RENAMED.values())
    query = ad.read_h5ad(tmp_path / "cells.h5ad")
    query = query[query.obs["cell_type"].isin(RENAMED.values())].copy()
    table = gsrcl.annotate(query, model).table
    assert set(table["predicted"]) - {"Unassigned"} <= set(RENAMED.values())
    assert (table["predicted"] == query.obs["cell_type"].to_numpy()).mean() > 0.8
