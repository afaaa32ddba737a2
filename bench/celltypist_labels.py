"""CellTypist's labels of a query, run inside the venv bench/crossbatch.py makes for it.

    python celltypist_labels.py REFERENCE.h5ad QUERY.h5ad OUT.csv

CellTypist 1.7.1 needs scikit-learn < 1.8, so it cannot share the project's environment. Both
files hold counts and `obs['cell_type']` in the reference; each is normalised to 10 000 per cell
and logged (CellTypist's expected input). OUT.csv gets one column per setting and seed: the
defaults, and `feature_selection=True` (its top genes per type, then a second fit).

CellTypist takes no seed: `feature_selection` ranks genes with an SGD fit that draws from numpy's
global state, so one unseeded run is one draw (on Baron human1 its macro-F1 ranged 0.89-0.98).
Each run here seeds numpy first, so the bench repeats, and the seeded setting runs once per seed.
"""

import sys

import anndata as ad
import celltypist
import numpy as np
import pandas as pd
import scanpy as sc

SEEDS = {"defaults": [0], "feature_selection": [0, 1, 2, 3, 4]}
OPTIONS = {"defaults": {}, "feature_selection": {"feature_selection": True}}


def logged(path: str) -> ad.AnnData:
    cells = ad.read_h5ad(path)
    sc.pp.normalize_total(cells, target_sum=1e4)
    sc.pp.log1p(cells)
    return cells


def main() -> None:
    reference, query, out = sys.argv[1:4]
    reference, query = logged(reference), logged(query)
    labels = {}
    for setting, seeds in SEEDS.items():
        for seed in seeds:
            np.random.seed(seed)
            model = celltypist.train(reference, "cell_type", n_jobs=2, **OPTIONS[setting])
            result = celltypist.annotate(query, model=model, majority_voting=False)
            predicted = result.predicted_labels["predicted_labels"].astype(str).to_numpy()
            labels[f"{setting}, seed {seed}"] = predicted
    pd.DataFrame(labels, index=query.obs_names).to_csv(out)


if __name__ == "__main__":
    main()
