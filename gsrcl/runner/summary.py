"""Scores over folds: `summary.csv` (dataset × task × method, MCC / F1 / AP mean ± standard error)
from the done jobs of a run, and the terminal's table of it. A row whose classifier was fitted
approximately (too many training cells for the exact SVM) says so in its note."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from gsrcl.runner.run_folder import JobFolder, RunFolder

METRICS = ("mcc", "f1", "ap")
FITTED = "fitted"  # a metrics row's word on an approximate classifier (jobs.run_job)
APPROXIMATE = "classifier approximate"  # how a summary note about one begins


def summarize(
    run: RunFolder, datasets: list[str], done: Iterable[JobFolder], method_order: list[str]
) -> pd.DataFrame:
    """Mean ± standard error over folds per dataset × task × method, skipped tasks included.
    `done`: the jobs whose results count (done with the current config, files intact)."""
    rows = [row for folder in done for row in folder.metrics()]
    frame = pd.DataFrame(rows, columns=["dataset", "task", "method", "fold", *METRICS, FITTED])
    frame["task"] = frame["task"].astype(str)
    grouped = frame.groupby(["dataset", "task", "method"], sort=False)
    summary = grouped.agg(folds=("fold", "nunique"))
    for metric in METRICS:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_se"] = grouped[metric].sem(ddof=1).fillna(0.0)
    summary[FITTED] = grouped[FITTED].agg(_fitted)
    summary = summary.reset_index()
    summary = _tasks(run, datasets).merge(summary, on=["dataset", "task"], how="left")
    unscored = summary["method"].isna()
    summary["method"] = summary["method"].fillna("")
    summary.loc[unscored & (summary["note"] == ""), "note"] = "no finished job"
    approximate = summary[FITTED].fillna("") != ""
    summary.loc[approximate, "note"] = summary.loc[approximate, FITTED]
    summary = summary.drop(columns=FITTED)
    order = {m: i for i, m in enumerate(method_order)}
    summary["_order"] = summary["method"].map(order).fillna(len(order))
    summary = summary.sort_values(["_dataset", "_task", "_order"], kind="stable")
    return summary.drop(columns=["_dataset", "_task", "_order"]).round(4).reset_index(drop=True)


def _fitted(folds: pd.Series) -> str:
    """A row's note on an approximate classifier: how, and in how many of its folds when not in
    all ("" when every fold was exact)."""
    named = folds.dropna()
    named = named[named != ""]
    if named.empty:
        return ""
    where = "" if len(named) == len(folds) else f" in {len(named)} of {len(folds)} folds"
    return f"classifier {named.iloc[0]}{where}"


def approximate_methods(summary: pd.DataFrame) -> list[str]:
    """One line per dataset × method whose classifier was fitted approximately, for reports."""
    scored = summary[(summary["method"] != "") & summary["note"].str.startswith(APPROXIMATE)]
    lines = scored.drop_duplicates(["dataset", "method", "note"])
    return [f"{r.dataset} / {r.method}: {r.note}" for r in lines.itertuples()]


def _tasks(run: RunFolder, datasets: list[str]) -> pd.DataFrame:
    """Every task of every dataset (from the splits files), in plan order, with skip reasons."""
    rows = []
    for d, dataset in enumerate(datasets):
        saved = run.read_splits(dataset) or {"tasks": []}
        for t, task in enumerate(saved["tasks"]):
            rows.append(
                {
                    "dataset": dataset,
                    "task": str(task["name"]),
                    "cells": task["cells"],
                    "note": task["reason"],
                    "_dataset": d,
                    "_task": t,
                }
            )
    columns = ["dataset", "task", "cells", "note", "_dataset", "_task"]
    return pd.DataFrame(rows, columns=columns)


def mcc_table(summary: pd.DataFrame) -> str:
    """A compact task × method table of mean MCC for the terminal."""
    scored = summary[summary["method"] != ""]
    lines = []
    for dataset, part in scored.groupby("dataset", sort=False):
        table = part.pivot_table(
            index="task", columns="method", values="mcc_mean", sort=False
        ).reindex(columns=part["method"].unique())
        lines.append(f"{dataset}: MCC, mean over folds\n{table.to_string(float_format='%.3f')}")
    skipped = summary[summary["method"] == ""]
    for _, row in skipped.iterrows():
        lines.append(f"{row['dataset']}: {row['task']} not scored: {row['note']}")
    approximate = approximate_methods(summary)
    if approximate:
        lines.append("\n".join(approximate))
    return "\n\n".join(lines)
