"""The scheduler on this machine: the estimate made before a run against the run, and how busy
the cores were.

    python3 bench/schedule.py                          # config.py, then configs/baron_mouse.py
    python3 bench/schedule.py config.py                # one config (about 5 min on 2 cores)
    python3 bench/schedule.py config.py --set split.folds=2   # with the runner's overrides

Each config runs from scratch (`--force`, results under results/schedule-bench/). Printed per
config: the run's estimate (made by the runner before its jobs, from its short timing of each
dataset and method), the jobs' actual wall time and the error; the median and worst error of the
jobs' own estimates (manifest.csv); and the CPU busy share over the jobs' wall time, sampled
from /proc/stat once a second (all cores; 1.0 = every core busy the whole time).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sampler import Sampler  # noqa: E402
from gsrcl.config.configfile import load_experiment  # noqa: E402
from gsrcl.runner.pipeline import execute_experiment  # noqa: E402
from gsrcl.runner.run_folder import RunFolder  # noqa: E402

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


def bench(config: str, overrides: list[str]) -> None:
    name = Path(config).stem
    results = f"results_dir={str(FOLDER / name)!r}"
    experiment = load_experiment(ROOT / config, [*overrides, results])
    busy_share = BusyShare()
    start = time.perf_counter()
    with Sampler(busy_share.measure) as sampler:
        result = execute_experiment(experiment, "force", log=busy_share.log)
    whole = time.perf_counter() - start
    manifest = RunFolder.of(experiment).read_manifest()
    error = manifest["seconds"] / pd.to_numeric(manifest["estimated_seconds"]) - 1
    busy = sum(sampler.samples) / max(len(sampler.samples), 1)
    print(f"\n== {config}: status {result.status}, {whole / 60:.1f} min in all")
    print(
        f"run estimate {result.estimated_seconds / 60:.1f} min, jobs took "
        f"{result.seconds / 60:.1f} min: error {result.seconds / result.estimated_seconds - 1:+.0%}"
    )
    print(
        f"jobs' own estimates: median error {error.median():+.0%}, "
        f"worst {error.abs().max():.0%} (manifest.csv)"
    )
    print(f"CPU busy while the jobs ran: {busy:.0%} of {len(sampler.samples)} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("configs", nargs="*", default=["config.py", "configs/baron_mouse.py"])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    for config in args.configs:
        bench(config, args.overrides)


if __name__ == "__main__":
    main()
