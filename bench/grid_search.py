"""SVM grid search: precomputed kernels against GridSearchCV(SVC()), and the Baron Mouse baselines.

    python3 bench/grid_search.py [--data ../shared/data/baron_mouse.h5ad] [--reference-tasks 1]

Part 1 times the paper's grid (16 candidates, 5-fold inner CV, log1p of all genes) on fold 0 of the
paper's split for every cell type with the precomputed-kernel path, and for the first
`--reference-tasks` types (GridSearchCV takes minutes per task) with scikit-learn's GridSearchCV;
both get the same inner folds, and the chosen parameters and test MCC are printed side by side.
Part 2 prints the baseline table (paper SVM, balanced SVM, logistic regression) over all 5 folds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
from sklearn.model_selection import GridSearchCV
from sklearn.svm import SVC

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gsrcl.config.presets import PAPER, STRONG_EVALUATION  # noqa: E402
from gsrcl.config.settings import Dataset, Experiment  # noqa: E402
from gsrcl.data import dataset as data  # noqa: E402
from gsrcl.data import preprocess  # noqa: E402
from gsrcl.data.splits import make_folds  # noqa: E402
from gsrcl.evaluate.classifiers import FoldClassifier  # noqa: E402
from gsrcl.evaluate.metrics import binary_scores  # noqa: E402
from gsrcl.evaluate.workers import Workers  # noqa: E402
from gsrcl.runner import jobs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default="../shared/data/baron_mouse.h5ad")
    parser.add_argument("--reference-tasks", type=int, default=1)
    parser.add_argument("--skip-baselines", action="store_true", help="only part 1")
    args = parser.parse_args()
    spec = Dataset(name="baron_mouse", path=args.data, labels="cell_type")
    experiment = Experiment(name="bench", datasets=(spec,), evaluation=STRONG_EVALUATION)
    adata = data.load_dataset(spec)
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    folds = make_folds(list(adata.obs_names), labels, PAPER.split, experiment.seed, None)
    print(f"{spec.name}: {adata.n_obs} cells × {adata.n_vars} genes, {len(folds.tasks)} tasks\n")
    compare_grid_search(adata, labels, folds, args.reference_tasks)
    if not args.skip_baselines:
        baseline_table(adata, spec, labels, folds, experiment)


def compare_grid_search(adata, labels, folds, reference_tasks: int) -> None:
    x = preprocess.fit_log1p("counts").transform(adata)
    train, test = folds.train(0), folds.test(0)
    spec = PAPER.evaluation.classifier
    start = time.perf_counter()
    ours = FoldClassifier(spec, x[train], inner_folds=5, metric="mcc")
    prepared = ours.prepare(x[test])
    setup = time.perf_counter() - start
    rows = []
    for i, task in enumerate(folds.scored_tasks):
        y = labels == task
        start = time.perf_counter()
        model = ours.fit(y[train])
        predicted, _ = ours.task_outputs(model, prepared)
        row = {
            "task": task,
            "precomputed_s": time.perf_counter() - start,
            "precomputed_C": model.svc.C,
            "precomputed_gamma": float(model.gamma),
            "precomputed_mcc": binary_scores(y[test], predicted, predicted)["mcc"],
        }
        if i < reference_tasks:
            row.update(_reference(x, y, train, test, spec.grid, ours.inner_splits(y[train])))
        rows.append(row)
        print({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    table = pd.DataFrame(rows)
    print(f"\nshared distance matrices: {setup:.1f} s")
    print(f"precomputed path, all {len(table)} tasks: {setup + table['precomputed_s'].sum():.1f} s")
    if "gridsearch_s" in table:
        compared = table.dropna(subset=["gridsearch_s"])
        print(
            f"GridSearchCV on {len(compared)} task(s): {compared['gridsearch_s'].sum():.1f} s "
            f"against {compared['precomputed_s'].sum():.1f} s; same MCC: "
            f"{bool((compared['gridsearch_mcc'] == compared['precomputed_mcc']).all())}"
        )


def _reference(x, y, train, test, grid, splits) -> dict:
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(SVC(), grid, scoring="matthews_corrcoef", cv=splits)
        search.fit(x[train], y[train])
    predicted = search.predict(x[test])
    return {
        "gridsearch_s": time.perf_counter() - start,
        "gridsearch_C": search.best_params_["C"],
        "gridsearch_gamma": float(search.best_estimator_._gamma),
        "gridsearch_mcc": binary_scores(y[test], predicted, predicted)["mcc"],
    }


def baseline_table(adata, spec, labels, folds, experiment) -> None:
    start = time.perf_counter()
    rows = []
    for fold in range(experiment.split.folds):
        fold_data = jobs.FoldData(
            adata,
            spec.values,
            labels,
            folds.train(fold),
            folds.validation(),
            folds.test(fold),
            folds.scored_tasks,
        )
        with Workers(os.cpu_count() or 1) as workers:
            rows += jobs.run_baselines(fold_data, experiment, "cpu", experiment.seed, workers).rows
    table = pd.DataFrame(rows).pivot_table(index="task", columns="method", values="mcc", sort=False)
    print(f"\nbaselines, MCC mean over 5 folds ({time.perf_counter() - start:.0f} s):")
    print(table.to_string(float_format="%.3f"))
    print("mean over tasks:\n" + table.mean().to_string(float_format="%.3f"))


if __name__ == "__main__":
    main()
