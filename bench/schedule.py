"""The scheduler on this machine: the estimate made before a run against the run, and how busy
the cores were.

    python3 bench/schedule.py                    # every case (about 45 min on 2 cores)
    python3 bench/schedule.py tiny default       # the small cases (seconds; about 5 min)
    python3 bench/schedule.py configs/paper.py   # any config file
    python3 bench/schedule.py default --set split.folds=2   # with the runner's overrides

Cases: "tiny" (config.py cut to three cell types of pbmc68k_reduced, 4 epochs, small encoders,
3 folds: a run of seconds), "tiny-export" (the same, exporting "best" after the run), "default"
(config.py), "baron" (configs/baron_mouse.py). Each runs from scratch (`--force`, results under
results/schedule-bench/). Printed per case: the run's estimate (made by the runner before its
jobs, from its short timing of each dataset and method and the fixed costs it measured), what it
took from then to its end (jobs, report, export) and the error; the median and worst error of
the jobs' own estimates (manifest.csv); and the CPU busy share over the jobs' wall time, sampled
from /proc/stat once a second (all cores; 1.0 = every core busy the whole time).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sampler import Sampler  # noqa: E402
from gsrcl.config.configfile import load_experiment  # noqa: E402
from gsrcl.config.settings import Classifier, Evaluation, Experiment, Export  # noqa: E402
from gsrcl.runner import startup  # noqa: E402

# The runner is imported in main(), after the worker's modules are, as the command line does:
# workers re-import this file, and the estimate times a worker's start from those imports.

FOLDER = ROOT / "results" / "schedule-bench"


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


class BusyShare:
    """The cores' busy share over each second while the runner's jobs run: from the estimate's
    line (the jobs start right after it) to the first line after the jobs."""

    def __init__(self) -> None:
        self.jobs_running = False
        self.previous = cpu_times()

    def measure(self) -> float | None:
        now, before = cpu_times(), self.previous
        self.previous = now
        if not self.jobs_running:
            return None
        return (now[0] - before[0]) / max(now[1] - before[1], 1)

    def log(self, line: str) -> None:
        print(line)
        if line.startswith("estimate: ~"):
            self.jobs_running = True
        elif line.startswith("\n") or "jobs failed" in line:
            self.jobs_running = False


CASES = {
    "tiny": "config.py",
    "tiny-export": "config.py",
    "default": "config.py",
    "baron": "configs/baron_mouse.py",
}


def tiny(experiment: Experiment) -> Experiment:
    """config.py cut to a run of seconds: three types, two small methods, 4 epochs, 3 folds."""
    spec = replace(experiment.datasets[0], cell_types=("CD19+ B", "CD34+", "Dendritic"))
    small = tuple(replace(m, encoder=(64, 32), head=(32, 16)) for m in experiment.methods[:2])
    svm = Classifier(name="svm", grid={"C": [1, 10]})
    return replace(
        experiment,
        name="tiny",
        datasets=(spec,),
        methods=small,
        contrastive=replace(
            experiment.contrastive, epochs={"simclr": 4, "supcon": 4}, validate_every=2
        ),
        split=replace(experiment.split, folds=3),
        evaluation=Evaluation(classifier=svm, baselines=(svm,), inner_folds=3),
    ).validate()


def experiment_of(case: str, overrides: list[str] = ()) -> Experiment:
    config = CASES.get(case, case)
    name = case if case in CASES else Path(config).stem
    results = f"results_dir={str(FOLDER / name)!r}"
    experiment = load_experiment(ROOT / config, [*overrides, results])
    if case.startswith("tiny"):
        experiment = tiny(experiment)
    if case.endswith("export"):  # every method's model built, the best one kept
        experiment = replace(experiment, export=Export(after_run=True, method="best"))
    return experiment


def bench(case: str, overrides: list[str]) -> None:
    from gsrcl.runner.pipeline import execute_experiment
    from gsrcl.runner.run_folder import RunFolder

    experiment = experiment_of(case, overrides)
    busy_share = BusyShare()
    start = time.perf_counter()
    with Sampler(busy_share.measure) as sampler:
        result = execute_experiment(experiment, "force", log=busy_share.log)
    whole = time.perf_counter() - start
    manifest = RunFolder.of(experiment).read_manifest()
    error = manifest["seconds"] / pd.to_numeric(manifest["estimated_seconds"]) - 1
    busy = sum(sampler.samples) / max(len(sampler.samples), 1)
    took, estimated = result.seconds, result.estimated_seconds
    print(f"\n== {case}: status {result.status}, {whole / 60:.1f} min in all")
    print(
        f"run estimate {estimated:.0f} s, it took {took:.0f} s from the estimate to its end "
        f"(jobs {result.jobs_seconds:.0f} s): error {took / estimated - 1:+.0%}"
    )
    print(
        f"jobs' own estimates: median error {error.median():+.0%}, "
        f"worst {error.abs().max():.0%} (manifest.csv)"
    )
    print(f"CPU busy while the jobs ran: {busy:.0%} of {len(sampler.samples)} s")


def main() -> None:
    startup.import_worker_modules()
    parser = argparse.ArgumentParser()
    parser.add_argument("cases", nargs="*", default=list(CASES), help="cases or config files")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    for case in args.cases:
        bench(case, args.overrides)


if __name__ == "__main__":
    main()
