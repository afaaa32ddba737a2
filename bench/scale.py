"""How the cost grows with the cells (issue 40): a job, `--check` and annotate, 2 000 → 200 000.

    python3 bench/scale.py                          # 2k, 5k, 10k, 20k, 50k cells
    python3 bench/scale.py --sizes 100000 200000    # more sizes (the page keeps earlier ones)
    python3 bench/scale.py --runs 50000:5 200000:2  # whole runs: CELLS:FOLDS
    python3 bench/scale.py --checks 200000          # `--check` alone at these sizes

Data: Baron Mouse (`../shared/data/baron_mouse.h5ad`, 1886 cells, 13 types, 2 mice) on its 2000
genes of most counts, tiled to N cells, each copy's counts thinned (binomial, p = 0.8) so no two
cells are equal; made once per size under results/scale-bench/data.

Config, the issue's small one: the paper's SVM baseline and SimCLR with Gaussian noise (encoder
256-128, head 128-64), 10 epochs validated every 5, lr 1e-3, 5 folds, the default evaluation
(the exact SVM up to `exact_max_cells` training cells, the Nystroem approximation past it with
its grid searched on `search_max_cells`).

Per size, each in a process of its own on both cores:
- `runner.py --check`: wall time and the peak memory of its process tree;
- each method's job of the first fold, as a worker runs it: seconds (the dataset's reading
  apart) and peak resident memory (VmHWM, the reading included);
- the growth exponent of each method's seconds and memory: the least-squares slope of their
  logarithms on the cells', from 10 000 cells up.
With `--runs`, the small config's whole run to its summary (`runner.py --force` with that
many folds, as a user runs it): wall time and the peak memory of its process tree, workers
included. Writes docs/scale.md and docs/scale.png; figures of each size and run are kept in
results/scale-bench/results.json and runs.json, so a later run with others adds to the page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reference import tree_rss  # noqa: E402
from bench.sampler import Sampler  # noqa: E402
from bench.tiling import thinned_copies  # noqa: E402

SOURCE = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"
FOLDER = ROOT / "results" / "scale-bench"
PAGE, PLOT = ROOT / "docs" / "scale.md", ROOT / "docs" / "scale.png"
SIZES = (2_000, 5_000, 10_000, 20_000, 50_000)
GENES = 2000
THINNING = 0.8
FROM_CELLS = 10_000  # the exponent's range starts here (below it the exact SVM's n² dominates)
TARGETS = {"exponent": 1.15, "check_s": 60.0, "check_gb": 2.0}  # issue 40, on 2 cores


def dataset_path(cells: int) -> Path:
    return FOLDER / "data" / f"baron-mouse-{cells}.h5ad"


def make_dataset(cells: int) -> Path:
    """Baron Mouse's cells tiled to `cells`, each copy thinned; made once."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    path = dataset_path(cells)
    if path.exists():
        return path
    source = ad.read_h5ad(SOURCE)
    counts = sp.csr_matrix(source.X)
    genes = np.sort(np.argsort(-np.asarray(counts.sum(axis=0)).ravel())[:GENES])
    counts = counts[:, genes].astype(np.float32)
    copies = -(-cells // source.n_obs)
    x = thinned_copies(counts, copies, THINNING, np.random.default_rng(0))[:cells]
    rows = np.tile(np.arange(source.n_obs), copies)[:cells]
    obs = source.obs.iloc[rows][["cell_type", "batch"]].copy()
    obs.index = [f"cell{i}" for i in range(cells)]
    tiled = ad.AnnData(x, obs=obs, var=source.var.iloc[genes])
    path.parent.mkdir(parents=True, exist_ok=True)
    tiled.write_h5ad(path)
    return path


def small_config(cells: int):
    """The issue's small config on the tiled data of `cells` cells."""
    from gsrcl.config.presets import PAPER
    from gsrcl.config.settings import Compute, Dataset, Experiment, Method

    return Experiment(
        name=f"scale-{cells}",
        datasets=(
            Dataset(
                name=f"baron-mouse-{cells}",
                path=str(dataset_path(cells)),
                labels="cell_type",
                values="counts",
            ),
        ),
        methods=(Method("simclr", "noise", encoder=(256, 128), head=(128, 64)),),
        contrastive=replace(PAPER.contrastive, epochs=10, validate_every=5, lr=1e-3),
        compute=Compute(devices="cpu"),
        results_dir=str(FOLDER / "runs"),
    )


CONFIG_FILE = """import sys
sys.path.insert(0, {root!r})
from bench.scale import small_config
EXPERIMENT = small_config({cells})
"""


def config_file(cells: int) -> Path:
    path = FOLDER / "configs" / f"scale-{cells}.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONFIG_FILE.format(root=str(ROOT), cells=cells))
    return path


def runner_command(arguments: list[str], every: float) -> dict:
    """`runner.py` with these arguments as a process of its own: its wall seconds, the peak of
    its process tree (sampled every `every` seconds), the estimate it printed, its output."""
    command = [sys.executable, "runner.py", *arguments]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with Sampler(lambda: tree_rss(process.pid), every=every) as rss:
        out, _ = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{out[-3000:]}")
    # --check says "the run takes ~T (...)", a run "estimate: ~T (...) on this machine"
    found = re.search(r"estimate: (?:the run takes )?~(.*?) \(", out)
    return {
        "seconds": time.perf_counter() - start,
        "peak_gb": max(rss.samples, default=0) / 1e9,
        "estimate": found.group(1) if found else "",
    }


def timed_check(cells: int) -> dict:
    """`runner.py --check` on the size's config: seconds and its process tree's peak."""
    figures = runner_command(["--config", str(config_file(cells)), "--check"], every=0.2)
    return {**figures, "load": os.getloadavg()[0]}


def one_job(cells: int, method: str) -> dict:
    """The first fold's job of `method` in this process, as a worker runs it on 2 threads."""
    from gsrcl.data.dataset import DatasetCache
    from gsrcl.runner import jobs, pipeline
    from gsrcl.runner.dispatch import set_threads
    from gsrcl.runner.run_folder import RunFolder

    experiment = small_config(cells)
    run = RunFolder.of(experiment)
    datasets = DatasetCache()
    start = time.perf_counter()
    pipeline.prepare(experiment, run, datasets, lambda line: None)
    read = time.perf_counter() - start
    set_threads(os.cpu_count() or 1)
    job = jobs.Job(experiment.datasets[0].name, method, 0)
    run.job(job).clear()  # from scratch: a saved training is not resumed
    start = time.perf_counter()
    jobs.run_job(job, experiment, run, "cpu", datasets)
    seconds = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
    metrics = json.loads((run.job(job).path / "metrics.json").read_text())
    fitted = {row.get("fitted", "exact") for row in metrics["rows"]}
    return {"seconds": seconds, "read": read, "peak_gb": peak / 1e9, "fitted": sorted(fitted)}


def timed_job(cells: int, method: str) -> dict:
    command = [sys.executable, __file__, "--job", str(cells), method]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {method} job at {cells} cells failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def timed_run(cells: int, folds: int) -> dict:
    """The small config's whole run on `cells` cells with `folds` folds, from scratch: wall
    seconds and the peak of its process tree."""
    make_dataset(cells)
    arguments = ["--config", str(config_file(cells)), "--force", "--set", f"split.folds={folds}"]
    arguments += ["--set", f"results_dir={FOLDER / 'whole-runs'}"]
    figures = runner_command(arguments, every=1.0)
    return {"cells": cells, "folds": folds, **figures, "load": os.getloadavg()[0]}


def exponent(points: dict[int, float]) -> float | None:
    """The least-squares slope of log value on log cells, from FROM_CELLS up."""
    import numpy as np

    kept = sorted((c, v) for c, v in points.items() if c >= FROM_CELLS and v > 0)
    if len(kept) < 2:
        return None
    cells, values = (np.log([p[i] for p in kept]) for i in (0, 1))
    return float(np.polyfit(cells, values, 1)[0])


def measure(cells: int) -> dict:
    make_dataset(cells)
    figures = {"check": timed_check(cells), "jobs": {}}
    for method in ("baseline", "simclr-noise"):
        figures["jobs"][method] = timed_job(cells, method)
        print(f"  {cells} cells, {method}: {figures['jobs'][method]}", flush=True)
    figures["load"] = os.getloadavg()[0]
    return figures


def plot(results: dict[int, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for method in ("baseline", "simclr-noise", None):
        line = "s--" if method is None else "o-"
        for axis, key in ((time_axis, "seconds"), (memory_axis, "peak_gb")):
            points = sorted(_figures(results, method, key).items())
            axis.plot([c for c, _ in points], [v for _, v in points], line)
    for axis, what in ((time_axis, "seconds"), (memory_axis, "peak resident GB")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("cells")
        axis.set_ylabel(what)
        axis.legend(["baseline job", "SimCLR job", "--check"])
    figure.suptitle("One fold's job and --check against the cells (2 CPU cores)")
    figure.tight_layout()
    figure.savefig(PLOT, dpi=100)


def _figures(results: dict[int, dict], method: str | None, key: str) -> dict[int, float]:
    """A figure of each size measured: `method`'s job's, or (None) `--check`'s."""
    found = {}
    for cells, r in results.items():
        part = r.get("check") if method is None else r.get("jobs", {}).get(method)
        if part:
            found[cells] = part[key]
    return found


def _row(cells: int, r: dict) -> str:
    jobs, check = r.get("jobs"), r.get("check")
    cols = ["—"] * 5
    if jobs:
        base, simclr = jobs["baseline"], jobs["simclr-noise"]
        cols = [
            f"{base['seconds']:.0f} s",
            f"{base['peak_gb']:.2f} GB",
            f"{simclr['seconds']:.0f} s",
            f"{simclr['peak_gb']:.2f} GB",
            f"{base['read']:.0f} s",
        ]
        cols.append("; ".join(base["fitted"]))
    else:
        cols.append("—")
    if check:
        cols += [f"{check['seconds']:.0f} s", f"{check['peak_gb']:.2f} GB", check["estimate"]]
    else:
        cols += ["—"] * 3
    load = r.get("load", (check or {}).get("load"))
    cols.append(f"{load:.1f}" if load is not None else "—")
    return f"| {cells:,} | " + " | ".join(cols) + " |"


def page(results: dict[int, dict], runs: dict[str, dict]) -> str:
    sizes = sorted(results)
    lines = [
        "# How the cost grows with the cells",
        "",
        "`python3 bench/scale.py` (2 CPU cores): Baron Mouse's 2000 genes of most counts, tiled "
        "to N cells with thinned counts; the issue's small config (the paper's SVM baseline, "
        "SimCLR with Gaussian noise 256-128, 10 epochs, 5 folds). A job is the first fold's, "
        "run as a worker runs it (the dataset's reading apart, in its own column); its memory "
        "is the process's peak, the reading included. Targets (issue 40): a job's seconds grow "
        f"≤ n^{TARGETS['exponent']} from 10 000 cells, memory linearly; `--check` ≤ "
        f"{TARGETS['check_s']:.0f} s and ≤ {TARGETS['check_gb']:.0f} GB at any size.",
        "",
        "| cells | baseline job | its peak | SimCLR job | its peak | reading | SVMs fitted | "
        "--check | its peak | its estimate of the run | load |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(c, results[c]) for c in sizes]
    lines += ["", "Growth exponents from 10 000 cells (slope of log-log, least squares):", ""]
    for method in ("baseline", "simclr-noise"):
        for what, key in (("seconds", "seconds"), ("memory", "peak_gb")):
            found = exponent(_figures(results, method, key))
            text = f"n^{found:.2f}" if found is not None else "needs two sizes ≥ 10 000"
            lines.append(f"- {method} job {what}: {text}")
    if runs:
        lines += [
            "",
            "Whole runs of the small config to their summary (`--runs`; the runner's own "
            "workers and threads on both cores), against the issue's targets (50 000 cells, "
            "5 folds: ≤ 45 min, ≤ 8 GB; 200 000 cells, 2 folds: within 24 GB):",
            "",
            "| cells | folds | wall | peak of the process tree | its estimate | load |",
            "|---|---|---|---|---|---|",
        ]
        for run in sorted(runs.values(), key=lambda r: (r["cells"], r["folds"])):
            lines.append(
                f"| {run['cells']:,} | {run['folds']} | {run['seconds'] / 60:.1f} min | "
                f"{run['peak_gb']:.2f} GB | {run['estimate']} | {run['load']:.1f} |"
            )
    lines += ["", f"![seconds and memory against cells]({PLOT.name})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", help=f"default {SIZES} without --runs")
    parser.add_argument("--runs", nargs="+", default=[], metavar="CELLS:FOLDS")
    parser.add_argument("--checks", type=int, nargs="+", default=[], help="--check alone")
    parser.add_argument("--job", nargs=2, metavar=("CELLS", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        print(json.dumps(one_job(int(args.job[0]), args.job[1])))
        return
    store = FOLDER / "results.json"
    kept = json.loads(store.read_text()) if store.exists() else {}
    results = {int(cells): figures for cells, figures in kept.items()}
    for cells in args.sizes or ([] if args.runs or args.checks else SIZES):
        print(f"{cells} cells ...", flush=True)
        results[cells] = measure(cells)
        store.write_text(json.dumps(results, indent=1))
    for cells in args.checks:
        make_dataset(cells)
        results.setdefault(cells, {})["check"] = timed_check(cells)
        print(f"  {cells} cells, --check: {results[cells]['check']}", flush=True)
        store.write_text(json.dumps(results, indent=1))
    run_store = FOLDER / "runs.json"
    runs = json.loads(run_store.read_text()) if run_store.exists() else {}
    for wanted in args.runs:
        cells, folds = (int(part) for part in wanted.split(":"))
        print(f"the whole run at {cells} cells, {folds} folds ...", flush=True)
        runs[wanted] = timed_run(cells, folds)
        print(f"  {runs[wanted]}", flush=True)
        run_store.write_text(json.dumps(runs, indent=1))
    PAGE.write_text(page(results, runs))
    plot(results)
    print(PAGE.read_text())


if __name__ == "__main__":
    main()
