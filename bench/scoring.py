"""Checkpoint selection at the paper's protocol on Baron Mouse: one validation step, on 1 thread
and on all, and what it means for a `configs/paper.py` fold-job on a GPU box.

    python3 bench/scoring.py [--data ../shared/data/baron_mouse.h5ad] [--repeats 3]
                             [--gpu-tflops 400] [--cores-per-gpu 4]

Real cells: the paper's split of Baron Mouse (fold 0: training, validation and test cells) and
every scored cell type; the embedding is a 2048-wide one from an untrained paper-width encoder
(4096-4096-4096-2048 on all genes), which costs the scoring what a trained one does. One step =
`ValidationScorer.score`: for each task the paper's SVM grid (16 candidates × 5 inner folds), the
refit of the chosen one, its validation score and its test outputs. It prints the median seconds
per step with 1 thread and with every core, the speed-up, the fits per second, a check that both
give identical scores and outputs, the training FLOPs per epoch of the same job, and the
projected wall time of one SimCLR fold-job (3000 epochs, a step every 50) on a box with
`--cores-per-gpu` cores per H100-class GPU sustaining `--gpu-tflops` TFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsrcl.config.presets import PAPER  # noqa: E402
from gsrcl.config.settings import Dataset  # noqa: E402
from gsrcl.data import dataset as data  # noqa: E402
from gsrcl.data import preprocess  # noqa: E402
from gsrcl.data.splits import make_folds  # noqa: E402
from gsrcl.evaluate.workers import Workers  # noqa: E402
from gsrcl.model.encoder import ContrastiveModel  # noqa: E402
from gsrcl.model.train import ValidationScorer, embed, validation_epochs  # noqa: E402

METHOD = PAPER.methods[0]  # SimCLR + Gaussian noise at the paper's width


def step_seconds(scorer: ValidationScorer, embeddings, threads: int, repeats: int):
    """Median seconds of a validation step on `threads` threads, and its last result."""
    times, result = [], None
    with Workers(threads) as workers:
        scorer.workers = workers
        for _ in range(repeats):
            start = time.perf_counter()
            result = scorer.score(*embeddings)
            times.append(time.perf_counter() - start)
    return statistics.median(times), result


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[t].score == b[t].score
        and all(np.array_equal(u, v) for u, v in zip(a[t].test, b[t].test, strict=True))
        for t in a
    )


def epoch_flops(n_genes: int, rows: int) -> float:
    """Forward 2·rows·in·out per layer, backward twice that (the first layer needs no input
    gradient), plus the rows × rows similarity of the loss: one full-batch SimCLR epoch."""
    sizes = [n_genes, *METHOD.encoder, *METHOD.head]
    flops = sum(
        2 * rows * n_in * n_out * (2 if i == 0 else 3)
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True))
    )
    return flops + 3 * 2 * rows * rows * METHOD.head[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/baron_mouse.h5ad"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gpu-tflops", type=float, default=400.0)
    parser.add_argument("--cores-per-gpu", type=int, default=4)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)

    spec = Dataset(name="baron_mouse", path=args.data, labels="cell_type")
    adata = data.load_dataset(spec)
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    folds = make_folds(list(adata.obs_names), labels, PAPER.split, 0, None)
    train, val, test = folds.train(0), folds.validation(), folds.test(0)
    x = torch.as_tensor(preprocess.fit_log1p("counts").transform(adata))
    torch.manual_seed(0)
    model = ContrastiveModel(x.shape[1], METHOD.encoder, METHOD.head, False, 0.02)
    embeddings = tuple(embed(model.encoder, x[part]) for part in (train, val, test))
    tasks = {t: (labels[train] == t, labels[val] == t) for t in folds.scored_tasks}
    scorer = ValidationScorer(
        x[train], x[val], x[test], tasks, PAPER.evaluation.classifier, 5, "mcc", seed=0
    )
    grid = PAPER.evaluation.classifier.grid
    fits = len(tasks) * (5 * len(grid["gamma"]) * len(grid["C"]) + 1)
    print(
        f"Baron Mouse fold 0: {len(train)} training, {len(val)} validation, {len(test)} test "
        f"cells × {embeddings[0].shape[1]}-wide embedding; {len(tasks)} tasks, {fits} SVM fits "
        f"a step; {cores} cores"
    )
    one, serial = step_seconds(scorer, embeddings, 1, args.repeats)
    many, parallel = step_seconds(scorer, embeddings, cores, args.repeats)
    print(f"  1 thread:   {one:6.2f} s a step, {fits / one:5.0f} fits/s")
    print(f"  {cores} threads: {many:6.2f} s a step, {fits / many:5.0f} fits/s")
    identical = same(serial, parallel)
    print(f"  speed-up {one / many:.2f}×; identical scores and test outputs: {identical}")

    epochs = PAPER.contrastive.epochs["simclr"]
    steps = len(validation_epochs(epochs, PAPER.contrastive.validate_every))
    flops = epoch_flops(x.shape[1], 2 * len(train))
    training = epochs * flops / (args.gpu_tflops * 1e12)
    efficiency = one / many / cores  # per-thread efficiency measured here, assumed to hold
    scoring = steps * one / (args.cores_per_gpu * efficiency)
    print(
        f"\ntraining: {flops / 1e12:.2f} TFLOP an epoch, {epochs * flops / 1e15:.1f} PFLOP for "
        f"{epochs} epochs; {steps} validation steps"
    )
    print(
        f"projected SimCLR fold-job, {args.cores_per_gpu} cores per GPU at "
        f"{args.gpu_tflops:.0f} TFLOP/s: training {training:.0f} s, scoring {scoring:.0f} s "
        f"({steps} steps × {one:.2f} s / ({args.cores_per_gpu} × {efficiency:.2f} efficiency)); "
        f"with scoring overlapped, about {max(training, scoring) + scoring / steps:.0f} s, "
        f"{'scoring' if scoring > training else 'training'} the larger part"
    )


if __name__ == "__main__":
    main()
