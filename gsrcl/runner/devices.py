"""Which GPU a worker process sees, and what a process gives back to its GPU when a job ends.

A local worker is bound to its GPU as Ray binds a task: CUDA_VISIBLE_DEVICES names that GPU
alone in the worker's environment from the process's start, before CUDA initialises there, so
the worker sees it as cuda:0 and neither it nor a library it calls can touch another GPU (or
leave a context there). `torch.cuda.set_device` would not do: every GPU stays visible, and it
binds only the calling thread, not the scoring thread or the pool's.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch

from gsrcl.errors import UserError
from gsrcl.evaluate import smo

VISIBLE = "CUDA_VISIBLE_DEVICES"


def worker_environment(device: str, runner: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The variables a worker for `device` (as the runner names it: "cuda:2", "cpu") starts with
    beyond the runner's own: a GPU worker sees that GPU alone; a CPU worker's environment is
    the runner's. `runner`: the runner's environment (its own CUDA_VISIBLE_DEVICES, if set, is
    what the runner's indices count in)."""
    if not device.startswith("cuda"):
        return {}
    index = torch.device(device).index or 0
    visible = runner.get(VISIBLE)
    if visible is None:
        return {VISIBLE: str(index)}
    names = [name.strip() for name in visible.split(",") if name.strip()]
    if index >= len(names):
        raise UserError(f"{device} is not among the GPUs {VISIBLE}={visible!r} makes visible")
    return {VISIBLE: names[index]}


def worker_device(device: str) -> str:
    """The device a worker computes on: its one visible GPU is cuda:0."""
    return "cuda:0" if device.startswith("cuda") else device


@contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """`os.environ` with `variables` set, put back afterwards: a process spawned meanwhile has
    them from its first instruction. Only the runner's main thread starts workers."""
    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def release(device: str) -> None:
    """Give the GPU back what a finished job left in this process: the SVM solver's recorded
    graphs and torch's cached blocks. The scheduler plans the GPU's other jobs with a finished
    worker holding only its CUDA context (`schedule.CUDA_CONTEXT_BYTES`)."""
    if not str(device).startswith("cuda"):
        return
    gc.collect()  # tensors held in reference cycles (a failed job's traceback frames)
    smo.release_graphs()
    torch.cuda.empty_cache()
