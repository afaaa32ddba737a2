"""configs/paper.py on a 4-GPU box, projected from the H200 figures of docs/gpu.md (no GPU needed).

    python3 bench/paper_projection.py [--gpus 4] [--cores 16]

Inputs, per docs/gpu.md (Baron Mouse, 1207 training cells × 14 878 genes, 13 tasks, fp32):
a paper-width SimCLR epoch measured at 30.6 ms on an H200, and a validation step with the device
solver projected at 0.9 s (libsvm on that box's CPU measured 2.7 s, which also stands for a
baseline job's grid, the same fits on the expression). Each dataset's jobs get those timings
carried to the registry's recorded shape by the estimate's own rule (`estimate.scaled`: epochs
with training cells × weights, scoring with tasks × training cells²) and the estimate's per-job
arithmetic (`estimate.job_needs`: epochs × epoch, validation steps × step, overlapped on a GPU).
The GPU jobs' seconds are summed and divided by the GPUs (each GPU busy the whole run, one job's
work at a time: at Baron's size one fp32 epoch already runs at 78 % of the H200's peak); the
baseline jobs run beside them on the cores. Not measured: a GPU other than the H200, the device
solver itself (projected), the small masking networks (FLOP-scaled, so optimistic on a GPU).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsrcl.config.configfile import load_experiment  # noqa: E402
from gsrcl.config.settings import BASELINE  # noqa: E402
from gsrcl.data.collection import entry_of  # noqa: E402
from gsrcl.runner import estimate, jobs  # noqa: E402
from gsrcl.runner.calibrate import Timing  # noqa: E402
from gsrcl.runner.pipeline import registered_shape  # noqa: E402
from gsrcl.runner.schedule import Machine  # noqa: E402

BARON = estimate.Shape(cells=1886, genes=14878, tasks=13, train=1207)
H200 = Timing(epoch=0.0306, step=0.9)  # embedding left out: ms on a GPU
CPU_GRID = Timing(job=2.7)  # every task's grid search on the expression, libsvm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gpus", type=int, default=4)
    parser.add_argument("--cores", type=int, default=16)
    args = parser.parse_args()
    experiment = load_experiment(ROOT / "configs" / "paper.py")
    gpus = {f"cuda:{i}": 80 * 2**30 for i in range(args.gpus)}
    machine = Machine(cores=args.cores, host_bytes=128 * 2**30, gpus=gpus)
    on_gpu = on_cpu = 0.0
    for spec in experiment.datasets:
        shape = registered_shape(experiment, spec.name, entry_of(spec))
        seconds = {}
        for job in (j for j in jobs.plan(experiment) if j.dataset == spec.name):
            method = None if job.method == BASELINE else jobs.method_named(experiment, job.method)
            timing = estimate.scaled(CPU_GRID if method is None else H200, BARON, shape, method)
            need = estimate.job_needs(experiment, job, shape, timing, machine)
            seconds[job.method] = seconds.get(job.method, 0.0) + need.seconds
        on_cpu += seconds.pop(BASELINE)
        on_gpu += sum(seconds.values())
        parts = ", ".join(f"{m} {s / 3600:.1f} h" for m, s in seconds.items())
        print(f"{spec.name} ({shape.cells} cells, {shape.tasks} tasks): {parts}")
    hours = max(on_gpu / args.gpus, on_cpu / args.cores) / 3600
    print(
        f"GPU work {on_gpu / 3600:.1f} h over {args.gpus} GPUs, baselines {on_cpu / 3600:.1f} h "
        f"over {args.cores} cores: about {hours:.1f} h"
    )


if __name__ == "__main__":
    main()
