"""What a run will need before it starts: each job's time and peak memory, the run's time on
this machine, and the disk its results take (`--check` prints them; the pool places jobs by them).

Time: a contrastive job is its setup, its trainings' epochs times the epoch measured here, plus
its validation steps times the step measured here (`calibrate`), each timed where it will run (a
baseline on the CPU with libsvm, a contrastive job on the first GPU if there is one); a baseline
job is the one measured. The run's time replays the scheduler on those durations, each new
worker paying its start (`startup`: the imports, timed here) and each worker its first read of a
dataset (timed here), on a machine as busy as the timing found it (`busy_factor`); the report
(`report_seconds`) and the export follow: what a run of seconds is mostly made of. A dataset not
downloaded yet is planned from its recorded shape: each method is timed once on a stand-in and
the timing carried to the shape (`scaled`). Memory and disk come from the shapes: the cells ×
genes matrix, the network's weights (with gradients and Adam's two moments), its activations on
a batch, the snapshots kept for the tasks, and the SVM's cell-by-cell matrices (on a GPU the
device solver's: `_device_scoring`); a GPU job's device memory is what it allocates times the
caching allocator's slack, and the scheduler adds a CUDA context per worker process
(`schedule.CUDA_CONTEXT_BYTES`).
An encoder file is its weights at the stored precision plus its gene names; a running
contrastive job also holds its training state (model, Adam's moments, the best snapshot of each
task, all float32) until it is done.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from sklearn.model_selection import ParameterGrid

from gsrcl.config.settings import (
    APPROXIMATE_SOLVER,
    BASELINE,
    Compute,
    Contrastive,
    Evaluation,
    Experiment,
    Method,
    Split,
)
from gsrcl.data.dataset import DatasetCache
from gsrcl.data.splits import Folds
from gsrcl.evaluate.classifiers import resolve_solver, uses_precomputed_kernel
from gsrcl.evaluate.nystroem_svm import search_cells
from gsrcl.model.encoder import ContrastiveModel
from gsrcl.model.losses import similarity_bytes
from gsrcl.model.train import (
    epochs_for,
    overlap_validation,
    validate_every_for,
    validation_epochs,
)
from gsrcl.runner.calibrate import (
    TIMING_CELLS,
    TIMING_TASKS,
    Timing,
    calibrate,
    sample_of,
    stand_in,
)
from gsrcl.runner.jobs import FoldData, Job, fold_data, method_named
from gsrcl.runner.schedule import CUDA_CONTEXT_BYTES, Machine, Needs, Scheduler
from gsrcl.runner.startup import worker_start_seconds

BYTES = {"float32": 4, "float16": 2}
WORKER_BYTES = 450 * 2**20  # a worker's resident memory before its first job (measured, CPU)
GENE_NAME_BYTES = 16  # a pickled gene name, on average
# The device solver's tensors (gsrcl.evaluate.device_svm, smo). DeviceRBF holds the training
# cells' squared distances in float64 (predictions) and float32 (the solver): 12 B a pair; the
# solver's replay holds its own float32 copy, padded (smo.bucket: up to 25 % larger a side).
PADDING = 1.25
PAIR_BYTES = 8 + 4 + 4 * PADDING**2
# A problem-cell of the solver's batch: 50 B of state (int64 rows and places, four float64
# fields, two masks) held by the replay and again by the step's new batch, ~70 B of one
# iteration's temporaries (bench/scoring.py counts them) and 8 B of answers.
PROBLEM_CELL_BYTES = 2 * 50 + 70 + 8
# What torch's caching allocator holds for a job's tensors at their peak (freed blocks kept,
# sizes rounded up). docs/gpu.md's H200 fold-job held 4.2 GiB on the device with 2.3 GiB
# allocated at most: 1.5 × that plus schedule.CUDA_CONTEXT_BYTES. bench/gpu_check.py records
# the peak allocated, reserved and in use against this estimate again.
ALLOCATOR_SLACK = 1.5
# The report's work, in units of a worker's start (imports: single-threaded work that a busy
# machine slows alike), measured on 2 CPU cores idle and busy (bench/schedule.py,
# docs/scheduling.md): UMAP's first call in a process (numba compiles or loads its functions),
# a UMAP per cell, a figure saved. UMAP_FIRST was 3.3 before the report found small data's
# neighbours with scikit-learn (figures._knn): the first UMAP 12.8 → 6.4 s, so half.
UMAP_FIRST = 1.65
UMAP_PER_CELL = 0.0012
FIGURE = 0.1


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


def planned_shape(cells: int, genes: int, tasks: int, split: Split) -> Shape:
    """The shape of a dataset not read yet: its first fold's training cells as the split makes
    them (the validation part rounded up, then the largest test fold), every task scored."""
    in_cv = cells - math.ceil(cells * split.validation_fraction)
    return Shape(cells, genes, tasks, in_cv - math.ceil(in_cv / split.folds))


# a task's fits in an approximate grid search (the paper's 16 settings × 5 inner folds), each
# on the search's cells, besides its one refit on every training cell
SEARCH_FITS = 80
# a multi-class baseline's fits in its grid search, on a sample past exact_max_cells too (the
# logistic regressions' 3 and 6 settings × 5 inner folds: about 20), besides its one refit
MULTICLASS_SEARCH_FITS = 20


def scaled(
    timing: Timing,
    measured: Shape,
    target: Shape,
    method: Method | None,
    searched: int | None = None,
) -> Timing:
    """A timing measured on one shape carried to another. A training epoch grows with the
    training cells times the network's weights (its matmuls), a validation step's embedding
    with the cells times the encoder's weights; the step's scoring and a baseline job grow with
    the tasks times the training cells squared (a kernel SVM's fits; genes are left out), a
    multi-class baseline with the training cells. `searched`: the cells an approximate SVM's
    search, and a multi-class baseline's, runs on (measured on all of `measured`'s): their fits
    grow with them, their refits with the training cells."""
    cells_ratio = target.train / measured.train
    if searched is None:
        per_task, multiclass_ratio = cells_ratio**2, cells_ratio
    else:
        search = searched / measured.train
        per_task = (search * SEARCH_FITS + cells_ratio) / (SEARCH_FITS + 1)
        multiclass_ratio = (search * MULTICLASS_SEARCH_FITS + cells_ratio) / (
            MULTICLASS_SEARCH_FITS + 1
        )
    fits = target.tasks / measured.tasks * per_task
    if method is None:  # the baselines
        multiclass = timing.linear * multiclass_ratio
        job = (timing.job - timing.linear) * fits + multiclass
        return Timing(job=job, linear=multiclass, cpu_share=timing.cpu_share)
    model, seen = (_network(_inputs(method, s.genes), method) for s in (target, measured))
    epoch = timing.epoch * target.train / measured.train * parameters(model) / parameters(seen)
    cells = target.cells / measured.cells
    embed = timing.embed * cells * parameters(model.encoder) / parameters(seen.encoder)
    step = embed + (timing.step - timing.embed) * fits
    return Timing(epoch, step, embed=embed, setup=timing.setup, cpu_share=timing.cpu_share)


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


def _snapshots(experiment: Experiment, method: Method, shape: Shape) -> int:
    """The distinct snapshots a training keeps at most: one per scored step for SimCLR's
    tasks, one for SupCon's single task."""
    contrastive = experiment.contrastive
    steps = len(_validation_steps(contrastive, method.loss, shape.train))
    return min(shape.tasks, steps) if method.loss == "simclr" else 1


def _validation_steps(contrastive: Contrastive, loss: str, train: int) -> list[int]:
    """The epochs a training of `loss` on `train` cells is scored at (its budget applied)."""
    epochs = epochs_for(contrastive, loss, train)
    return validation_epochs(epochs, validate_every_for(contrastive, loss, train))


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
            snapshots = _snapshots(experiment, method, shape)
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
    svm = svm_bytes(experiment.evaluation, shape.train)
    if job.method == BASELINE:
        return Needs(gpu=False, seconds=timing.job, host_bytes=data + svm)
    method = method_named(experiment, job.method)
    contrastive = experiment.contrastive
    inputs = _inputs(method, shape.genes)
    epochs = epochs_for(contrastive, method.loss, shape.train)
    steps = len(_validation_steps(contrastive, method.loss, shape.train))
    trainings = shape.tasks if method.loss == "supcon" else 1
    training = trainings * epochs * timing.epoch
    scoring = steps * timing.step  # SupCon scores one task per training: all tasks once a step
    gpu = bool(machine.gpus)
    overlapped = overlap_validation(contrastive.overlap_validation, _device_type(gpu))
    seconds = timing.setup + (max(training, scoring) if overlapped else training + scoring)
    model = _network(inputs, method)
    batch = min(shape.train, contrastive.batch_size)
    network = 4 * (4 * parameters(model) + 4 * batch * 2 * sum(method.encoder + method.head))
    network += similarity_bytes(2 * batch)
    kept = 4 * _snapshots(experiment, method, shape) * parameters(model.encoder)
    if gpu:
        on_host = data + kept + (0 if _device_solver(experiment.evaluation) else svm)
        tasks = 1 if method.loss == "supcon" else shape.tasks  # a training's scorer's tasks
        views = 4 * batch * inputs * 4  # a step's two noisy views and their concatenation
        cells = (2 * shape.cells + shape.train) * inputs * 4  # all, training rows, the scorer's
        training = cells + network + views
        scoring = _device_scoring(experiment.evaluation, shape, method, tasks)
        return Needs(True, seconds, on_host, int(ALLOCATOR_SLACK * (training + scoring)))
    return Needs(False, seconds, data + network + kept + svm)


# the approximation's fits: its features (float32) and liblinear's copy of a fit's rows as
# 16-byte nodes (gsrcl.config.settings: about 22 bytes a cell and landmark a fit thread)
NYSTROEM_BYTES = 4 + 22


def svm_bytes(evaluation: Evaluation, train: int) -> int:
    """An RBF SVC grid's memory on `train` cells: the distances, a kernel and a fit's copy
    (float64, cells²), or the approximation's cells × landmarks."""
    if evaluation.approximates(train):
        return train * min(train, evaluation.nystroem_components) * NYSTROEM_BYTES
    return train**2 * 8 * 3


def _device_solver(evaluation: Evaluation) -> bool:
    """Whether the embeddings' classifier is fitted by the device solver on a GPU."""
    spec = evaluation.classifier
    return uses_precomputed_kernel(spec) and resolve_solver(evaluation.solver, spec, "cuda") == (
        "device"
    )


def _device_scoring(evaluation: Evaluation, shape: Shape, method: Method, tasks: int) -> float:
    """A validation step's tensors on the GPU: the cells' embeddings (made in chunks, then the
    training ones in float64) and the distances; with the device solver, those of the validation
    and test cells too and one batch of every task × inner split × candidate and every
    candidate's refit on all training cells (device_svm)."""
    width = method.encoder[-1]
    chunk = min(shape.cells, 8192) * max(method.encoder) * 4 * 2  # train.embed's layers
    embeddings = shape.cells * width * 4 + shape.train * width * 8 + chunk
    if not _device_solver(evaluation):
        return embeddings + shape.train**2 * 8  # libsvm's distances, made there, copied out
    others = shape.cells - shape.train  # the validation and test cells
    pairs = shape.train**2 * PAIR_BYTES + others * shape.train * 8
    problems = tasks * len(ParameterGrid(evaluation.classifier.grid)) * (evaluation.inner_folds + 1)
    batch = PADDING**2 * problems * shape.train * PROBLEM_CELL_BYTES
    return embeddings + pairs + batch


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
    needs: dict[Job, Needs],
    shapes: dict[str, Shape],
    machine: Machine,
    evaluation: Evaluation | None = None,
) -> list[str]:
    """A warning for each dataset and method whose jobs would not fit in memory alone (with
    `evaluation`: what to change names its exact or approximate SVMs)."""
    warnings = []
    device_memory = min(machine.gpus.values(), default=0)
    for job, need in needs.items():
        if job.fold != 0:
            continue
        train = shapes[job.dataset].train
        if need.host_bytes > machine.host_bytes:
            exact = evaluation is None or not evaluation.approximates(train)
            why = (
                f"the SVM's cell-by-cell matrices at {train} training cells: "
                f"{_gb(train**2 * 24)}); lower evaluation.exact_max_cells (past it the SVMs "
                "are approximate, in memory linear in the cells), "
                if exact
                else f"the data of {shapes[job.dataset].cells} cells); "
            )
            warnings.append(
                f"{job.dataset}/{job.method} needs about {_gb(need.host_bytes)} of memory, "
                f"more than this machine's {_gb(machine.host_bytes)} ({why}run it on fewer "
                "cells (a subsample, or dataset cell_types) or on a larger machine"
            )
        if need.gpu and need.device_bytes + CUDA_CONTEXT_BYTES > device_memory:
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
    """The cores this process may use, the host's memory, and the GPUs' memory for the jobs."""
    gpus = {
        d: torch.cuda.get_device_properties(d).total_memory for d in devices if d.startswith("cuda")
    }
    if gpus:  # the runner times jobs on the first GPU (calibrate) and keeps its context there
        gpus[next(iter(gpus))] -= CUDA_CONTEXT_BYTES
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Machine(cores=len(os.sched_getaffinity(0)), host_bytes=host, gpus=gpus)


@dataclass(frozen=True)
class Plan:
    """The estimate of a run: each job's needs, the run's seconds on this machine, and the
    datasets' shapes they come from."""

    needs: dict[Job, Needs]
    seconds: float  # the jobs
    warnings: list[str]
    shapes: dict[str, Shape]
    export_seconds: float = 0.0  # the models export.after_run writes after them
    report_seconds: float = 0.0  # the report after the jobs

    @property
    def total_seconds(self) -> float:
        """From the jobs' start to the run's end: the jobs, the report and the export."""
        return self.seconds + self.report_seconds + self.export_seconds

    def describe_seconds(self) -> str:
        after = {"report": self.report_seconds, "export": self.export_seconds}
        parts = [f"the {name} ~{describe_time(t)}" for name, t in after.items() if t]
        if not parts:
            return f"~{describe_time(self.seconds)}"
        parts.insert(0, f"the jobs ~{describe_time(self.seconds)}")
        return f"~{describe_time(self.total_seconds)} ({', '.join(parts)})"


def plan(
    experiment: Experiment,
    todo: list[Job],
    folds: dict[str, Folds],
    cache: DatasetCache,
    machine: Machine,
    log: Callable[[str], None],
    planned: dict[str, Shape] | None = None,
) -> Plan:
    """Calibrate each dataset and method of `todo` here, then estimate every job and the run.
    `planned`: the shapes of datasets not read (timed on the stand-in, scaled to the shape)."""
    threads = experiment.compute.threads or max(1, machine.cores // min(machine.cores, len(todo)))
    planned = planned or {}
    shapes, first_folds = dict(planned), {}
    for name in dict.fromkeys(job.dataset for job in todo if job.dataset not in planned):
        spec = next(d for d in experiment.datasets if d.name == name)
        first = fold_data(cache.get(spec), spec, folds[name], 0)
        shapes[name] = _shape(first)
        sample = sample_of(first, TIMING_CELLS, TIMING_TASKS, experiment.seed)
        first_folds[name] = replace(sample, adata=cache.with_values(spec, sample.adata))
    timings = _timings(experiment, todo, first_folds, shapes, machine, threads, log)
    running = min(len(todo), max(1, machine.cores // threads))
    # a one-thread timing's share of its core is unambiguous: others' load, not parallelism
    alone = machine.gpus or threads > 1
    load = os.getloadavg()[0]
    busy = 1.0 if alone else busy_factor(list(timings.values()), machine, threads, running, load)
    if busy > 1:
        log(f"estimate: other work keeps the cores busy; the jobs counted {busy:.2f}× as long")
    needs = {}
    for job in todo:
        timing = timings[job.dataset, job.method].longer(busy)
        needs[job] = job_needs(experiment, job, shapes[job.dataset], timing, machine)
    start = worker_start_seconds()  # workers start side by side: as busy as the jobs
    reads = {name: cache.seconds.get(name, 0.0) for name in shapes}
    seconds = run_seconds(machine, needs, experiment.compute, threads, Starts(start * busy, reads))
    warnings = memory_warnings(needs, shapes, machine, experiment.evaluation)
    report = report_seconds(experiment, shapes, start)
    return Plan(needs, seconds, warnings, shapes, export_seconds(experiment, timings), report)


def report_seconds(experiment: Experiment, shapes: dict[str, Shape], start: float) -> float:
    """The report after the jobs: its figures and two UMAPs of each dataset's cells (at most
    UMAP_CELLS of them; the first of this process paying numba's), in units of `start` (a
    worker's start here, UMAP_FIRST)."""
    from gsrcl.report.figures import umap_compiled  # umap-learn: only where a report is made
    from gsrcl.report.page import UMAP_CELLS

    methods = len(experiment.methods)
    seconds = UMAP_FIRST if methods and not umap_compiled() else 0.0
    for shape in shapes.values():
        umaps = 2 * UMAP_PER_CELL * min(shape.cells, UMAP_CELLS) if methods else 0.0
        seconds += umaps + (3 + methods) * FIGURE
    return seconds * start


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


# A model's export ≈ this many baseline jobs: its fits are theirs (the SVMs' calibrations and
# held-out refits on kernels, the multi-class models' searches on held-out batches) on every
# cell, without their grid searches. Measured: `gsrcl reference --batch batch` on the three-donor
# Baron human file, export 30 s against a baseline job's 76 s (mean of 5, same run, load 3.2;
# 1.3 before the fits side by side got one BLAS thread each)
EXPORT_PER_BASELINE_JOB = 0.4


def export_seconds(experiment: Experiment, timings: dict[tuple[str, str], Timing]) -> float:
    """The export after the run (export.after_run), per dataset: its baselines' share from a
    baseline job's timing, and one validation step of each contrastive method it judges (its
    classifiers' calibration on the chosen encoders' embeddings)."""
    if not experiment.export.after_run:
        return 0.0
    asked = experiment.export.method
    exported = experiment.method_names if asked == "best" else [asked]
    baselines = {b.baseline_name for b in experiment.evaluation.baselines}
    seconds = 0.0
    for (_, method), timing in timings.items():
        if method == BASELINE and baselines & set(exported):
            seconds += timing.job * EXPORT_PER_BASELINE_JOB
        elif method in exported:
            seconds += timing.step
    return seconds


def _shape(fold: FoldData) -> Shape:
    return Shape(fold.adata.n_obs, fold.adata.n_vars, len(fold.tasks), len(fold.train))


def _timings(
    experiment: Experiment,
    todo: list[Job],
    timed_folds: dict[str, FoldData],
    shapes: dict[str, Shape],
    machine: Machine,
    threads: int,
    log: Callable[[str], None],
) -> dict[tuple[str, str], Timing]:
    """Each dataset and method timed on `timed_folds[dataset]` (its first fold, or a sample of
    it), or on the stand-in (timed once for all the datasets not read), and carried to the
    dataset's shape."""
    pairs = list(dict.fromkeys((job.dataset, job.method) for job in todo))
    unread = any(dataset not in timed_folds for dataset, _ in pairs)
    substitute = stand_in(experiment) if unread else None
    measured: dict[tuple[int, str], Timing] = {}  # by fold: the stand-in is timed once
    # a sample's validation-step scoring, timed for its first contrastive method and taken for
    # the others: it fits the same grid on the same tasks' cells whatever the encoder (the
    # approximation's features have m columns whatever its width), and it is most of the time
    # --check spends on a large dataset
    scoring: dict[tuple[int, bool], float] = {}
    timings = {}
    for dataset, method in pairs:
        fold = timed_folds.get(dataset, substitute)
        # a dataset whose SVMs will be approximate is timed with the approximation
        linear = experiment.evaluation.approximates(shapes[dataset].train)
        key = (id(fold), method, linear)
        searched = None
        if linear:
            approximation = experiment.evaluation.approximation
            searched = search_cells(shapes[dataset].train, approximation)
        if key not in measured:
            where = dataset if shapes[dataset] == _shape(fold) else f"a sample of {dataset}"
            where = "a stand-in" if fold is substitute else where
            timed = _approximated(experiment) if linear else experiment
            known = scoring.get((id(fold), linear)) if fold.sampled else None
            measured[key] = _timed(timed, fold, method, where, machine, threads, log, known)
            if fold.sampled and method != BASELINE and known is None and measured[key].step:
                scoring[id(fold), linear] = measured[key].step - measured[key].embed
        spec = None if method == BASELINE else method_named(experiment, method)
        timings[dataset, method] = scaled(
            measured[key], _shape(fold), shapes[dataset], spec, searched
        )
    return timings


def _approximated(experiment: Experiment) -> Experiment:
    return replace(experiment, evaluation=replace(experiment.evaluation, solver=APPROXIMATE_SOLVER))


def _timed(
    experiment: Experiment,
    fold: FoldData,
    method: str,
    where: str,
    machine: Machine,
    threads: int,
    log: Callable[[str], None],
    scoring: float | None = None,
) -> Timing:
    device = timing_device(method, machine)
    log(f"estimate: timing {where}/{method} on {device}, threads per job: {threads}")
    try:
        return calibrate(experiment, fold, method, device, threads, scoring)
    except Exception as error:  # the jobs will report it, one clear line each
        log(f"warning: could not time {where}/{method} ({type(error).__name__}: {error})")
        return Timing()


def timing_device(method: str, machine: Machine) -> str:
    """Where a job of `method` runs, so where it is timed: baselines on the CPU (with libsvm,
    as they run: the scheduler never gives them a GPU), contrastive jobs on the first GPU."""
    return "cpu" if method == BASELINE else next(iter(machine.gpus), "cpu")


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
        f"estimate: the run takes {estimate.describe_seconds()} on {machine.cores} cores{gpus}"
    )
    return lines + [f"warning: {w}" for w in estimate.warnings]
