"""Does GsRCL help? Every method on every cell type of every dataset, with one seed, on 2 CPU cores.

    python3 bench/accuracy.py            # runs (or resumes) the study, writes docs/results.md

Datasets: scanpy's pbmc68k_reduced and every .h5ad of ../shared/data (raw counts, labels in
obs['cell_type']). Methods: the paper's SVM on log1p expression, a class-balanced SVM and a
class-balanced logistic regression (the strongest simple baselines), GsRCL SimCLR + Gaussian noise,
GsRCL SupCon + Gaussian noise, and random gene masking (SimCLR, 1000 genes). The CPU protocol
(`PROTOCOL` below; why these numbers: docs/cpu-protocol.md) keeps the paper's split, folds, SVM
grid, noise and validation interval, and shortens training. Results go to results/accuracy/ (a
rerun resumes); the tables are printed and written to docs/results.md.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsrcl.config.presets import PAPER, PBMC68K, STRONG_EVALUATION, masking  # noqa: E402
from gsrcl.config.settings import Compute, Dataset, Experiment, Method  # noqa: E402
from gsrcl.report import page as report  # noqa: E402
from gsrcl.runner.pipeline import run_experiment  # noqa: E402
from gsrcl.runner.run_folder import RunFolder  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
WIDTH = {"encoder": (512, 256), "head": (256, 128)}
PROTOCOL = dict(
    methods=(
        Method(loss="simclr", augmentation="noise", **WIDTH),
        Method(loss="supcon", augmentation="noise", **WIDTH),
        masking(1000),
    ),
    contrastive=dataclasses.replace(
        PAPER.contrastive, epochs={"simclr": 100, "supcon": 20}, validate_every=50, lr=1e-3
    ),
    evaluation=STRONG_EVALUATION,
    compute=Compute(devices="cpu", cpu_workers=2),
    seed=0,
)
BASELINE = "baseline-svm"  # the paper's comparison
DIFFICULT = 0.9  # the paper's line: a task is difficult when the baseline's MCC is below it


def datasets() -> tuple[Dataset, ...]:
    """pbmc68k_reduced and every .h5ad of ../shared/data (labels in obs['cell_type'])."""
    shared = (
        Dataset(name=path.stem, path=str(path), labels="cell_type")
        for path in sorted(SHARED.glob("*.h5ad"))
    )
    return (PBMC68K, *shared)


def experiment() -> Experiment:
    return Experiment(
        name="accuracy",
        datasets=datasets(),
        results_dir=str(ROOT / "results"),
        **PROTOCOL,
    ).validate()


def wins(summary: pd.DataFrame, methods: list[str]) -> str:
    """Per method: tasks where its mean MCC beats the paper's baseline and the best baseline."""
    mcc = summary[summary["method"] != ""].pivot_table(
        index=["dataset", "task"], columns="method", values="mcc_mean", sort=False
    )
    baselines = [m for m in methods if m.startswith("baseline-")]
    best_baseline = mcc[baselines].max(axis=1)
    difficult = mcc[BASELINE] < DIFFICULT
    lines = [
        "| method | beats the paper's SVM | beats the best baseline | difficult: beats the "
        "paper's SVM | difficult: beats the best baseline |",
        "|---|---|---|---|---|",
    ]
    n, d = len(mcc), int(difficult.sum())
    for method in methods:
        if method == BASELINE:
            continue
        over_svm = mcc[method] > mcc[BASELINE]
        over_best = mcc[method] > best_baseline
        best, best_difficult = (
            ("–", "–")  # a baseline is part of the best baseline
            if method in baselines
            else (f"{int(over_best.sum())} / {n}", f"{int(over_best[difficult].sum())} / {d}")
        )
        lines.append(
            f"| {method} | {int(over_svm.sum())} / {n} | {best} | "
            f"{int(over_svm[difficult].sum())} / {d} | {best_difficult} |"
        )
    return "\n".join(lines)


def results_page(exp: Experiment, summary: pd.DataFrame, minutes: float) -> str:
    methods = exp.method_names
    datasets = ", ".join(d.name for d in exp.datasets)
    contrastive = exp.contrastive
    parts = [
        "# GsRCL against the baselines on real data",
        "",
        f"Produced by `python3 bench/accuracy.py` in {minutes:.0f} min of wall time on 2 CPU "
        "cores (summed over the invocations that made the results). Datasets: "
        f"{datasets}. Seed {exp.seed}; {exp.split.folds}-fold CV after a "
        f"{exp.split.validation_fraction:.0%} validation hold-out; mean ± standard error over "
        "folds; every split (hold-out, folds, the inner CV of every grid search) is a seeded "
        "shuffle of the cells in id order, so the file's row order does not matter. "
        "Protocol: encoder "
        f"{WIDTH['encoder']}, head {WIDTH['head']}, SimCLR {contrastive.epochs['simclr']} / "
        f"SupCon {contrastive.epochs['supcon']} epochs, lr {contrastive.lr}, noise σ "
        f"{exp.methods[0].noise_sigma}, validation every {contrastive.validate_every} epochs; "
        "masking with 1000 genes and the paper's small masking encoder. Baselines: the paper's "
        "SVM (`baseline-svm`), the same grid with class_weight ∈ {None, balanced} searched too "
        "(`baseline-svm-or-balanced`), "
        "and a class-balanced logistic regression on log-normalised expression "
        "(`baseline-logreg`). Why this protocol: [cpu-protocol.md](cpu-protocol.md).",
        "",
        "## Tasks won (mean MCC over folds higher than the baseline's)",
        "",
        f"Difficult tasks: the paper's SVM has MCC < {DIFFICULT}.",
        "",
        wins(summary, methods),
    ]
    for metric in ("mcc", "f1", "ap"):
        parts += ["", f"## {metric.upper()} (best per row in bold)", ""]
        parts.append(report.markdown_table(summary, metric, methods))
    skipped = summary[summary["method"] == ""]
    if not skipped.empty:
        parts += ["", "## Not scored", ""]
        parts += [f"- {r.dataset} / {r.task}: {r.note}" for r in skipped.itertuples()]
    return "\n".join(parts) + "\n"


def _wall_minutes(run_dir: Path, seconds: float) -> float:
    """Wall time summed over the invocations that made these results (a resumed run adds on)."""
    path = run_dir / "wall_seconds.json"
    total = seconds + (json.loads(path.read_text())["seconds"] if path.exists() else 0.0)
    path.write_text(json.dumps({"seconds": total}))
    return total / 60


def main() -> None:
    exp = experiment()
    start = time.perf_counter()
    status = run_experiment(exp, log=print)
    run = RunFolder.of(exp)
    minutes = _wall_minutes(run.path, time.perf_counter() - start)
    summary = run.read_summary()
    page = results_page(exp, summary, minutes)
    (ROOT / "docs" / "results.md").write_text(page)
    print("\n" + page)
    print(f"written: {ROOT / 'docs' / 'results.md'}")
    sys.exit(status)


if __name__ == "__main__":
    main()
