"""Labelling speed: 10 000 query cells against a 13-type Baron Mouse reference, on this machine.

    python3 bench/annotate.py [--cells 10000] [--epochs 20] [--figure docs/annotation-umap.png]

Builds the reference the way a user would: configs/baron_mouse.py with its SimCLR + noise method
only (--epochs epochs, no baselines), then `export`. The query is --cells cells drawn from Baron
Mouse with replacement, each count thinned binomially (p = 0.8) so no query cell equals a reference
cell. Prints the export time and the seconds spent reading, labelling and writing the query, with
the UMAP figure timed apart; `--figure` copies the UMAP there (the README shows it).
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsrcl.config.configfile import load_experiment  # noqa: E402
from gsrcl.config.settings import Evaluation  # noqa: E402
from gsrcl.reference.annotation import Query, annotate_file  # noqa: E402
from gsrcl.reference.export import export_model  # noqa: E402
from gsrcl.runner.pipeline import run_experiment  # noqa: E402

BARON = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"


def thinned_query(cells: int, path: Path) -> None:
    reference = ad.read_h5ad(BARON)
    rng = np.random.default_rng(0)
    rows = rng.choice(reference.n_obs, cells, replace=True)
    x = reference.X[rows].tocsr()
    x.data = rng.binomial(x.data.astype(np.int64), 0.8).astype(np.float32)
    x.eliminate_zeros()
    query = ad.AnnData(sp.csr_matrix(x), var=reference.var[[]])
    query.obs_names = [f"query-{i}" for i in range(cells)]
    query.write_h5ad(path)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--figure", type=Path, help="copy the query UMAP here")
    args = parser.parse_args()
    if not BARON.exists():
        sys.exit(f"{BARON} not found: the benchmark needs the shared data folder")
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        experiment = load_experiment(
            ROOT / "configs" / "baron_mouse.py",
            [f"contrastive.epochs={args.epochs}", f"results_dir={str(folder)!r}"],
        )
        experiment = dataclasses.replace(
            experiment,
            datasets=(dataclasses.replace(experiment.datasets[0], path=str(BARON)),),
            methods=experiment.methods[:1],
            evaluation=Evaluation(classifier=experiment.evaluation.classifier, baselines=()),
        )
        start = time.perf_counter()
        run_experiment(experiment, log=lambda line: None)
        trained = time.perf_counter() - start
        start = time.perf_counter()
        model = export_model(experiment, log=lambda line: None)
        exported = time.perf_counter() - start
        types = len(list((model / "classifiers").iterdir()))
        encoders = len(list((model / "encoders").iterdir()))
        print(
            f"reference: Baron Mouse, {types} cell types, {encoders} distinct encoders; "
            f"training {trained / 60:.1f} min ({args.epochs} epochs), export {exported:.1f} s"
        )

        thinned_query(args.cells, folder / "query.h5ad")
        start = time.perf_counter()
        table = annotate_file(
            model,
            Query(str(folder / "query.h5ad")),
            folder / "out",
            umap=False,
            say=lambda line: None,
        )
        labelled = time.perf_counter() - start
        start = time.perf_counter()
        annotate_file(
            model, Query(str(folder / "query.h5ad")), folder / "out", say=lambda line: None
        )
        with_umap = time.perf_counter() - start
        print(
            f"annotate {args.cells} cells: {labelled:.1f} s (read, label, write); with the UMAP "
            f"figure {with_umap:.1f} s; {(table['predicted'] == 'Unassigned').mean():.1%} "
            "Unassigned"
        )
        if args.figure:
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / "out" / "umap.png", args.figure)
            print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
