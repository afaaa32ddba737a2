"""The scheduler on a machine it believes has GPUs: where jobs go and how many threads each gets."""

from __future__ import annotations

from gsrcl.config.settings import Compute
from gsrcl.runner.calibrate import Timing
from gsrcl.runner.estimate import Shape, Starts, busy_factor, memory_warnings, run_seconds
from gsrcl.runner.jobs import Job
from gsrcl.runner.schedule import Machine, Needs, Scheduler

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
