"""How the approximate SVM's liblinear fits are set (gsrcl/evaluate/nystroem_svm.py): features
centred or not, and liblinear's stopping tolerance, against libsvm's exact SVC on the same cells.

    python3 bench/liblinear_settings.py [--copies 3] [--components 200]

Data: Baron Mouse (`../shared/data/baron_mouse.h5ad`, 1886 cells, 13 types) tiled `--copies`
times, each copy's counts thinned (binomial, p = 0.8); log-normalised, its 2000 most variable
genes scaled, embedded by an untrained encoder 256-128 (weights ~ N(0, 0.02)): what a large
job's first validation step scores, where small gammas make nearly constant Nystroem features.
Three quarters of the source cells (their copies with them) train, the rest test. For each
setting, the paper's grid (gamma ∈ {scale, 1e-4, 1e-3, 1e-2} × C ∈ {0.1, 1, 10, 100}) is fitted
for five types against the rest: its seconds, and how far its test MCCs fall from libsvm's on
the same candidates (mean and largest |ΔMCC| over the 80 fits). One thread.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import scanpy as sc
import torch
from sklearn.metrics import matthews_corrcoef
from sklearn.svm import SVC, LinearSVC

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tiling import thinned_copies  # noqa: E402
from gsrcl.config.settings import Approximation  # noqa: E402
from gsrcl.evaluate.nystroem_svm import (  # noqa: E402
    LIBLINEAR_PASSES,
    NystroemRBF,
    features,
    landmark_weights,
)
from gsrcl.model.encoder import ContrastiveModel  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"
TYPES = ["beta", "ductal", "delta", "macrophage", "quiescent_stellate"]
GRID = [(g, c) for g in ("scale", 1e-4, 1e-3, 1e-2) for c in (0.1, 1, 10, 100)]
# (name, centred, tolerance): scikit-learn's default 1e-4, liblinear's own 0.1
SETTINGS = [
    ("uncentred, tol 1e-4", False, 1e-4),
    ("centred, tol 1e-4", True, 1e-4),
    ("centred, tol 1e-2 (the runner's)", True, 1e-2),
    ("centred, tol 1e-1", True, 1e-1),
]


def embeddings(copies: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell's untrained embedding, its type and its source cell."""
    source = ad.read_h5ad(SOURCE)
    counts = thinned_copies(source.X.tocsr(), copies, 0.8, np.random.default_rng(0))
    adata = ad.AnnData(counts)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000)
    x = adata[:, adata.var.highly_variable].X.toarray()
    x = (x - x.mean(0)) / (x.std(0) + 1e-8)
    torch.manual_seed(0)
    model = ContrastiveModel(x.shape[1], (256, 128), (128,), False, 0.02)
    with torch.no_grad():
        e = model.encoder(torch.as_tensor(x, dtype=torch.float32)).numpy().astype(np.float64)
    labels = np.tile(source.obs["cell_type"].astype(str).to_numpy(), copies)
    return e, labels, np.tile(np.arange(source.n_obs), copies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=3)
    parser.add_argument("--components", type=int, default=200)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    e, labels, sources = embeddings(args.copies)
    held = np.random.default_rng(1).random(sources.max() + 1) < 0.25
    train, test = np.flatnonzero(~held[sources]), np.flatnonzero(held[sources])
    solver = NystroemRBF(e[train], Approximation(components=args.components))
    test_distances = solver.distances(e[test])
    print(f"{len(train)} training and {len(test)} test cells, m = {solver.components}")
    exact, seconds = {}, {}
    start = time.perf_counter()
    for gamma, c in GRID:
        value = solver.gamma(gamma)
        for t in TYPES:
            y = labels == t
            svc = SVC(C=c, gamma=value).fit(e[train], y[train])
            exact[gamma, c, t] = matthews_corrcoef(y[test], svc.predict(e[test]))
    seconds["libsvm (exact)"] = time.perf_counter() - start
    gaps = {}
    for name, centre, tol in SETTINGS:
        start, gaps[name] = time.perf_counter(), []
        for gamma, c in GRID:
            value = solver.gamma(gamma)
            weights = landmark_weights(solver.nystroem(value))
            fit_x = features(solver.train_distances, value, weights)
            test_x = features(test_distances, value, weights)
            if centre:
                mean = fit_x.mean(axis=0)
                fit_x, test_x = fit_x - mean, test_x - mean
            for t in TYPES:
                y = labels == t
                svm = LinearSVC(loss="hinge", C=c, tol=tol, max_iter=LIBLINEAR_PASSES)
                predicted = svm.fit(fit_x, y[train]).predict(test_x)
                gaps[name].append(abs(matthews_corrcoef(y[test], predicted) - exact[gamma, c, t]))
        seconds[name] = time.perf_counter() - start
    print("\n| setting | seconds (the grid, 5 types) | mean |ΔMCC| to libsvm | largest |")
    print("|---|---|---|---|")
    print(f"| libsvm (exact) | {seconds['libsvm (exact)']:.1f} | | |")
    for name, *_ in SETTINGS:
        print(
            f"| {name} | {seconds[name]:.1f} | {np.mean(gaps[name]):.3f} | "
            f"{np.max(gaps[name]):.3f} |"
        )


if __name__ == "__main__":
    main()
