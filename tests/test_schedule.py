"""The scheduler on a machine it believes has GPUs: where jobs go and how many threads each gets."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gsrcl.api import load_config
from gsrcl.config.settings import Compute
from gsrcl.runner.calibrate import Timing
from gsrcl.runner.estimate import (
    ALLOCATOR_SLACK,
    Shape,
    Starts,
    busy_factor,
    job_needs,
    memory_warnings,
    run_seconds,
)
from gsrcl.runner.jobs import Job
from gsrcl.runner.schedule import CUDA_CONTEXT_BYTES, Machine, Needs, Scheduler

ROOT = Path(__file__).resolve().parents[1]

GB = 10**9
TWO_GPUS = Machine(cores=8, host_bytes=64 * GB, gpus={"cuda:0": 80 * GB, "cuda:1": 80 * GB})


def _jobs() -> dict[Job, Needs]:
    """Five baseline jobs (CPU) and six contrastive jobs of 30 GB on a GPU, of mixed lengths."""
    needs = {Job("d", "baseline", k): Needs(False, 10.0 + k, GB) for k in range(5)}
    for k in range(6):
        needs[Job("d", "simclr-noise", k)] = Needs(True, 100.0 + 10 * k, GB, 30 * GB)
    return needs


def _drain(scheduler: Scheduler, machine: Machine) -> list[tuple[Job, str]]:
    """Place and finish jobs (the longest-running first) until none is left, checking that the
    cores are never oversubscribed and GPU memory is never over-filled."""
    started = []
    while True:
        started += scheduler.place()
        if not scheduler.running:
            return started
        shares = scheduler.shares()
        assert all(n >= 1 for n in shares.values())
        assert sum(shares.values()) <= max(machine.cores, scheduler.compute.threads or 1)
        for gpu, memory in machine.gpus.items():
            on_gpu = [j for j, d in scheduler.running.items() if d == gpu]
            used = sum(scheduler.needs[j].device_bytes for j in on_gpu)
            assert len(on_gpu) <= 1 or used <= 0.9 * memory
        scheduler.finish(next(iter(scheduler.running)))


def _ids(jobs) -> list[str]:
    """Job ids, each as often as it appears (`jobs`: jobs, or (job, device) pairs)."""
    return sorted((j[0] if isinstance(j, tuple) else j).id for j in jobs)


def test_baselines_stay_off_the_gpus_and_gpu_jobs_are_packed_by_memory():
    scheduler = Scheduler(TWO_GPUS, _jobs(), Compute())
    first = scheduler.place()
    gpu_jobs = [(j, d) for j, d in first if d.startswith("cuda")]
    assert all(j.method != "baseline" for j, _ in gpu_jobs)
    assert sorted(d for _, d in gpu_jobs) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]  # 2 × 30 GB
    assert [j.method for j, d in first if d == "cpu"] == ["baseline"] * 4  # the other 4 cores
    assert first[0][0] == Job("d", "simclr-noise", 5)  # the longest first
    assert sum(scheduler.shares().values()) == 8


def test_every_job_runs_once_and_the_last_one_gets_every_core():
    needs = _jobs()
    scheduler = Scheduler(TWO_GPUS, needs, Compute())
    started = _drain(scheduler, TWO_GPUS)
    assert _ids(started) == _ids(needs)
    lonely = Scheduler(
        TWO_GPUS, {Job("d", "simclr-noise", 0): needs[Job("d", "simclr-noise", 0)]}, Compute()
    )
    lonely.place()
    assert list(lonely.shares().values()) == [8]


def test_settings_cap_the_packing_and_the_threads():
    one_per_gpu = Scheduler(TWO_GPUS, _jobs(), Compute(workers_per_device=1, cpu_workers=2))
    placed = one_per_gpu.place()
    assert sorted(d for _, d in placed) == ["cpu", "cpu", "cuda:0", "cuda:1"]
    fixed = Scheduler(TWO_GPUS, _jobs(), Compute(threads=3))
    placed = fixed.place()
    assert len(placed) == 2 and set(fixed.shares().values()) == {3}  # 3 × 3 > 8 cores
    assert _ids(placed + _drain(fixed, TWO_GPUS)) == _ids(_jobs())


def test_host_memory_limits_how_many_jobs_run_at_once():
    laptop = Machine(cores=4, host_bytes=10 * GB, gpus={})
    needs = {Job("d", "simclr-noise", k): Needs(False, 10.0, 4 * GB) for k in range(4)}
    scheduler = Scheduler(laptop, needs, Compute())
    placed = scheduler.place()
    assert len(placed) == 2  # 3 × 4 GB would pass 90 % of 10 GB
    assert _ids(placed + _drain(scheduler, laptop)) == _ids(needs)


def test_the_run_estimate_replays_the_schedule():
    laptop = Machine(cores=2, host_bytes=10 * GB, gpus={})
    needs = {Job("d", "m", k): Needs(False, 60.0, GB) for k in range(4)}
    assert run_seconds(laptop, needs, Compute(), threads=1) == 120.0  # two at a time
    odd = {**needs, Job("d", "m", 4): Needs(False, 60.0, GB)}
    # the fifth job runs alone on both cores: 60 s of one-thread work at 2 ** 0.75 the speed
    assert abs(run_seconds(laptop, odd, Compute(), threads=1) - (120 + 60 / 2**0.75)) < 1e-6


def test_the_replay_charges_a_new_worker_its_start_and_each_worker_its_first_reads():
    """What a run of seconds is mostly made of: two workers start (5 s each) and read "d" (2 s)
    once, then "e" once each; their later jobs pay nothing more."""
    laptop = Machine(cores=2, host_bytes=10 * GB, gpus={})
    needs = {
        Job(d, "m", k): Needs(False, 60.0, GB) for d, n in (("d", 4), ("e", 2)) for k in range(n)
    }
    starts = Starts(worker=5.0, reads={"d": 2.0, "e": 2.0})
    assert run_seconds(laptop, needs, Compute(), threads=1, starts=starts) == 5 + 2 + 3 * 60 + 2
    assert run_seconds(laptop, needs, Compute(), threads=1) == 3 * 60


def test_a_busy_machine_slows_the_run_s_jobs_more_than_the_timing():
    """Timed alone, a one-thread job had 2/3 of a core: two other threads want the 2 cores.
    Two jobs at once then get half a core each: 4/3 as long; an idle machine changes nothing."""
    laptop = Machine(cores=2, host_bytes=10 * GB, gpus={})
    busy = [Timing(epoch=1.0, cpu_share=2 / 3)]
    assert abs(busy_factor(busy, laptop, threads=1, running=2, load=3.0) - 4 / 3) < 1e-9
    assert busy_factor(busy, laptop, threads=1, running=1, load=3.0) == 1.0  # as it was timed
    assert busy_factor([Timing(epoch=1.0)], laptop, threads=1, running=2, load=3.0) == 1.0
    # a burst during the timing, on a machine idle the minute before: not lasting load
    assert busy_factor(busy, laptop, threads=1, running=2, load=0.1) < 1.06


def test_a_job_that_cannot_fit_in_memory_is_named_with_what_to_change():
    small = Machine(cores=2, host_bytes=8 * GB, gpus={"cuda:0": 16 * GB})
    shapes = {"big": Shape(cells=60_000, genes=20_000, tasks=10, train=38_000)}
    needs = {
        Job("big", "baseline", 0): Needs(False, 1.0, 40 * GB),
        Job("big", "simclr-noise", 0): Needs(True, 1.0, GB, 20 * GB),
        Job("big", "simclr-noise", 1): Needs(True, 1.0, GB, 20 * GB),  # one line per method
    }
    warnings = memory_warnings(needs, shapes, small)
    assert len(warnings) == 2
    assert "big/baseline needs about 40.00 GB of memory" in warnings[0]
    assert "38000 training cells" in warnings[0] and "fewer cells" in warnings[0]
    assert "GPU memory" in warnings[1] and "contrastive.batch_size" in warnings[1]


def test_every_worker_process_on_a_gpu_holds_a_context_running_or_idle():
    """A 10 GB GPU (9 GB planned). Two 4 GB jobs and their two contexts pass 9 GB: one at a
    time. Three 2 GB jobs fit with theirs; once two are done their idle workers keep their
    contexts, so a 4.7 GB job (taking one of them) waits for the GPU to empty."""
    gpu = Machine(cores=8, host_bytes=64 * GB, gpus={"cuda:0": 10 * GB})
    pair = {Job("d", "m", k): Needs(True, 10.0, GB, 4 * GB) for k in range(2)}
    assert len(Scheduler(gpu, pair, Compute()).place()) == 1
    small = {Job("d", "small", k): Needs(True, 100.0 - k, GB, 2 * GB) for k in range(3)}
    big = Job("d", "big", 0)
    scheduler = Scheduler(gpu, {**small, big: Needs(True, 1.0, GB, int(4.7 * GB))}, Compute())
    assert [j for j, _ in scheduler.place()] == list(small)
    assert scheduler.device_use("cuda:0") == 3 * (2 * GB + CUDA_CONTEXT_BYTES)
    for job in list(small)[1:]:
        scheduler.finish(job)
    assert scheduler.device_use("cuda:0") == 2 * GB + 3 * CUDA_CONTEXT_BYTES
    assert scheduler.place() == []  # 2 GB + 3 contexts + 4.7 GB > 9 GB
    scheduler.worker_gone("cuda:0")  # an idle worker ended: its context is freed
    assert scheduler.place() == [(big, "cuda:0")]
    assert scheduler.processes == {"cuda:0": 2}  # the big job took the idle worker left


def test_a_gpu_jobs_memory_counts_what_the_device_solver_holds():
    """Baron Mouse at the paper's protocol: with the device solver the GPU holds DeviceRBF's
    12 B a training-cell pair (float64 and float32 distances), the solver's padded copy and its
    batch; with libsvm its cell-by-cell matrices are on the host instead."""
    paper = load_config(ROOT / "configs" / "paper.py")
    libsvm = dataclasses.replace(
        paper, evaluation=dataclasses.replace(paper.evaluation, solver="libsvm")
    )
    shape = Shape(cells=1886, genes=14878, tasks=13, train=1206)
    job, timing = Job("baron_mouse", "simclr-noise", 0), Timing(epoch=1.0, step=1.0)
    on_device = job_needs(paper, job, shape, timing, TWO_GPUS)
    on_host = job_needs(libsvm, job, shape, timing, TWO_GPUS)
    problems = 13 * 16 * (5 + 1)  # tasks × candidates × (inner folds + the refit)
    solver = shape.train**2 * (12 + 4) + problems * shape.train * (2 * 50 + 70)
    assert on_device.device_bytes - on_host.device_bytes > ALLOCATOR_SLACK * solver
    assert on_host.host_bytes - on_device.host_bytes == shape.train**2 * 8 * 3


def test_each_method_is_timed_where_its_jobs_run(tmp_path, monkeypatch):
    """On a GPU box the baselines run on the CPU with libsvm: they are timed there, not on the
    first GPU with the device solver."""
    from gsrcl.data.dataset import DatasetCache
    from gsrcl.runner import estimate
    from gsrcl.runner.calibrate import Timing as Measured
    from gsrcl.runner.jobs import plan
    from gsrcl.runner.pipeline import dataset_folds
    from tests.conftest import tiny_experiment

    experiment = tiny_experiment(tmp_path)
    timed = []

    def calibrate(experiment, fold, method, device, threads, scoring=None):
        timed.append((method, device))
        return Measured(epoch=1.0, step=1.0, job=1.0)

    monkeypatch.setattr(estimate, "calibrate", calibrate)
    cache = DatasetCache()
    spec = experiment.datasets[0]
    folds = {spec.name: dataset_folds(spec, experiment, cache, None)}
    estimate.plan(experiment, plan(experiment), folds, cache, TWO_GPUS, lambda _: None)
    where = dict(timed)
    assert where.pop("baseline") == "cpu"
    assert set(where.values()) == {"cuda:0"} and len(where) == len(experiment.methods)


def test_the_estimate_counts_the_export_a_run_ends_with(tmp_path):
    import pytest

    from gsrcl.config.settings import BASELINE, Export
    from gsrcl.runner import estimate
    from tests.conftest import tiny_experiment

    timings = {
        ("pbmc", BASELINE): Timing(job=10.0),
        ("pbmc", "simclr-noise"): Timing(epoch=1.0, step=3.0),
        ("pbmc", "supcon-noise"): Timing(epoch=1.0, step=5.0),
    }
    per_job = estimate.EXPORT_PER_BASELINE_JOB

    def exported(**settings) -> float:
        experiment = tiny_experiment(tmp_path, export=Export(**settings))
        return estimate.export_seconds(experiment, timings)

    assert exported() == 0.0  # no export after the run
    assert exported(after_run=True) == pytest.approx(10.0 * per_job + 3.0 + 5.0)  # "best"
    assert exported(after_run=True, method="baseline-svm") == pytest.approx(10.0 * per_job)
    assert exported(after_run=True, method="supcon-noise") == pytest.approx(5.0)
    plan = estimate.Plan({}, 600.0, [], {}, export_seconds=60.0)
    assert plan.describe_seconds() == "~11.0 min (the jobs ~10.0 min, the export ~60 s)"
    assert estimate.Plan({}, 600.0, [], {}).describe_seconds() == "~10.0 min"


def test_a_large_dataset_is_timed_on_a_sample_and_carried_to_its_size(tmp_path, monkeypatch):
    """Above `TIMING_CELLS` training cells the timing runs on a sample of the first fold (each
    part and type in proportion, the same cells and labels) and the estimate scales it up by
    the cost model: a baseline job by the training cells squared. Its contrastive methods
    share one timing of the validation step's scoring (timed for the first)."""
    import numpy as np

    from gsrcl.data.dataset import DatasetCache
    from gsrcl.runner import estimate
    from gsrcl.runner.calibrate import Timing as Measured
    from gsrcl.runner.jobs import fold_data, plan
    from gsrcl.runner.pipeline import dataset_folds
    from tests.conftest import tiny_experiment

    experiment = tiny_experiment(tmp_path)
    cache = DatasetCache()
    spec = experiment.datasets[0]
    folds = {spec.name: dataset_folds(spec, experiment, cache, None)}
    full = fold_data(cache.get(spec), spec, folds[spec.name], 0)
    timed = []

    def calibrate(experiment, fold, method, device, threads, scoring=None):
        timed.append((fold, method, scoring))
        return Measured(job=1.0, step=3.0 if scoring is None else 1.0 + scoring, embed=1.0)

    monkeypatch.setattr(estimate, "calibrate", calibrate)
    monkeypatch.setattr(estimate, "TIMING_CELLS", 60)
    lines = []
    machine = Machine(cores=2, host_bytes=8 * GB, gpus={})
    made = estimate.plan(experiment, plan(experiment), folds, cache, machine, lines.append)
    sample = timed[0][0]
    assert all(fold is sample for fold, _, _ in timed)
    given = [scoring for _, method, scoring in timed if method != "baseline"]
    assert len(given) == len(experiment.methods) and given == [None] + [2.0] * (len(given) - 1)
    assert any("timing a sample of pbmc68k_reduced/baseline" in line for line in lines)
    assert 55 <= len(sample.train) <= 70 < len(full.train)
    for part in ("train", "validation", "test"):
        rows, whole = getattr(sample, part), getattr(full, part)
        names = sample.adata.obs_names[rows]
        assert set(names) <= set(full.adata.obs_names[whole])  # cells of the same part
        assert (sample.labels[rows] == full.adata.obs.loc[names, "label"].to_numpy()).all()
        for task in full.tasks:  # every type, about in proportion
            share = (full.labels[whole] == task).mean()
            assert (sample.labels[rows] == task).any()
            assert abs((sample.labels[rows] == task).mean() - share) < 0.15
    job = next(job for job in made.needs if job.method == "baseline")
    ratio = (len(full.train) / len(sample.train)) ** 2
    assert np.isclose(made.needs[job].seconds, ratio, rtol=0.3)


def test_past_exact_max_cells_the_estimate_counts_the_approximation():
    """Memory and time of an approximate SVM grow with the cells, not their square."""
    from gsrcl.config.settings import Evaluation
    from gsrcl.runner.estimate import scaled, svm_bytes

    exact, capped = Evaluation(exact_max_cells=None), Evaluation(exact_max_cells=9000)
    assert not capped.approximates(9000) and capped.approximates(9001)
    assert Evaluation(solver="nystroem").approximates(10)
    assert svm_bytes(exact, 40_000) == 40_000**2 * 24  # 38 GB of kernels
    assert svm_bytes(capped, 40_000) == 40_000 * capped.nystroem_components * 26  # 0.2 GB
    small, large = Shape(1250, 2000, 3, 1000), Shape(50_000, 2000, 3, 40_000)
    timing = Timing(job=10.0)
    assert scaled(timing, small, large, None).job == 10.0 * 40**2
    # the approximation's search on every cell: linear (its 80 fits a task and the refit)
    assert scaled(timing, small, large, None, searched=40_000).job == pytest.approx(10.0 * 40)
    # on a sample of 10 000: the search as at 10 000 cells, the refit at 40 000
    on_sample = scaled(timing, small, large, None, searched=10_000).job
    assert on_sample == pytest.approx(10.0 * (10 * 80 + 40) / 81)
