"""The approximate RBF SVM (past `evaluation.exact_max_cells`: Nystroem features and a linear
SVM, gsrcl/evaluate/nystroem_svm.py) against the exact one where both run, on 11 316 real cells.

    python3 bench/approximate_svm.py [--data ../shared/data/baron_mouse.h5ad] [--copies 6]
        [--tasks alpha ductal endothelial quiescent_stellate macrophage] [--folds 3]
        [--epochs 15] [--validate-every 5] [--components 200] [--threads 2]
        [--search-max-cells N] [--reseeds 2] [--out docs/approximate-svm.md]

Data: no file of ../shared/data holds 10 000 cells, so Baron Mouse (1 886 cells × 14 878 genes,
13 types) is tiled `--copies` times, each copy's counts thinned binomially (each UMI kept with
probability 0.5), and no two cells are equal (checked). The copies of one source cell always
fall in the same part of every split (validation, test folds, inner folds: stratified group
k-fold), so no classifier is scored on a sibling of a cell it was fitted on.
Protocol: the paper's split (20 % validation, then `--folds` folds), the paper's SVM grid and
5 inner folds scored by MCC, on the embeddings of a SimCLR encoder (random masking of the 2000
most variable genes, encoder 256-128, full batch, lr 1e-3) trained on each fold's training
cells. Each fold's last snapshot gives the test MCC per task; every snapshot of every fold
(every `--validate-every` epochs from 0) is scored as the runner scores a validation step
(`ValidationScorer`: grid on the training cells, MCC on the validation cells), once with the
exact search (libsvm on the precomputed kernel) and once with the approximation, and each
task's kept checkpoint (the best so far, the earliest on ties) is compared step by step.
The exact search is also run `--reseeds` more times with its inner folds shuffled by another
seed (1, 2, ...): an arbitrary choice of the protocol, so how often the exact search keeps the
same checkpoint as itself is the floor any other search's agreement with it is measured against.
Printed and written to `--out`: per task the test MCC of each (mean ± SE over folds) and
whether they agree within the SEs; the checkpoint kept and how often each search keeps the
exact one's; the exact and the approximate search's seconds and peak memory (the resident set's
growth during it, glibc told to return freed memory).
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import itertools
import statistics
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy import sparse
from sklearn.model_selection import StratifiedGroupKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.tiling import thinned_copies  # noqa: E402
from gsrcl.config.presets import svm  # noqa: E402
from gsrcl.config.settings import (  # noqa: E402
    APPROXIMATE_SOLVER,
    NYSTROEM_COMPONENTS,
    Approximation,
    Method,
)
from gsrcl.data import preprocess  # noqa: E402
from gsrcl.evaluate.metrics import binary_scores  # noqa: E402
from gsrcl.evaluate.workers import Workers  # noqa: E402
from gsrcl.model.augment import augmentation, two_views  # noqa: E402
from gsrcl.model.encoder import ContrastiveModel  # noqa: E402
from gsrcl.model.losses import nt_xent  # noqa: E402
from gsrcl.model.train import ValidationScorer, embed, validation_epochs  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"
TASKS = ["alpha", "ductal", "endothelial", "quiescent_stellate", "macrophage"]
METHOD = Method(
    loss="simclr", augmentation="masking", n_genes=2000, encoder=(256, 128), head=(128, 64)
)
KEEP = 0.5  # the chance each UMI of a copy is kept
INNER_FOLDS = 5
SEED = 0


def tiled(path: Path, copies: int) -> ad.AnnData:
    """`copies` thinned copies of every cell (obs: cell_type, source = the cell copied)."""
    source = ad.read_h5ad(path)
    counts = sparse.csr_matrix(source.X, dtype=np.float32)
    x = thinned_copies(counts, copies, KEEP, np.random.default_rng(SEED))
    rows = [x.indices[a:b].tobytes() + x.data[a:b].tobytes() for a, b in pairwise(x.indptr)]
    if len({hashlib.sha256(r).digest() for r in rows}) != x.shape[0]:
        raise SystemExit("two tiled cells are equal: thin more or tile less")
    obs = pd.DataFrame(
        {
            "cell_type": np.tile(source.obs["cell_type"].astype(str).to_numpy(), copies),
            "source": np.tile(np.arange(source.n_obs), copies),
        },
        index=[f"c{i}" for i in range(x.shape[0])],
    )
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=source.var_names.astype(str)))


def pairwise(values: np.ndarray):
    return zip(values[:-1], values[1:], strict=True)


def grouped_folds(labels: np.ndarray, groups: np.ndarray, k: int) -> list[np.ndarray]:
    """k stratified folds that never split a group (a source cell's copies)."""
    kfold = StratifiedGroupKFold(k, shuffle=True, random_state=SEED)
    return [test for _, test in kfold.split(np.zeros(len(labels)), labels, groups)]


def inner_splits(
    y: np.ndarray, groups: np.ndarray, seed: int = SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    kfold = StratifiedGroupKFold(INNER_FOLDS, shuffle=True, random_state=seed)
    return list(kfold.split(np.zeros(len(y)), y, groups))


class Peak:
    """Seconds and the resident set's peak growth (bytes) while the block runs."""

    def __enter__(self) -> Peak:
        Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) restarts here
        self.base, self.start = _status("VmRSS"), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.start
        self.bytes = _status("VmHWM") - self.base


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def score(
    solver: str, emb: np.ndarray, parts, labels, groups, args, workers, split_seed: int = SEED
) -> dict:
    """One validation step with this solver (its inner folds shuffled by `split_seed`): per
    task its validation MCC, test MCC and choice, and the step's seconds and peak memory."""
    train, validation, test = parts
    tasks = {t: (labels[train] == t, labels[validation] == t) for t in args.tasks}
    approximation = Approximation(None, args.components, args.search_max_cells)
    tensors = [torch.as_tensor(emb[p]) for p in parts]
    scorer = ValidationScorer(
        *tensors, tasks, svm(), INNER_FOLDS, "mcc", SEED, workers, solver, approximation
    )
    scorer.splits = {t: inner_splits(y, groups[train], split_seed) for t, (y, _) in tasks.items()}
    with Peak() as peak:
        scored = scorer.score(emb[train], emb[validation], emb[test])
    rows = {
        t: {
            "validation": s.score,
            "test": binary_scores(labels[test] == t, *s.test)["mcc"],
            "choice": (s.params["gamma"], s.params["C"]),
        }
        for t, s in scored.items()
    }
    return {"tasks": rows, "seconds": peak.seconds, "bytes": peak.bytes}


def kept(scores: list[float]) -> list[int]:
    """The checkpoint kept after each step: the best so far, the earliest on ties."""
    best, out = 0, []
    for step, value in enumerate(scores):
        if value > scores[best]:
            best = step
        out.append(best)
    return out


def run(args) -> dict:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD fixed: freed arrays leave the resident set
    torch.set_num_threads(args.threads)
    adata = tiled(args.data, args.copies)
    labels = adata.obs["cell_type"].to_numpy(dtype=str)
    groups = adata.obs["source"].to_numpy()
    print(f"{adata.n_obs} cells × {adata.n_vars} genes ({args.copies} thinned copies)", flush=True)
    validation = grouped_folds(labels, groups, 5)[0]  # 20 % of the cells
    rest = np.setdiff1d(np.arange(adata.n_obs), validation)
    folds = [rest[f] for f in grouped_folds(labels[rest], groups[rest], args.folds)]
    epochs = validation_epochs(args.epochs, args.validate_every)
    # per search: per fold the steps' results, epoch order
    results = {name: [] for name, _, _ in searches(args)}
    with Workers(args.threads) as workers:
        for k, test in enumerate(folds):
            train = np.setdiff1d(rest, test)
            fitted = preprocess.fit_masking(adata[train], "counts", METHOD.n_genes)
            x = torch.as_tensor(fitted.transform(adata))
            embeddings = snapshots(x, train, epochs)
            for name, solver, seed in searches(args):
                steps = []
                for epoch in epochs:
                    parts = (train, validation, test)
                    emb = embeddings[epoch]
                    step = score(solver, emb, parts, labels, groups, args, workers, seed)
                    steps.append({"epoch": epoch, **step})
                    print(
                        f"fold {k} epoch {epoch} {name}: {step['seconds']:.0f} s, "
                        f"{step['bytes'] / 2**20:.0f} MiB; "
                        + ", ".join(
                            f"{t} {r['validation']:.3f}/{r['test']:.3f}"
                            for t, r in step["tasks"].items()
                        ),
                        flush=True,
                    )
                results[name].append(steps)
    cells = {"train": len(np.setdiff1d(rest, folds[0])), "validation": len(validation)}
    return {"results": results, "cells": cells, "n": adata.n_obs, "genes": adata.n_vars}


def searches(args) -> list[tuple[str, str, int]]:
    """(name, solver, inner folds' seed) of each search run on every snapshot."""
    reseeded = [(reseeded_name(s), "libsvm", s) for s in range(SEED + 1, SEED + 1 + args.reseeds)]
    return [("exact", "libsvm", SEED), ("approximate", APPROXIMATE_SOLVER, SEED), *reseeded]


def reseeded_name(seed: int) -> str:
    return f"exact, inner folds seed {seed}"


def snapshots(x: torch.Tensor, train: np.ndarray, epochs: list[int]) -> dict[int, np.ndarray]:
    """Every cell's embedding at each epoch of an encoder trained on the training cells."""
    torch.manual_seed(SEED)
    generator = torch.Generator().manual_seed(SEED)
    model = ContrastiveModel(x.shape[1], METHOD.encoder, METHOD.head, False, 0.02)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    augment, views, out = augmentation(METHOD, generator), None, {}
    x_train = x[train]
    for epoch in range(max(epochs) + 1):
        if epoch in epochs:
            out[epoch] = embed(model.encoder, x)
        if epoch == max(epochs):
            return out
        model.train()
        views = two_views(augment, x_train, views)
        z1, z2 = model(views).chunk(2)
        loss = nt_xent(z1, z2, 0.07)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0
    return statistics.fmean(values), se


def summarize(out: dict, args) -> dict:
    """The figures: per task test MCC of each (mean, SE) over folds; each fold's kept
    checkpoints step by step; seconds and peak memory of each search."""
    results, tasks = out["results"], args.tasks
    rows = []
    for t in tasks:
        exact = [fold[-1]["tasks"][t] for fold in results["exact"]]
        approx = [fold[-1]["tasks"][t] for fold in results["approximate"]]
        (me, se), (ma, sa) = (
            mean_se([r["test"] for r in exact]),
            mean_se([r["test"] for r in approx]),
        )
        same = sum(e["choice"] == a["choice"] for e, a in zip(exact, approx, strict=True))
        rows.append(
            {
                "task": t,
                "exact": (me, se),
                "approximate": (ma, sa),
                "delta": ma - me,
                "within": abs(ma - me) <= max(se, sa),
                "same_choice": same,
                "folds": len(exact),
            }
        )
    checkpoints = []
    for t, k in itertools.product(tasks, range(len(results["exact"]))):
        scores = {
            name: [step["tasks"][t]["validation"] for step in results[name][k]] for name in results
        }
        kept_by = {name: kept(values) for name, values in scores.items()}
        checkpoints.append(
            {
                "task": t,
                "fold": k,
                "epochs": [step["epoch"] for step in results["exact"][k]],
                "kept": kept_by,
                # against the exact search: per other search, step by step (the first step,
                # with one candidate, left out) whether it kept the same snapshot, and what the
                # exact search's own validation MCC says its choice loses (0: the same or a tie)
                "agree": {n: _agree(kept_by["exact"], kept_by[n]) for n in scores},
                "lost": {n: _lost(scores["exact"], kept_by["exact"], kept_by[n]) for n in scores},
                "gap": statistics.fmean(
                    abs(e - a) for e, a in zip(scores["exact"], scores["approximate"], strict=True)
                ),
            }
        )
    agreement = {
        name: {
            "same": [v for c in checkpoints for v in c["agree"][name]],
            "lost": [v for c in checkpoints for v in c["lost"][name]],
        }
        for name in results
        if name != "exact"
    }
    cost = {}
    for name, folds in results.items():
        steps = [step for fold in folds for step in fold]
        cost[name] = {
            "seconds": statistics.fmean(s["seconds"] for s in steps) / len(tasks),
            "peak": max(s["bytes"] for s in steps),
            "steps": len(steps),
        }
    return {"rows": rows, "checkpoints": checkpoints, "agreement": agreement, "cost": cost}


def _agree(exact: list[int], other: list[int]) -> list[bool]:
    return [e == o for e, o in zip(exact, other, strict=True)][1:]


def _lost(scores: list[float], exact: list[int], other: list[int]) -> list[float]:
    return [scores[e] - scores[o] for e, o in zip(exact, other, strict=True)][1:]


def page(out: dict, figures: dict, args, command: str, wall: float, load: str) -> str:
    rows, checkpoints, cost = figures["rows"], figures["checkpoints"], figures["cost"]
    agreement = figures["agreement"]
    steps, lost = agreement["approximate"]["same"], agreement["approximate"]["lost"]
    others = [name for name in agreement if name != "approximate"]  # the reseeded exact ones
    within = sum(r["within"] for r in rows)
    e, a = cost["exact"], cost["approximate"]
    lines = [
        "# The approximate RBF SVM against the exact one",
        "",
        "Past `evaluation.exact_max_cells` training cells (default 9000) an RBF SVC's grid is "
        "searched on Nystroem features with a linear SVM (`gsrcl/evaluate/nystroem_svm.py`) "
        "instead of cell × cell kernels. This page is written by `bench/approximate_svm.py`, "
        "which runs both where both fit and compares them.",
        "",
        f"    {command}",
        "",
        f"{time.strftime('%Y-%m-%d')}, {args.threads} fit threads on a 2-core machine shared with "
        f"other work (load average {load}); {wall / 60:.0f} min.",
        "",
        "## Data and protocol",
        "",
        f"`{args.data.name}` of `../shared/data` (Baron et al. 2016, mouse pancreas, "
        f"{out['n'] // args.copies} cells × {out['genes']} genes, 13 types) tiled "
        f"{args.copies} times: **{out['n']} cells**, each copy's counts thinned binomially "
        f"(each UMI kept with probability {KEEP}), no two cells equal. The copies of a source "
        "cell stay together in every split (validation, test folds, inner folds: stratified "
        "group k-fold), so no classifier is tested on a sibling of a cell it was fitted on.",
        f"The paper's split: 20 % validation, then {args.folds} test folds of the rest "
        f"({out['cells']['train']} training and {out['cells']['validation']} validation cells "
        f"in fold 0); the paper's SVM grid (gamma ∈ {{scale, 1e-4, 1e-3, 1e-2}} × "
        f"C ∈ {{0.1, 1, 10, 100}}), {INNER_FOLDS} inner folds, MCC; on the embeddings of a "
        f"SimCLR encoder (masking, {METHOD.n_genes} most variable genes, encoder "
        f"{'-'.join(map(str, METHOD.encoder))}, full batch, lr 1e-3) trained "
        f"{args.epochs} epochs on each fold's training cells. Tasks: {', '.join(args.tasks)}. "
        f"Exact: libsvm on the precomputed kernel (the runner's `libsvm` solver); "
        f"approximate: the `nystroem` solver with m = {args.components}"
        + (
            f", its grid searched on a stratified sample of {args.search_max_cells} of the "
            "training cells and the choice refit on all (`evaluation.search_max_cells`)."
            if args.search_max_cells and args.search_max_cells < out["cells"]["train"]
            else ", its grid searched on every training cell."
        ),
        "",
        "## Test MCC per task (last snapshot, mean ± SE over folds)",
        "",
        "| task | exact | approximate | Δ | within the SEs | same choice |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['exact'][0]:.3f} ± {r['exact'][1]:.3f} | "
            f"{r['approximate'][0]:.3f} ± {r['approximate'][1]:.3f} | {r['delta']:+.3f} | "
            f"{'yes' if r['within'] else 'no'} | {r['same_choice']} of {r['folds']} folds |"
        )
    lines += [
        "",
        f"Within the SEs (|Δ| ≤ the larger of the two SEs): **{within} of {len(rows)} tasks**.",
        "",
        f"## Checkpoint kept (every fold, a validation step every {args.validate_every} epochs)",
        "",
        "| task | fold | epochs | kept, exact | kept, approximate | "
        + "".join(f"kept, {name} | " for name in others)
        + "mean validation MCC gap | largest loss of the approximate choice |",
        "|---|---|---|---|---|" + "---|" * len(others) + "---|---|",
    ]
    for c in checkpoints:
        epochs = c["epochs"]
        names = ("exact", *agreement)
        kept_cells = [", ".join(str(epochs[i]) for i in c["kept"][n]) for n in names]
        lines.append(
            f"| {c['task']} | {c['fold']} | {', '.join(map(str, epochs))} | "
            + " | ".join(kept_cells)
            + f" | {c['gap']:.3f} | {max(c['lost']['approximate'], default=0.0):.3f} |"
        )
    final = sum(c["kept"]["exact"][-1] == c["kept"]["approximate"][-1] for c in checkpoints)
    lines += [
        "",
        f"Same checkpoint kept: **{sum(steps)} of {len(steps)} steps** "
        f"({sum(steps) / max(len(steps), 1):.0%}; the first step, with one candidate, not "
        f"counted); same final choice for {final} of {len(checkpoints)} tasks and folds. Where "
        f"they differ, the approximate choice scores at most {max(lost, default=0.0):.3f} below "
        f"the exact one by the exact search's own validation MCC (the loss column; mean over "
        f"every step {statistics.fmean(lost or [0.0]):.4f}).",
        "",
        "## How often the exact search keeps its own checkpoint",
        "",
        "Each search's kept checkpoints against the exact search's, over the same steps. "
        + (
            "The reseeded exact searches differ from it only in the shuffle of their inner "
            "folds, an arbitrary choice of the protocol: their agreement is this measure's "
            "noise floor, what the exact search itself reaches when only that seed changes. "
            if others
            else ""
        )
        + "A tie: the search kept another snapshot that the exact search scores the same "
        "validation MCC.",
        "",
        "| search | same checkpoint | the same or a tie | mean loss | largest loss |",
        "|---|---|---|---|---|",
    ]
    for name, against in agreement.items():
        same, losses = sum(against["same"]), against["lost"]
        ties, n = sum(v <= 0.0 for v in losses), max(len(against["same"]), 1)
        lines.append(
            f"| {name} | {same} of {n} ({same / n:.0%}) | {ties} of {n} ({ties / n:.0%}) | "
            f"{statistics.fmean(losses or [0.0]):.4f} | {max(losses, default=0.0):.3f} |"
        )
    lines += [
        "",
        "## Cost (one validation step: every task's grid search, refit and predictions)",
        "",
        "| solver | seconds per task | peak memory of a step | steps |",
        "|---|---|---|---|",
        f"| exact | {e['seconds']:.1f} | {e['peak'] / 2**20:.0f} MiB | {e['steps']} |",
        f"| approximate | {a['seconds']:.1f} | {a['peak'] / 2**20:.0f} MiB | {a['steps']} |",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--copies", type=int, default=6)
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--validate-every", type=int, default=5)
    parser.add_argument("--components", type=int, default=NYSTROEM_COMPONENTS)
    parser.add_argument("--threads", type=int, default=2)
    # the approximation's search on a sample of this many training cells (None: on all)
    parser.add_argument("--search-max-cells", type=int, default=None)
    # exact searches with their inner folds shuffled by seeds 1..N: the exact search's own
    # agreement with itself
    parser.add_argument("--reseeds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "approximate-svm.md")
    args = parser.parse_args()
    command = "python3 bench/approximate_svm.py " + " ".join(sys.argv[1:])
    load = Path("/proc/loadavg").read_text().split()[0]
    start = time.perf_counter()
    out = run(args)
    figures = summarize(out, args)
    wall = time.perf_counter() - start
    load += f" → {Path('/proc/loadavg').read_text().split()[0]}"
    text = page(out, figures, args, command.strip(), wall, load)
    print("\n" + text)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
