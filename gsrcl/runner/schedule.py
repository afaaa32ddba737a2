"""Which job runs where and with how many threads: placement by what each job needs.

Pure logic, no processes: the local pool follows it as jobs finish, and `--check` replays it on
estimated durations to say how long a run will take. Jobs go longest first (by their estimate).
A GPU job goes to the GPU with the fewest jobs whose memory still holds it (`workers_per_device`
caps the count; "auto": memory and cores decide), a CPU job to the cores; every running job
holds at least one core, so no more jobs run than there are cores, and the cores are shared out
among the running jobs again whenever one starts or finishes. A GPU's memory holds its running
jobs and a CUDA context for every worker process on it, running or idle: the scheduler keeps
the count of those as the pool does (a job takes an idle worker of its device, else a new one
starts; the pool says when one dies).
"""

from __future__ import annotations

from dataclasses import dataclass

from gsrcl.config.settings import Compute
from gsrcl.runner.jobs import Job

MEMORY_USE = 0.9  # of a GPU's or the host's memory, the most the scheduler plans to fill
# What a process holds on a GPU it has used, beyond its tensors: its CUDA context (torch's
# kernels, loaded lazily) and cuBLAS workspaces; a worker keeps it while idle, after its jobs
# gave their cached blocks back (`devices.release`). Not measured apart yet: docs/gpu.md's H200
# process held 4.2 GiB with 2.3 GiB allocated at most, and this with estimate.ALLOCATOR_SLACK
# accounts for that; bench/gpu_check.py records both again.
CUDA_CONTEXT_BYTES = 768 * 2**20


@dataclass(frozen=True)
class Needs:
    """What one job needs: a GPU or not, and its estimated seconds and peak memory."""

    gpu: bool
    seconds: float
    host_bytes: int
    device_bytes: int = 0


@dataclass(frozen=True)
class Machine:
    cores: int
    host_bytes: int
    gpus: dict[str, int]  # device ("cuda:0") → its memory in bytes; empty on a CPU-only box


class Scheduler:
    """`place` says which pending jobs start now and where; `finish` frees a job's place;
    `shares` gives each running job its threads."""

    def __init__(self, machine: Machine, needs: dict[Job, Needs], compute: Compute) -> None:
        self.machine, self.needs, self.compute = machine, needs, compute
        self.pending = sorted(needs, key=lambda job: -needs[job].seconds)  # stable: plan order
        self.running: dict[Job, str] = {}
        self.processes: dict[str, int] = {}  # worker processes per device, running or idle

    def place(self) -> list[tuple[Job, str]]:
        placed = []
        for job in list(self.pending):
            if not self._room_for_another():
                break
            device = self._where(job)
            if device is not None:
                if not self._idle_worker(device):
                    self.processes[device] = self.processes.get(device, 0) + 1
                self.pending.remove(job)
                self.running[job] = device
                placed.append((job, device))
        return placed

    def finish(self, job: Job) -> None:
        """The job is done; its worker stays, idle, for the next job on its device."""
        self.running.pop(job)

    def worker_gone(self, device: str) -> None:
        """A worker process on `device` has ended (died, or never started)."""
        self.processes[device] = max(0, self.processes.get(device, 0) - 1)

    def device_use(self, gpu: str) -> int:
        """Bytes planned on `gpu` now: its running jobs' and a context per worker there."""
        jobs = sum(self.needs[j].device_bytes for j, d in self.running.items() if d == gpu)
        return jobs + self.processes.get(gpu, 0) * CUDA_CONTEXT_BYTES

    def _idle_worker(self, device: str) -> bool:
        running = sum(d == device for d in self.running.values())
        return self.processes.get(device, 0) > running

    def requeue(self, job: Job) -> None:
        """A job whose worker never started goes back, to be placed again."""
        self.running.pop(job)
        self.pending.insert(0, job)

    def shares(self) -> dict[Job, int]:
        """Threads per running job: `compute.threads`, or the cores shared out evenly, the
        spare ones to the jobs estimated to run longest."""
        if self.compute.threads is not None:
            return dict.fromkeys(self.running, self.compute.threads)
        if not self.running:
            return {}
        base, spare = divmod(self.machine.cores, len(self.running))
        longest = sorted(self.running, key=lambda job: -self.needs[job].seconds)
        return {job: base + (i < spare) for i, job in enumerate(longest)}

    def _room_for_another(self) -> bool:
        threads = self.compute.threads or 1
        return (len(self.running) + 1) * threads <= max(self.machine.cores, threads)

    def _where(self, job: Job) -> str | None:
        needs = self.needs[job]
        if not self._host_fits(needs):
            return None
        if needs.gpu and self.machine.gpus:
            return self._gpu_for(needs)
        cpu_jobs = sum(device == "cpu" for device in self.running.values())
        limit = self.compute.cpu_workers
        return "cpu" if limit == "auto" or cpu_jobs < limit else None

    def _gpu_for(self, needs: Needs) -> str | None:
        limit = self.compute.workers_per_device
        fits = []
        for gpu, memory in self.machine.gpus.items():
            jobs = [j for j, device in self.running.items() if device == gpu]
            if limit != "auto" and len(jobs) >= limit:
                continue
            used = self.device_use(gpu)
            context = 0 if self._idle_worker(gpu) else CUDA_CONTEXT_BYTES  # a new worker's
            if not jobs or used + context + needs.device_bytes <= MEMORY_USE * memory:
                fits.append((len(jobs), used, gpu))
        return min(fits)[2] if fits else None

    def _host_fits(self, needs: Needs) -> bool:
        used = sum(self.needs[job].host_bytes for job in self.running)
        return not self.running or used + needs.host_bytes <= MEMORY_USE * self.machine.host_bytes
