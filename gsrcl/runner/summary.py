"""Scores over folds: `summary.csv` (dataset × task × method, MCC / F1 / AP mean ± standard error)
from the done jobs of a run, and the terminal's table of it."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from gsrcl.runner.run_folder import JobFolder, RunFolder

METRICS = ("mcc", "f1", "ap")


def summarize(
    run: RunFolder, datasets: list[str], done: Iterable[JobFolder], method_order: list[str]
) -> pd.DataFrame:
    """Mean ± standard error over folds per dataset × task × method, skipped tasks included.
    `done`: the jobs whose results count (done with the current config, files intact)."""
    rows = [row for folder in done for row in folder.metrics()]
    frame = pd.DataFrame(rows, columns=["dataset", "task", "method", "fold", *METRICS])
    frame["task"] = frame["task"].astype(str)
    grouped = frame.groupby(["dataset", "task", "method"], sort=False)
    summary = grouped.agg(folds=("fold", "nunique"))
    for metric in METRICS:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_se"] = grouped[metric].sem(ddof=1).fillna(0.0)
    summary = summary.reset_index()
    summary = _tasks(run, datasets).merge(summary, on=["dataset", "task"], how="left")
    unscored = summary["method"].isna()
    summary["method"] = summary["method"].fillna("")
    summary.loc[unscored & (summary["note"] == ""), "note"] = "no finished job"
    order = {m: i for i, m in enumerate(method_order)}
    summary["_order"] = summary["method"].map(order).fillna(len(order))
    summary = summary.sort_values(["_dataset", "_task", "_order"], kind="stable")
    return summary.drop(columns=["_dataset", "_task", "_order"]).round(4).reset_index(drop=True)


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
    return "\n\n".join(lines)
