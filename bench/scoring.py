"""Checkpoint scoring at the paper's protocol on Baron Mouse: one validation step with libsvm on 1
and 2 threads and with the device solver, how closely the device solver gives libsvm's answers,
and what that means for a `configs/paper.py` SimCLR fold-job on an H200.

    python3 bench/scoring.py [--data ../shared/data/baron_mouse.h5ad] [--repeats 3]
                             [--device auto|cpu|cuda:0] [--trained-epochs 100] [--no-agreement]

Real cells: the paper's split of Baron Mouse (fold 0: training, validation and test cells) and
every scored cell type. Two embeddings: a 2048-wide one from an untrained paper-width encoder
(4096-4096-4096-2048 on all genes), which costs the scoring what a trained one does, and a trained
one (SimCLR with Gaussian noise at the CPU protocol's width, 512-256, `--trained-epochs` epochs at
lr 1e-3 on the training cells). One step = `ValidationScorer.score`: for each task the SVM grid,
the refit of the chosen candidate, its validation score and its test outputs.

Printed: seconds a step (median of --repeats) for libsvm on 1 thread and on 2, and for the device
solver on --device (with its batch: problems, iterations, problems × cells stepped, and memory:
measured on CUDA, computed from the tensors elsewhere); the agreement figures (the paper's grid
and the class-balanced one, on both embeddings: same choice, libsvm's inner-CV loss where not,
same validation MCC, objective gap, largest KKT violation); and the projected fold-job on an H200
from the epoch times measured there (docs/gpu-h200.json) plus the device solver's step, projected
from this step's measured work (kernel launches per iteration × iterations, and the bytes it moves
at the GPU's bandwidth) when no GPU is here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import ParameterGrid
from sklearn.svm import SVC
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsrcl.config.presets import PAPER, svm  # noqa: E402
from gsrcl.config.settings import Dataset, Method  # noqa: E402
from gsrcl.data import dataset as data  # noqa: E402
from gsrcl.data import preprocess  # noqa: E402
from gsrcl.data.splits import make_folds  # noqa: E402
from gsrcl.evaluate import smo  # noqa: E402
from gsrcl.evaluate.agreement import Agreement, compare_solvers  # noqa: E402
from gsrcl.evaluate.classifiers import FoldClassifier, inner_splits  # noqa: E402
from gsrcl.evaluate.kernel_svm import rbf_gamma, squared_distances  # noqa: E402
from gsrcl.evaluate.workers import Workers  # noqa: E402
from gsrcl.model.augment import augmentation  # noqa: E402
from gsrcl.model.encoder import ContrastiveModel  # noqa: E402
from gsrcl.model.losses import nt_xent  # noqa: E402
from gsrcl.model.train import ValidationScorer, embed, validation_epochs  # noqa: E402

PAPER_METHOD = PAPER.methods[0]  # SimCLR + Gaussian noise at the paper's width
CPU_METHOD = Method(loss="simclr", augmentation="noise", encoder=(512, 256), head=(256, 128))
H200_FIGURES = ROOT / "docs" / "gpu-h200.json"
H200_BANDWIDTH = 4.8e12  # bytes/s, HBM3e as NVIDIA states it for the H200
KERNEL_SECONDS = 2.5e-6  # a small kernel replayed in a CUDA graph, launch to launch (assumed)


def baron_fold(path: str):
    adata = data.load_dataset(Dataset(name="baron_mouse", path=path, labels="cell_type"))
    labels = adata.obs[data.LABEL].to_numpy(dtype=str)
    folds = make_folds(list(adata.obs_names), labels, PAPER.split, 0, None)
    parts = folds.train(0), folds.validation(), folds.test(0)
    x = torch.as_tensor(preprocess.fit_log1p("counts").transform(adata))
    tasks = {t: (labels[parts[0]] == t, labels[parts[1]] == t) for t in folds.scored_tasks}
    return x, parts, tasks


def untrained(x: torch.Tensor, parts) -> tuple[np.ndarray, ...]:
    torch.manual_seed(0)
    model = ContrastiveModel(x.shape[1], PAPER_METHOD.encoder, PAPER_METHOD.head, False, 0.02)
    return tuple(embed(model.encoder, x[p]) for p in parts)


def trained(x: torch.Tensor, parts, epochs: int) -> tuple[np.ndarray, ...]:
    """SimCLR with Gaussian noise, full batch, on the training cells (the CPU protocol)."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = ContrastiveModel(x.shape[1], CPU_METHOD.encoder, CPU_METHOD.head, False, 0.02)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    augment = augmentation(CPU_METHOD, generator)
    x_train = x[parts[0]]
    for _ in range(epochs):
        model.train()
        z1, z2 = model(torch.cat([augment(x_train), augment(x_train)])).chunk(2)
        loss = nt_xent(z1, z2, 0.07)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return tuple(embed(model.encoder, x[p]) for p in parts)


def step_seconds(scorer: ValidationScorer, embeddings, threads: int, repeats: int):
    """Median seconds of a validation step on `threads` threads, and its last result."""
    times, result = [], None
    torch.set_num_threads(threads)
    with Workers(threads) as workers:
        scorer.workers = workers
        for _ in range(repeats):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = scorer.score(*embeddings)
            times.append(time.perf_counter() - start)
    return statistics.median(times), result


VIEWS = {"unsqueeze", "select", "slice", "view", "expand", "as_strided", "alias", "unbind"}
VIEWS |= {"t", "transpose", "squeeze", "detach", "lift_fresh", "_unsafe_view"}


class _CountKernels(TorchDispatchMode):
    """torch operations that launch a kernel (views do not), and the bytes written by those
    whose output spans the whole batch (problems × cells)."""

    def __init__(self, batch_cells: int) -> None:
        super().__init__()
        self.kernels, self.full_bytes, self.batch_cells = 0, 0, batch_cells

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ not in VIEWS:
            self.kernels += 1
            if isinstance(out, torch.Tensor) and out.numel() >= self.batch_cells:
                self.full_bytes += out.numel() * out.element_size()
        return out


def device_step(embeddings, tasks, device: str) -> dict:
    """One step's search with the device solver: its batches' sizes and iterations, and the
    memory of the batch it makes on a GPU (search and every candidate's refit together):
    measured there, computed from its tensors elsewhere."""
    spec = PAPER.evaluation.classifier
    fold = FoldClassifier(
        spec, embeddings[0], inner_folds=5, metric="mcc", device=device, solver="device"
    )
    labels = [y for y, _ in tasks.values()]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    search = fold.search(labels, [fold.inner_splits(y) for y in labels])
    batches = fold.rbf_solver.batches
    cells = embeddings[0].shape[0]
    figures = {
        "problems": sum(b[0] for b in batches),
        "iterations_max": max(int(b[2].iterations.max()) for b in batches),
        "cell_steps": sum(b[2].cell_steps for b in batches),
        "cells": cells,
        "gpu_problems": batches[0][0] + len(labels) * len(search.candidates),
    }
    if device.startswith("cuda"):
        figures["memory_gib"] = (torch.cuda.max_memory_allocated() - base) / 2**30
        figures["memory_measured"] = True
    else:  # per problem-cell: state 50 B (int64 rows and places, 4 float64, 2 masks), an
        # iteration's temporaries ~70 B; the distances 12 B a pair (float64 and float32)
        per_cell = 50 + 70
        batch = figures["gpu_problems"] * cells * per_cell
        figures["memory_gib"] = (batch + cells * cells * 12) / 2**30
        figures["memory_measured"] = False
    return figures


def iteration_cost() -> tuple[float, float]:
    """One SMO iteration: kernels launched, and bytes moved per problem-cell (what full-batch
    operations write, ×3 for what they read)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    distances = torch.as_tensor(((x[:, None] - x[None]) ** 2).sum(-1), dtype=torch.float32)
    problems = [smo.DualProblem(np.arange(40), np.arange(40) < 20, 0.5, 1.0, 1.0)] * 8
    with _CountKernels(8 * 40) as counter:
        solution = smo.solve(distances, problems, max_iterations=64, check_every=64)
    return counter.kernels / solution.rounds, 3 * counter.full_bytes / solution.rounds / (8 * 40)


def dispatch_seconds() -> float:
    """Host seconds torch spends on one small elementwise operation (its dispatch)."""
    a = torch.zeros(8, dtype=torch.float64)
    start = time.perf_counter()
    for _ in range(20_000):
        torch.where(a > 0, a, a)
    return (time.perf_counter() - start) / 40_000


def single_problems(embeddings, tasks) -> None:
    """One inner split of every task × the class-balanced grid, each dual solved by libsvm and
    by the device solver on the CPU: iterations, and how far their decisions are apart."""
    x = embeddings[0].astype(np.float64)
    distances = squared_distances(torch.as_tensor(x), torch.as_tensor(x)).numpy()
    np.fill_diagonal(distances, 0.0)
    problems, fits = [], []
    for y, _ in tasks.values():
        train, test = inner_splits(y, 5, 0)[0]
        for candidate in ParameterGrid(svm(True).grid):
            gamma = rbf_gamma(candidate["gamma"], x.shape[1], lambda: x[train].var())  # noqa: B023
            kernel = np.exp(-gamma * distances)
            reference = SVC(
                kernel="precomputed", C=candidate["C"], class_weight=candidate["class_weight"]
            )
            reference.fit(kernel[np.ix_(train, train)], y[train])
            c_neg, c_pos = candidate["C"] * reference.class_weight_
            problems.append(smo.DualProblem(train, y[train], gamma, c_neg, c_pos))
            fits.append((reference, kernel[np.ix_(test, train)]))
    solution = smo.solve(torch.as_tensor(distances, dtype=torch.float32), problems)
    flips = cells = 0
    worst = 0.0
    for k, (reference, kernel) in enumerate(fits):
        size = len(problems[k].rows)
        ours = kernel @ solution.coef[k, :size].numpy() + float(solution.intercept[k])
        theirs = reference.decision_function(kernel)
        flips += int(((ours >= 0) != reference.predict(kernel)).sum())
        cells += len(ours)
        worst = max(worst, float(np.abs(ours - theirs).max()))
    libsvm_iterations = np.array([reference.n_iter_[0] for reference, _ in fits])
    print(
        f"  {len(problems)} single duals (one inner split per task, class-balanced grid): libsvm "
        f"iterations median {np.median(libsvm_iterations):.0f}, 90th percentile "
        f"{np.percentile(libsvm_iterations, 90):.0f}, largest {libsvm_iterations.max()}; device "
        f"solver largest {int(solution.iterations.max())}; held-out predictions that differ "
        f"{flips}/{cells}; largest decision-value gap {worst:.1e}"
    )


def print_agreement(name: str, agreement: Agreement) -> None:
    n = agreement.searches
    print(
        f"  {name}: same choice {agreement.same_choice}/{n} "
        f"({100 * agreement.same_choice / n:.1f} %; libsvm's inner-CV loss where not ≤ "
        f"{agreement.worst_choice_loss:.4f}), same validation MCC {agreement.same_validation}/{n} "
        f"(largest gap {agreement.worst_validation_gap:.4f}), objective gap ≤ "
        f"{agreement.worst_objective_gap:.1e}, KKT violation ≤ {agreement.worst_violation:.3e}; "
        f"libsvm {agreement.seconds['libsvm']:.1f} s, device {agreement.seconds['device']:.1f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/baron_mouse.h5ad"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--trained-epochs", type=int, default=100)
    parser.add_argument("--no-agreement", action="store_true")
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda:0" if torch.cuda.is_available() else "cpu"

    x, parts, tasks = baron_fold(args.data)
    embeddings = untrained(x, parts)
    grid = PAPER.evaluation.classifier.grid
    fits = len(tasks) * (5 * len(grid["gamma"]) * len(grid["C"]) + 1)
    print(
        f"Baron Mouse fold 0: {len(parts[0])} training, {len(parts[1])} validation, "
        f"{len(parts[2])} test cells × {embeddings[0].shape[1]}-wide untrained paper-width "
        f"embedding; {len(tasks)} tasks, the paper's grid: {fits} SVM fits a step"
    )
    seconds, results = {}, {}
    for name, solver, threads, where in (
        ("libsvm, 1 thread", "libsvm", 1, "cpu"),
        ("libsvm, 2 threads", "libsvm", 2, "cpu"),
        (f"device solver on {device}", "device", 2, device),
    ):
        on = tuple(torch.as_tensor(p) for p in (x[parts[0]], x[parts[1]], x[parts[2]]))
        scorer = ValidationScorer(
            *(t.to(where) for t in on),
            tasks,
            PAPER.evaluation.classifier,
            5,
            "mcc",
            0,
            solver=solver,
        )
        seconds[name], results[name] = step_seconds(scorer, embeddings, threads, args.repeats)
        print(f"  {name:28s} {seconds[name]:6.2f} s a step")
    one, two = seconds["libsvm, 1 thread"], seconds["libsvm, 2 threads"]
    print(f"  libsvm speed-up on 2 threads: {one / two:.2f}×")
    work = device_step(embeddings, tasks, device)
    kind = "measured" if work["memory_measured"] else "computed from its tensors"
    print(
        f"  device solver here: {work['problems']} problems, at most "
        f"{work['iterations_max']} iterations, {work['cell_steps'] / 1e9:.2f} G problem-cells "
        f"stepped; on a GPU one batch of {work['gpu_problems']} problems × {work['cells']} "
        f"cells: {work['memory_gib']:.2f} GiB ({kind})"
    )
    same = sum(
        results["libsvm, 2 threads"][t].score == results[f"device solver on {device}"][t].score
        for t in tasks
    )
    print(f"  validation MCC of this step, device = libsvm: {same}/{len(tasks)} tasks")

    if not args.no_agreement:
        print("\nagreement with libsvm (item 3 of the device-solver issue):")
        single_problems(embeddings, tasks)
        learnt = trained(x, parts, args.trained_epochs)
        total = Agreement()
        for embedding_name, emb in (("untrained paper-width", embeddings), ("trained", learnt)):
            for grid_name, spec in (("paper grid", svm()), ("class-balanced grid", svm(True))):
                agreement = compare_solvers(spec, emb[0], emb[1], tasks, 5, "mcc", 0, device)
                print_agreement(f"{embedding_name}, {grid_name}", agreement)
                total = total.add(agreement)
        print_agreement("all", total)

    project_h200(work, device)


def project_h200(work: dict, device: str) -> None:
    """The paper's SimCLR fold-job on an H200: its measured epochs plus 61 scoring steps, each
    the device solver's one CUDA-graph batch (the search and every candidate's refit, never
    compacted) sized from this step's measured iterations."""
    measured = json.loads(H200_FIGURES.read_text())
    epochs = PAPER.contrastive.epochs["simclr"]
    steps = len(validation_epochs(epochs, PAPER.contrastive.validate_every))
    kernels, traffic = iteration_cost()
    dispatch = dispatch_seconds()
    rounds = -(-work["iterations_max"] // 32) * 32 + 1
    cells = work["gpu_problems"] * work["cells"]
    latency = rounds * kernels * KERNEL_SECONDS
    memory = rounds * cells * traffic / H200_BANDWIDTH
    recording = 32 * kernels * dispatch  # the host dispatches each operation once to record
    step = latency + memory + recording
    libsvm_h200 = measured["fold_fp32"]["scoring_s_per_validation_step"]
    print(
        f"\nprojected on an {measured['gpu']} ({H200_FIGURES.name}): device step ≈ {step:.2f} s "
        f"= {rounds} iterations × {kernels:.0f} kernels × {KERNEL_SECONDS * 1e6:.1f} µs "
        f"({latency:.2f} s) + {work['gpu_problems']} problems × {work['cells']} cells × "
        f"{traffic:.0f} B an iteration at {H200_BANDWIDTH / 1e12:.1f} TB/s ({memory:.2f} s) + "
        f"recording the graph ({recording:.2f} s), against libsvm's {libsvm_h200:.2f} s "
        f"measured there ({libsvm_h200 / step:.1f}×)"
    )
    for precision in ("fp32", "bf16"):
        training = epochs * measured["throughput"][precision]["ms_per_epoch"] / 1e3
        scoring = steps * step
        print(
            f"  SimCLR fold-job, {precision}: training {training:.0f} s (measured epochs) + "
            f"scoring {steps} × {step:.2f} s = {scoring:.0f} s: {training + scoring:.0f} s "
            f"serial, {max(training, scoring):.0f} s if scoring fully overlaps (measured with "
            f"libsvm: {measured['fold_fp32']['wall_s']:.0f} s in fp32)"
        )
    if device.startswith("cuda"):
        print("  (a GPU is here: the device step measured above replaces this projection)")


if __name__ == "__main__":
    main()
