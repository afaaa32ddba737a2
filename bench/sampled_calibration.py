"""Export past `evaluation.exact_max_cells`: each classifier's Platt calibration is learnt from
fits on the search's sample (`search_max_cells`) and applied to the model fitted on every cell.
Is that calibration as good as one learnt from fits on every cell?

    python3 bench/sampled_calibration.py [--sample 2000] [--components 200]

Data and encoder as bench/approximate_svm.py's fold 0 (Baron Mouse tiled 6 times, 11 316 cells;
SimCLR trained 15 epochs on the fold's 6036 training cells, its last snapshot's embeddings). For
three types against the rest, `calibrated_classifiers` (what export runs) fits the approximate
SVM with its probabilities twice: searched and calibrated on every training cell, then with the
same settings calibrated on a stratified sample of `--sample` of them (the model itself on every
cell both times), so only the calibration's cells differ. Scored on the cells the
encoder never trained on (the fold's test cells and the validation cells): log loss, Brier
score, mean probability against the types' share, and how many cells called the type (p > 0.5)
are that type. One thread.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import brier_score_loss, log_loss

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.approximate_svm import DATA, METHOD, grouped_folds, snapshots, tiled  # noqa: E402
from gsrcl.config.presets import svm  # noqa: E402
from gsrcl.config.settings import NYSTROEM_COMPONENTS, Approximation  # noqa: E402
from gsrcl.data import preprocess  # noqa: E402
from gsrcl.evaluate.classifiers import calibrated_classifiers  # noqa: E402

TASKS = ["alpha", "ductal", "quiescent_stellate"]
EPOCHS = 15


def embeddings() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every cell's embedding, the labels, fold 0's training rows and its held-out rows."""
    adata = tiled(DATA, 6)
    labels = adata.obs["cell_type"].to_numpy(dtype=str)
    groups = adata.obs["source"].to_numpy()
    validation = grouped_folds(labels, groups, 5)[0]
    rest = np.setdiff1d(np.arange(adata.n_obs), validation)
    test = rest[grouped_folds(labels[rest], groups[rest], 3)[0]]
    train = np.setdiff1d(rest, test)
    fitted = preprocess.fit_masking(adata[train], "counts", METHOD.n_genes)
    x = torch.as_tensor(fitted.transform(adata))
    return snapshots(x, train, [EPOCHS])[EPOCHS], labels, train, np.union1d(test, validation)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", type=int, default=2000)
    parser.add_argument("--components", type=int, default=NYSTROEM_COMPONENTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    emb, labels, train, held = embeddings()
    print(f"{len(train)} training cells, {len(held)} held out; m = {args.components}")
    print(
        "| calibrated on | type | log loss | Brier | mean p / share | p > 0.5: cells, right "
        "| gamma, C |"
    )
    print("|---|---|---|---|---|---|---|")
    choices = None  # the search's on every cell, kept for the sample's calibration
    for name, sample in (("every cell", None), (f"{args.sample} cells", args.sample)):
        approximation = Approximation(0, args.components, sample)  # always approximate
        calibrated = calibrated_classifiers(
            svm(True),
            emb[train],
            [labels[train] == t for t in TASKS],
            inner_folds=5,
            metric="mcc",
            seed=0,
            choices=choices,
            approximation=approximation,
        )
        choices = [{k: fitted.params[k] for k in ("gamma", "C")} for fitted in calibrated]
        for task, fitted in zip(TASKS, calibrated, strict=True):
            p, y = fitted.model().predict_proba(emb[held])[:, 1], labels[held] == task
            called = p > 0.5
            right = f"{y[called].mean():.3f}" if called.any() else "-"
            print(
                f"| {name} | {task} | {log_loss(y, p):.4f} | {brier_score_loss(y, p):.4f} | "
                f"{p.mean():.4f} / {y.mean():.4f} | {called.sum()}, {right} | "
                f"{fitted.params['gamma']:.3g}, {fitted.params['C']:g} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
