"""The results folder: layout, atomic writes, completion markers, manifest and summary.

```
results/<experiment>/
  experiment.json        resolved config, package versions, devices, seed
  splits/<dataset>.json  validation cells, fold assignment, tasks (with reasons for skipped ones)
  jobs/<dataset>/<method>/fold-<k>/   metrics.json, loss.csv, validation.csv, predictions.csv,
                                      encoder-<task>.pt (tasks sharing a snapshot share
                                      the file: hard links), DONE (written last) | error.txt
  manifest.csv           one row per job: status, device, seconds
  summary.csv            dataset × task × method: MCC / F1 / AP mean ± SE over folds
```
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

DONE = "DONE"
METRICS = ("mcc", "f1", "ap")


def atomic_write(path: Path, write) -> None:
    """`write(tmp_path)` then rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def link_or_copy(source: Path, target: Path) -> None:
    """A second name for a file: a hard link where the file system has them, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=_plain)))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple | set):
        return list(value)
    return str(value)


def safe_name(name: str) -> str:
    """A cell-type name usable as a file name ('CD4+/CD25 T Reg' → 'CD4+_CD25_T_Reg')."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)


# ---- completion markers ----


def mark_done(job_dir: Path, fingerprint: str) -> None:
    write_json(job_dir / DONE, {"fingerprint": fingerprint})


def is_done(job_dir: Path, fingerprint: str) -> bool:
    marker = job_dir / DONE
    if not marker.exists():
        return False
    try:
        return json.loads(marker.read_text()).get("fingerprint") == fingerprint
    except (json.JSONDecodeError, OSError):
        return False


def clear_job(job_dir: Path) -> None:
    """Remove a previous attempt, marker first, so no stale file is ever trusted."""
    (job_dir / DONE).unlink(missing_ok=True)
    if job_dir.exists():
        for item in job_dir.iterdir():
            item.unlink()
    job_dir.mkdir(parents=True, exist_ok=True)


# ---- summary ----


def summarize(run_dir: Path, job_dirs: Iterable[Path], method_order: list[str]) -> pd.DataFrame:
    """Mean ± standard error over folds per dataset × task × method, skipped tasks included."""
    rows = [
        row
        for job_dir in job_dirs
        if (job_dir / DONE).exists()
        for row in json.loads((job_dir / "metrics.json").read_text())["rows"]
    ]
    frame = pd.DataFrame(rows, columns=["dataset", "task", "method", "fold", *METRICS])
    grouped = frame.groupby(["dataset", "task", "method"], sort=False)
    summary = grouped.agg(folds=("fold", "nunique"))
    for metric in METRICS:
        summary[f"{metric}_mean"] = grouped[metric].mean()
        summary[f"{metric}_se"] = grouped[metric].sem(ddof=1).fillna(0.0)
    summary = summary.reset_index()
    tasks = _tasks(run_dir)
    summary = tasks.merge(summary, on=["dataset", "task"], how="left")
    unscored = summary["method"].isna()
    summary["method"] = summary["method"].fillna("")
    summary.loc[unscored & (summary["note"] == ""), "note"] = "no finished job"
    order = {m: i for i, m in enumerate(method_order)}
    summary["_order"] = summary["method"].map(order).fillna(len(order))
    summary = summary.sort_values(["_dataset", "_task", "_order"], kind="stable")
    return summary.drop(columns=["_dataset", "_task", "_order"]).round(4).reset_index(drop=True)


def read_summary(path: Path) -> pd.DataFrame:
    """summary.csv with its numbers as numbers and unscored tasks' empty cells as "" / NaN."""
    summary = pd.read_csv(path, keep_default_na=False)
    for column in [c for c in summary if c.endswith(("_mean", "_se"))] + ["folds"]:
        summary[column] = pd.to_numeric(summary[column], errors="coerce")
    return summary


def _tasks(run_dir: Path) -> pd.DataFrame:
    """Every task of every dataset (from the splits files), in plan order, with skip reasons."""
    rows = []
    for d, path in enumerate(sorted((run_dir / "splits").glob("*.json"))):
        saved = json.loads(path.read_text())
        for t, task in enumerate(saved["tasks"]):
            rows.append(
                {
                    "dataset": saved["dataset"],
                    "task": task["name"],
                    "cells": task["cells"],
                    "note": task["reason"],
                    "_dataset": d,
                    "_task": t,
                }
            )
    return pd.DataFrame(rows)


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
