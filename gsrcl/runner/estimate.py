"""What a run will need before it starts: each job's time and peak memory, the run's time on
this machine, and the disk its results take (`--check` prints them; the pool places jobs by them).

Time: a contrastive job is its setup, its trainings' epochs times the epoch measured here, plus
its validation steps times the step measured here (`calibrate`); a baseline job is the one
measured. The run's time replays the scheduler on those durations, each new worker paying its
start (`startup`: the imports, timed here) and each worker its first read of a dataset (timed
here), then adds the report and the exports (`fixed_costs`): what makes a run of seconds.
Memory and disk come from the shapes: the cells × genes matrix, the network's weights (with
gradients and Adam's two moments), its activations on a batch, the snapshots kept for the tasks,
and the SVM's cell-by-cell matrices.
An encoder file is its weights at the stored precision plus its gene names; a running
contrastive job also holds its training state (model, Adam's moments, the best snapshot of each
task, all float32) until it is done.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gsrcl.config.settings import BASELINE, Compute, Experiment, Method
from gsrcl.data.dataset import DatasetCache
from gsrcl.data.splits import Folds
from gsrcl.model.encoder import ContrastiveModel
from gsrcl.model.train import overlap_validation, validation_epochs
from gsrcl.runner.calibrate import Timing, calibrate
from gsrcl.runner.jobs import Job, method_named
from gsrcl.runner.schedule import Machine, Needs, Scheduler
from gsrcl.runner.startup import worker_start_seconds

BYTES = {"float32": 4, "float16": 2}
# The report's and exports' work, in units of a worker's start (imports: single-threaded work
# that a busy machine slows alike), measured on 2 CPU cores (bench/schedule.py,
# docs/scheduling.md): UMAP's first call in a process (numba compiles or loads its functions),
# a UMAP per cell, a figure saved, export's expression space of a dataset.
UMAP_FIRST = 3.3
UMAP_PER_CELL = 0.0012
FIGURE = 0.1
EXPORT_SPACE = 0.5
EXPORT_STEPS = 3  # a contrastive method's export: its classifiers refit and calibrated
WORKER_BYTES = 450 * 2**20  # a worker's resident memory before its first job (measured, CPU)
GENE_NAME_BYTES = 16  # a pickled gene name, on average


@dataclass(frozen=True)
class DiskEstimate:
    """Bytes: what the results keep at the end in the worst case (every task choosing its own
    snapshot), what keep_encoders="all" would keep, and what each running job adds."""

    kept: int
    keep_all: int
    per_running_job: int


@dataclass(frozen=True)
class Shape:
    """A dataset as its jobs see it."""

    cells: int
    genes: int
    tasks: int  # scored cell types
    train: int  # training cells of a fold


def parameters(module: torch.nn.Module) -> int:
    """Numbers in the module's state (weights and BatchNorm statistics)."""
    return sum(t.numel() for t in module.state_dict().values())


def _network(n_inputs: int, method: Method) -> ContrastiveModel:
    """The method's network on the meta device: its shapes, without memory."""
    with torch.device("meta"):
        return ContrastiveModel(
            n_inputs, method.encoder, method.head, batchnorm=True, init_std=0.01
        )


def _inputs(method: Method, genes: int) -> int:
    """The genes the method's encoder reads."""
    return method.n_genes if method.augmentation == "masking" else genes


def _snapshots(experiment: Experiment, method: Method, tasks: int) -> int:
    """The distinct snapshots a training keeps at most: one per scored step for SimCLR's
    tasks, one for SupCon's single task."""
    contrastive = experiment.contrastive
    steps = len(validation_epochs(contrastive.epochs[method.loss], contrastive.validate_every))
    return min(tasks, steps) if method.loss == "simclr" else 1


def encoder_bytes(n_inputs: int, method: Method, precision: str) -> int:
    encoder = _network(n_inputs, method).encoder
    return parameters(encoder) * BYTES[precision] + n_inputs * GENE_NAME_BYTES


def disk(experiment: Experiment, shapes: dict[str, Shape]) -> DiskEstimate:
    storage = experiment.storage
    kept = keep_all = running = 0
    for shape in shapes.values():
        for method in experiment.methods:
            inputs = _inputs(method, shape.genes)
            size = encoder_bytes(inputs, method, storage.encoder_precision)
            snapshots = _snapshots(experiment, method, shape.tasks)
            per_fold = shape.tasks if method.loss == "supcon" else snapshots
            kept += shape.tasks * size
            keep_all += experiment.split.folds * per_fold * size
            running = max(running, per_fold * size + _training_state(inputs, method, snapshots))
    if storage.keep_encoders == "all":
        kept = keep_all
    return DiskEstimate(kept, keep_all, running)


def _training_state(n_inputs: int, method: Method, snapshots: int) -> int:
    """progress.pt: the model and Adam's two moments, and the snapshots, in float32."""
    model = _network(n_inputs, method)
    return 4 * (3 * parameters(model) + snapshots * parameters(model.encoder))


def describe_disk(estimate: DiskEstimate, experiment: Experiment, slots: int) -> str:
    """The lines --check prints."""
    storage = experiment.storage
    peak = estimate.kept + slots * estimate.per_running_job
    text = (
        f"disk: results keep up to {_gb(estimate.kept)} of encoders "
        f"(keep_encoders={storage.keep_encoders!r}, {storage.encoder_precision}; "
        f"'all' would keep {_gb(estimate.keep_all)}), up to {_gb(peak)} while "
        f"{slots} job{'s' if slots > 1 else ''} run{'' if slots > 1 else 's'}"
    )
    return text


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.0f} MB"


def job_needs(
    experiment: Experiment, job: Job, shape: Shape, timing: Timing, machine: Machine
) -> Needs:
    """What `job` needs, from its dataset's shape and its method's timing on this machine."""
    # the worker process itself (Python, torch, scikit-learn), the dataset and its prepared copy
    data = WORKER_BYTES + shape.cells * shape.genes * 4 * 2
    svm = shape.train**2 * 8 * 3  # distances, a kernel, a fit's copy (float64)
    if job.method == BASELINE:
        return Needs(gpu=False, seconds=timing.job, host_bytes=data + svm)
    method = method_named(experiment, job.method)
    contrastive = experiment.contrastive
    inputs = _inputs(method, shape.genes)
    epochs = contrastive.epochs[method.loss]
    steps = len(validation_epochs(epochs, contrastive.validate_every))
    trainings = shape.tasks if method.loss == "supcon" else 1
    training = trainings * epochs * timing.epoch
    scoring = steps * timing.step  # SupCon scores one task per training: all tasks once a step
    gpu = bool(machine.gpus)
    overlapped = overlap_validation(contrastive.overlap_validation, _device_type(gpu))
    seconds = timing.setup + (max(training, scoring) if overlapped else training + scoring)
    model = _network(inputs, method)
    batch = min(shape.train, contrastive.batch_size)
    network = 4 * (4 * parameters(model) + 4 * batch * 2 * sum(method.encoder + method.head))
    kept = 4 * _snapshots(experiment, method, shape.tasks) * parameters(model.encoder)
    if gpu:
        on_device = shape.cells * inputs * 4 + network + shape.train**2 * 4 * 2
        return Needs(True, seconds, data + kept, on_device)
    return Needs(False, seconds, data + network + kept + svm)


def _device_type(gpu: bool) -> torch.device:
    return torch.device("cuda" if gpu else "cpu")


def run_seconds(
    machine: Machine,
    needs: dict[Job, Needs],
    compute: Compute,
    threads: int,
    starts: Starts | None = None,
) -> float:
    """The jobs' wall time: the scheduler replayed on the estimated durations (measured at
    `threads` threads a job; a job given k times the threads runs k ** SPEEDUP times faster),
    each job on a worker as the pool gives it, paying the `starts` a new worker pays."""
    scheduler = Scheduler(machine, needs, compute)
    workers = _Workers(starts or Starts(0.0, {}))
    left = {job: n.seconds for job, n in needs.items()}
    now = 0.0
    for job, device in scheduler.place():
        left[job] += workers.take(job, device)
    while scheduler.running:
        shares = scheduler.shares()
        speed = {job: (shares[job] / threads) ** SPEEDUP for job in scheduler.running}
        first = min(scheduler.running, key=lambda job: left[job] / speed[job])
        elapsed = left[first] / speed[first]
        now += elapsed
        for job in scheduler.running:
            left[job] -= elapsed * speed[job]
        scheduler.finish(first)
        workers.free(first)
        for job, device in scheduler.place():
            left[job] += workers.take(job, device)
    return now


@dataclass(frozen=True)
class Starts:
    """What a worker pays before its jobs: its start, and its first read of each dataset."""

    worker: float
    reads: dict[str, float]


class _Workers:
    """The pool's workers in the replay: a job takes an idle worker of its device, else a new
    one (`dispatch.Pool`), and pays what that worker has not done yet."""

    def __init__(self, starts: Starts) -> None:
        self.starts = starts
        self.idle: dict[str, list[set[str]]] = {}  # device → each idle worker's datasets read
        self.busy: dict[Job, tuple[str, set[str]]] = {}

    def take(self, job: Job, device: str) -> float:
        pool = self.idle.setdefault(device, [])
        read = pool.pop() if pool else None
        cost = self.starts.worker if read is None else 0.0
        read = set() if read is None else read
        if job.dataset not in read:
            cost += self.starts.reads.get(job.dataset, 0.0)
            read.add(job.dataset)
        self.busy[job] = device, read
        return cost

    def free(self, job: Job) -> None:
        device, read = self.busy.pop(job)
        self.idle[device].append(read)


SPEEDUP = 0.75  # threads ** SPEEDUP: libsvm and torch measured 1.67x on two cores


def memory_warnings(
    needs: dict[Job, Needs], shapes: dict[str, Shape], machine: Machine
) -> list[str]:
    """A warning for each dataset and method whose jobs would not fit in memory alone."""
    warnings = []
    device_memory = min(machine.gpus.values(), default=0)
    for job, need in needs.items():
        if job.fold != 0:
            continue
        train = shapes[job.dataset].train
        if need.host_bytes > machine.host_bytes:
            warnings.append(
                f"{job.dataset}/{job.method} needs about {_gb(need.host_bytes)} of memory, "
                f"more than this machine's {_gb(machine.host_bytes)} (the SVM's cell-by-cell "
                f"matrices at {train} training cells: {_gb(train**2 * 24)}); run it on fewer "
                "cells (a subsample, or dataset cell_types) or on a larger machine"
            )
        if need.gpu and need.device_bytes > device_memory:
            warnings.append(
                f"{job.dataset}/{job.method} needs about {_gb(need.device_bytes)} of GPU "
                f"memory, more than the GPU's {_gb(device_memory)}; lower "
                "contrastive.batch_size or the method's encoder widths"
            )
    return warnings


def describe_time(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def this_machine(devices: list[str]) -> Machine:
    """The cores this process may use, the host's memory, and the GPUs' memory."""
    gpus = {
        d: torch.cuda.get_device_properties(d).total_memory for d in devices if d.startswith("cuda")
    }
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Machine(cores=len(os.sched_getaffinity(0)), host_bytes=host, gpus=gpus)


@dataclass(frozen=True)
class Plan:
    """The estimate of a run: each job's needs, the run's seconds on this machine from its
    jobs' start to its end (`jobs_seconds` of them the jobs'), and the datasets' shapes they
    come from."""

    needs: dict[Job, Needs]
    seconds: float
    warnings: list[str]
    shapes: dict[str, Shape]
    jobs_seconds: float = 0.0


def fixed_costs(
    experiment: Experiment,
    shapes: dict[str, Shape],
    timings: dict[tuple[str, str], Timing],
    reads: dict[str, float],
    start: float,
) -> float:
    """Seconds of the report (its figures, two UMAPs of a dataset's cells) and of the exports
    (`export.after_run`: each dataset read again, its expression space, each candidate's
    classifiers refit), scaled by `start` (a worker's start here, see UMAP_FIRST)."""
    methods = len(experiment.methods)
    report = UMAP_FIRST * start if methods else 0.0
    for shape in shapes.values():
        umaps = 2 * UMAP_PER_CELL * shape.cells if methods else 0.0
        report += (umaps + (3 + methods) * FIGURE) * start
    export = 0.0
    if experiment.export.after_run:
        for name in shapes:
            export += reads.get(name, 0.0) + EXPORT_SPACE * start
            export += sum(_export_seconds(name, m, timings) for m in _exported(experiment))
    return report + export


def _exported(experiment: Experiment) -> list[str]:
    """The methods whose models an export builds (all for "best"; the baselines are one job)."""
    asked = experiment.export.method
    if asked == "best":
        return [BASELINE, *(method.name for method in experiment.methods)]
    return [BASELINE if asked.startswith(f"{BASELINE}-") else asked]


def _export_seconds(dataset: str, method: str, timings: dict[tuple[str, str], Timing]) -> float:
    timing = timings.get((dataset, method), Timing())
    return timing.job if method == BASELINE else timing.setup + EXPORT_STEPS * timing.step


def plan(
    experiment: Experiment,
    todo: list[Job],
    folds: dict[str, Folds],
    cache: DatasetCache,
    machine: Machine,
    log: Callable[[str], None],
) -> Plan:
    """Calibrate each dataset and method of `todo` here, then estimate every job and the run."""
    threads = experiment.compute.threads or max(1, machine.cores // min(machine.cores, len(todo)))
    device = next(iter(machine.gpus), "cpu")
    shapes, timings = {}, {}
    for name in dict.fromkeys(job.dataset for job in todo):
        adata = cache.get(next(d for d in experiment.datasets if d.name == name))
        shapes[name] = Shape(
            adata.n_obs, adata.n_vars, len(folds[name].scored_tasks), len(folds[name].train(0))
        )
    for dataset, method in dict.fromkeys((job.dataset, job.method) for job in todo):
        log(f"estimate: timing {dataset}/{method} on {device}, threads per job: {threads}")
        try:
            timing = calibrate(experiment, dataset, folds[dataset], method, device, threads, cache)
        except Exception as error:  # the jobs will report it, one clear line each
            log(f"warning: could not time {dataset}/{method} ({type(error).__name__}: {error})")
            timing = Timing()
        timings[dataset, method] = timing
    running = min(len(todo), max(1, machine.cores // threads))
    # a one-thread timing's share of its core is unambiguous: others' load, not parallelism
    alone = machine.gpus or threads > 1
    load = os.getloadavg()[0]
    busy = 1.0 if alone else busy_factor(list(timings.values()), machine, threads, running, load)
    if busy > 1:
        log(f"estimate: other work keeps the cores busy; the jobs counted {busy:.2f}× as long")
    needs = {}
    for job in todo:
        timing = timings[job.dataset, job.method].scaled(busy)
        needs[job] = job_needs(experiment, job, shapes[job.dataset], timing, machine)
    start = worker_start_seconds()  # workers start side by side: as busy as the jobs
    starts = Starts(start * busy, {name: cache.seconds.get(name, 0.0) for name in shapes})
    jobs_seconds = run_seconds(machine, needs, experiment.compute, threads, starts)
    seconds = jobs_seconds + fixed_costs(experiment, shapes, timings, starts.reads, start)
    warnings = memory_warnings(needs, shapes, machine)
    return Plan(needs, seconds, warnings, shapes, jobs_seconds)


def busy_factor(
    timings: list[Timing], machine: Machine, threads: int, running: int, load: float
) -> float:
    """How much slower a job runs beside the run's other jobs than it did alone in its timing,
    on cores that other work keeps busy. Other threads that want the cores, E: the timing's share
    of its threads' time on a core says cores / share - threads; the 1-minute load average
    (`load`, ours included) bounds it, so a burst during a short timing is not taken for lasting
    load. Timed with min(1, cores / (threads + E)) of a core per thread, each of `running` jobs'
    threads gets min(1, cores / (running × threads + E)) during the run. 1 on an idle machine."""
    share = float(np.median([t.cpu_share for t in timings])) if timings else 1.0
    if share >= IDLE_SHARE:
        return 1.0
    others = min(machine.cores / share - threads, load)
    timed = min(1.0, machine.cores / (threads + others))
    in_run = min(1.0, machine.cores / (running * threads + others))
    return max(1.0, timed / in_run)


IDLE_SHARE = 0.95


def describe_plan(estimate: Plan, machine: Machine) -> list[str]:
    """Per dataset and method: its jobs' time and peak memory; then the run's total."""
    lines = []
    groups: dict[tuple[str, str], list[Needs]] = {}
    for job, need in estimate.needs.items():
        groups.setdefault((job.dataset, job.method), []).append(need)
    for (dataset, method), needs in groups.items():
        need = needs[0]
        where = "GPU" if need.gpu else "CPU"
        memory = f"{_gb(need.host_bytes)} host" + (
            f", {_gb(need.device_bytes)} GPU" if need.gpu else ""
        )
        lines.append(
            f"  {dataset}/{method}: {len(needs)} {where} jobs of ~{describe_time(need.seconds)}, "
            f"peak ~{memory} each"
        )
    gpus = f" and {len(machine.gpus)} GPUs" if machine.gpus else ""
    lines.append(
        f"estimate: the run takes ~{describe_time(estimate.seconds)} on {machine.cores} cores{gpus}"
    )
    return lines + [f"warning: {w}" for w in estimate.warnings]
