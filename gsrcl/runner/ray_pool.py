"""Running the jobs as Ray tasks, on one machine or a cluster (`compute.executor = "ray"`).

The same `dispatch.execute` runs each job, so the results layout, failure isolation and resume are
the local pool's. Each task asks Ray for what its job needs: a GPU job the share of a GPU its
memory estimate takes (Ray sets CUDA_VISIBLE_DEVICES, so the job sees it as cuda:0) and a core; a
baseline job, or any job on a cluster without GPUs, `compute.ray_cpus_per_job` cores. Ray ships the
`gsrcl` package to the workers; the results folder and the data files must be at the same paths
on every node (a shared file system). Ray is imported only here, and only when chosen.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import gsrcl
from gsrcl.config.settings import Experiment
from gsrcl.data.dataset import DatasetCache
from gsrcl.errors import UserError
from gsrcl.runner import dispatch
from gsrcl.runner.jobs import Job
from gsrcl.runner.run_folder import RunFolder
from gsrcl.runner.schedule import CUDA_CONTEXT_BYTES, MEMORY_USE, Machine, Needs

INSTALL = "pip install 'ray[default]==2.60.0'"


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError(
            f'compute.executor = "ray" needs Ray, which is not installed; install it with '
            f'`{INSTALL}`, or set compute.executor = "local"'
        ) from None
    return ray


def _run_one(
    job: Job, experiment: Experiment, run_dir: str, cwd: str, threads: int
) -> dispatch.Outcome:
    """The body of a Ray task: work in the runner's directory (so the config's relative paths
    mean what they mean to the runner), pin to what Ray gave it, run the job as a worker would."""
    import ray

    if not Path(cwd).is_dir():
        raise UserError(
            f"{cwd} (the runner's directory) is not on this node; Ray jobs need the project, its "
            "data and its results on a file system shared by every node, at the same path"
        )
    os.chdir(cwd)
    if cwd not in sys.path:  # the config's own import paths resolve as they do for the runner
        sys.path.insert(0, cwd)
    gpus = ray.get_gpu_ids()
    device = "cuda:0" if gpus else "cpu"
    dispatch.pin(dispatch.Slot(0, device, dispatch.FixedShare(threads)))
    return dispatch.execute(job, experiment, RunFolder(Path(run_dir)), device, DatasetCache(1))


class RayPool:
    """Submits every job as a Ray task asking for what the job needs, and collects the outcomes
    as they finish."""

    def __init__(
        self, experiment: Experiment, run: RunFolder, machine: Machine, gpus: bool
    ) -> None:
        """`gpus`: GPU jobs ask for a GPU when the cluster has GPUs (else CPUs per job)."""
        self.ray = import_ray()
        self.experiment, self.machine = experiment, machine
        self.folder = RunFolder(run.path.resolve())
        compute = experiment.compute
        if not self.ray.is_initialized():
            self.ray.init(
                address=compute.ray_address,
                runtime_env={"py_modules": [str(Path(gsrcl.__file__).parent)]},
                logging_level="warning",
                log_to_driver=False,
            )
        self.threads = compute.ray_cpus_per_job
        self.gpus = gpus and self.ray.cluster_resources().get("GPU", 0) > 0

    def options(self, needs: Needs) -> dict:
        """A GPU job asks for the share of a GPU its memory needs, its process's CUDA context
        included (or 1 / workers_per_device), and one core; a CPU job for `ray_cpus_per_job`
        cores."""
        if not (self.gpus and needs.gpu):
            return {"num_gpus": 0, "num_cpus": self.threads}
        per_device = self.experiment.compute.workers_per_device
        if per_device != "auto":
            return {"num_gpus": 1 / per_device, "num_cpus": 1}
        memory = min(self.machine.gpus.values(), default=0)
        share = (needs.device_bytes + CUDA_CONTEXT_BYTES) / (MEMORY_USE * memory) if memory else 1.0
        return {"num_gpus": min(1.0, max(share, 0.01)), "num_cpus": 1}

    def run(
        self,
        todo: list[Job],
        needs: dict[Job, Needs],
        on_start: Callable[[Job, str], None],
        on_outcome: Callable[[dispatch.Outcome], None],
        on_progress: Callable[[Job, str], None] = lambda job, text: None,
    ) -> list[dispatch.Outcome]:
        task = self.ray.remote(_run_one)
        # Ray queues the tasks and says nothing when one starts or where it is: `on_start` and
        # `on_progress` are not called. Longest first, as the local pool.
        order = sorted(todo, key=lambda job: -needs[job].seconds)
        submitted = {}
        for job in order:
            options = self.options(needs[job])
            threads = options["num_cpus"]
            ref = task.options(max_retries=0, **options).remote(
                job, self.experiment, str(self.folder.path), os.getcwd(), threads
            )
            where = "ray (GPU)" if options["num_gpus"] else f"ray ({threads} CPU)"
            submitted[ref] = (job, time.perf_counter(), where)
        outcomes = []
        try:
            while submitted:
                ready, _ = self.ray.wait(list(submitted), num_returns=1)
                job, start, where = submitted.pop(ready[0])
                outcome = self._outcome(ready[0], job, start, where)
                outcomes.append(outcome)
                on_outcome(outcome)
        finally:
            for ref in submitted:  # interrupted: cancel what has not finished
                self.ray.cancel(ref, force=True)
        return outcomes

    def _outcome(self, ref, job: Job, start: float, where: str) -> dispatch.Outcome:
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as error:  # the task's process died, or Ray failed
            reason = f"ray task failed ({type(error).__name__}; killed or out of memory)"
            text = f"{reason}\n{error}\n"
            return dispatch.record_failure(job, self.folder, where, start, text, reason)
