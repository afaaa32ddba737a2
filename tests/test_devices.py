"""How a worker is bound to its GPU, and what a job gives back to the GPU when it ends. These
run without a GPU: they check the environment and device a worker gets, not CUDA itself."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from gsrcl.data.dataset import DatasetCache
from gsrcl.errors import UserError
from gsrcl.evaluate import smo
from gsrcl.runner import devices, dispatch
from gsrcl.runner.jobs import Job
from gsrcl.runner.run_folder import RunFolder
from gsrcl.runner.schedule import Machine
from tests.conftest import tiny_experiment


def test_a_gpu_worker_sees_its_gpu_alone_and_a_cpu_worker_the_runners_environment():
    assert devices.worker_environment("cuda:2", {}) == {"CUDA_VISIBLE_DEVICES": "2"}
    # the runner's own CUDA_VISIBLE_DEVICES is what its indices count in (ids or UUIDs)
    runner = {"CUDA_VISIBLE_DEVICES": "4, GPU-5f1c,6"}
    assert devices.worker_environment("cuda:1", runner) == {"CUDA_VISIBLE_DEVICES": "GPU-5f1c"}
    with pytest.raises(UserError, match="cuda:3 is not among the GPUs"):
        devices.worker_environment("cuda:3", runner)
    assert devices.worker_environment("cpu", runner) == {}
    assert devices.worker_device("cuda:2") == "cuda:0"  # the one GPU it sees
    assert devices.worker_device("cpu") == "cpu"


def test_the_environment_a_worker_starts_with_is_set_only_while_it_starts(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    monkeypatch.delenv("GSRCL_TEST_UNSET", raising=False)
    with devices.environment({"CUDA_VISIBLE_DEVICES": "1", "GSRCL_TEST_UNSET": "x"}):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"
        assert os.environ["GSRCL_TEST_UNSET"] == "x"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "GSRCL_TEST_UNSET" not in os.environ


def test_the_pool_starts_a_gpu_worker_inside_its_environment(tmp_path, monkeypatch):
    seen = []

    class Process:  # records the environment at start(), when spawn copies it
        def __init__(self, **kwargs):
            pass

        def start(self):
            seen.append(os.environ.get("CUDA_VISIBLE_DEVICES"))

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    experiment = tiny_experiment(tmp_path)
    machine = Machine(cores=2, host_bytes=2**30, gpus={"cuda:0": 2**30, "cuda:1": 2**30})
    pool = dispatch.Pool(machine, experiment, RunFolder.of(experiment))
    monkeypatch.setattr(pool.context, "Process", Process)
    pool._start(dispatch.Slot(0, "cuda:1", dispatch.FixedShare(1)))
    pool._start(dispatch.Slot(1, "cpu", dispatch.FixedShare(1)))
    assert seen == ["1", None]
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


@pytest.mark.parametrize("device, released", [("cuda:0", 1), ("cpu", 0)])
def test_a_job_that_ends_gives_its_gpu_memory_back(tmp_path, monkeypatch, device, released):
    """Done or failed, a job's recorded solver graphs and torch's cached blocks go back to the
    GPU, for the other workers packed on it; on the CPU nothing is called."""
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))

    def fails(*args, **kwargs):
        raise RuntimeError("injected failure")

    monkeypatch.setattr(dispatch.jobs, "run_job", fails)
    distances = torch.ones((4, 4)) - torch.eye(4)
    problem = smo.DualProblem(np.arange(4), np.arange(4) < 2, 1.0, 1.0, 1.0)
    smo.solve(distances, [problem], padded=True)  # a graph kept by this process
    experiment = tiny_experiment(tmp_path)
    job = Job("pbmc68k_reduced", "simclr-noise", 0)
    outcome = dispatch.execute(job, experiment, RunFolder.of(experiment), device, DatasetCache())
    assert outcome.status == "failed" and "injected failure" in outcome.error
    assert len(emptied) == released
    assert (smo.GRAPHS.solves() == {}) == bool(released)
    smo.release_graphs()
