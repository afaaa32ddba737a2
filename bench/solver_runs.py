"""A whole run with each SVM solver, compared: does the device solver give the libsvm run's
results? (Item 3 of the device-solver issue: every summary MCC within one standard error, and at
least 90 % of (method, fold, task) checkpoint choices at the same epoch.)

    python3 bench/solver_runs.py [--config configs/baron_mouse.py] [--results /tmp/solver-runs]
                                 [--compare-only]

Runs `runner.py --config CONFIG` twice, with `evaluation.solver` "libsvm" and "device" (on this
machine's device: the CPU here, where the device solver is slower than libsvm; it is there for
GPUs), into RESULTS/libsvm and RESULTS/device (a rerun resumes), then compares their
summary.csv and the epochs each contrastive job chose. `--compare-only` compares what the two
folders hold (for example runs made with `--set evaluation.solver=...` by hand, or a subset).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = ("libsvm", "device")


def run(config: Path, results: Path) -> None:
    for solver in SOLVERS:
        command = [sys.executable, str(ROOT / "runner.py"), "--config", str(config)]
        command += ["--set", f"results_dir={str(results / solver)!r}"]
        command += ["--set", f"evaluation.solver={solver!r}"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, cwd=ROOT, check=True)


def experiment_folder(results: Path) -> Path:
    return next(p.parent for p in results.glob("*/experiment.json"))


def chosen_epochs(folder: Path) -> pd.DataFrame:
    rows = []
    for path in folder.glob("jobs/*/*/fold-*/metrics.json"):
        for row in json.loads(path.read_text())["rows"]:
            if "epoch" in row:
                rows.append({k: row[k] for k in ("dataset", "method", "fold", "task", "epoch")})
    return pd.DataFrame(rows)


def job_seconds(folder: Path) -> dict[str, float]:
    """Seconds the jobs of each method took, from their metrics.json."""
    totals: dict[str, float] = {}
    for path in folder.glob("jobs/*/*/fold-*/metrics.json"):
        method = path.parent.parent.name
        seconds = json.loads(path.read_text())["seconds"]["total"]
        totals[method] = round(totals.get(method, 0.0) + seconds)
    return totals


def compare(results: Path) -> None:
    folders = {solver: experiment_folder(results / solver) for solver in SOLVERS}
    summaries = {s: pd.read_csv(folders[s] / "summary.csv") for s in SOLVERS}
    keys = ["dataset", "task", "method"]
    both = summaries["libsvm"].merge(summaries["device"], on=keys, suffixes=("_libsvm", ""))
    gap = (both["mcc_mean"] - both["mcc_mean_libsvm"]).abs()
    se = both[["mcc_se", "mcc_se_libsvm"]].max(axis=1)
    both = both.assign(gap=gap, within=gap <= se)
    print(f"summary rows compared: {len(both)}")
    for method, rows in both.groupby("method", sort=False):
        print(
            f"  {method:26s} MCC within one SE: {int(rows['within'].sum())}/{len(rows)}, "
            f"identical {int((rows['gap'] == 0).sum())}/{len(rows)}, largest gap "
            f"{rows['gap'].max():.4f}, mean MCC libsvm {rows['mcc_mean_libsvm'].mean():.4f} "
            f"device {rows['mcc_mean'].mean():.4f}"
        )
    outside = both[~both["within"]]
    for _, row in outside.iterrows():
        print(
            f"  outside one SE: {row['method']} {row['task']}: libsvm {row['mcc_mean_libsvm']:.4f}"
            f" ± {row['mcc_se_libsvm']:.4f}, device {row['mcc_mean']:.4f} ± {row['mcc_se']:.4f}"
        )
    epochs = chosen_epochs(folders["libsvm"]).merge(
        chosen_epochs(folders["device"]), on=["dataset", "method", "fold", "task"]
    )
    same = epochs["epoch_x"] == epochs["epoch_y"]
    print(
        f"checkpoint epochs chosen alike: {int(same.sum())}/{len(epochs)} "
        f"({100 * same.mean():.1f} %) of (method, fold, task)"
    )
    seconds = {solver: job_seconds(folders[solver]) for solver in SOLVERS}
    print(f"job seconds by method: {json.dumps(seconds)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "baron_mouse.py")
    parser.add_argument("--results", type=Path, default=Path("/tmp/solver-runs"))
    parser.add_argument("--compare-only", action="store_true")
    args = parser.parse_args()
    if not args.compare_only:
        run(args.config.resolve(), args.results.resolve())
    compare(args.results)


if __name__ == "__main__":
    main()
