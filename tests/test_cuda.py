"""The GPU paths. They need CUDA and are skipped without it (`pytest -m cuda` runs only these)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gsrcl.config.settings import Compute, Contrastive
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import tiny_experiment

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _gpu(tmp_path, **changes):
    base = tiny_experiment(tmp_path)
    return tiny_experiment(
        tmp_path,
        methods=base.methods[:2],
        compute=Compute(devices="auto", **changes.pop("compute", {})),
        **changes,
    )


def test_a_tiny_run_on_cuda_and_two_workers_sharing_the_device(tmp_path):
    one = _gpu(tmp_path / "one")
    two = _gpu(tmp_path / "two", compute={"workers_per_device": 2})
    for experiment in (one, two):
        assert run_experiment(experiment, log=lambda _: None) == 0
    manifests = [(tmp_path / n / "results/tiny/manifest.csv").read_text() for n in ("one", "two")]
    assert all("cuda:0" in m for m in manifests)
    summaries = [(tmp_path / n / "results/tiny/summary.csv").read_text() for n in ("one", "two")]
    assert summaries[0] == summaries[1]  # the same jobs, however they are packed


def test_bf16_autocast_and_background_validation_on_cuda(tmp_path):
    contrastive = Contrastive(epochs=6, validate_every=2, lr=1e-3, precision="bf16")
    overlapped = _gpu(
        tmp_path / "on", contrastive=dataclasses.replace(contrastive, overlap_validation="on")
    )
    synchronous = _gpu(
        tmp_path / "off", contrastive=dataclasses.replace(contrastive, overlap_validation="off")
    )
    for experiment in (overlapped, synchronous):
        assert run_experiment(experiment, log=lambda _: None) == 0
    # overlap changes when scores are computed, never which checkpoint is chosen
    summaries = [(tmp_path / n / "results/tiny/summary.csv").read_text() for n in ("on", "off")]
    assert summaries[0] == summaries[1]


def test_a_training_state_saved_on_cuda_resumes_on_the_cpu():
    from gsrcl.config.presets import svm
    from gsrcl.model.augment import gaussian_noise
    from gsrcl.model.encoder import ContrastiveModel
    from gsrcl.model.train import ValidationScorer, train
    from tests.test_train import _Killed, _Memory

    rng = torch.Generator().manual_seed(0)
    x = torch.randn(90, 20, generator=rng)
    labels = (torch.arange(90) % 3 == 0).numpy()
    tasks = {"a": (labels[:60], labels[60:75])}
    settings = Contrastive(epochs=6, validate_every=2, lr=1e-2)
    state = _Memory(die_at_save=1)

    def run(device: str):
        xd = x.to(device)
        scorer = ValidationScorer(xd[:60], xd[60:75], xd[75:], tasks, svm(), 3, "mcc")
        model = ContrastiveModel(20, (16,), (8,), batchnorm=False, init_std=0.02).to(device)
        generator = torch.Generator(device=device).manual_seed(1)
        augment = lambda v, out: gaussian_noise(v, 1.0, generator, out)  # noqa: E731
        return train(model, xd[:60], augment, settings, 6, scorer, generator, None, state)

    with pytest.raises(_Killed):
        run("cuda:0")
    resumed = run("cpu")  # the weights, optimizer and scores carry over; the noise stream cannot
    assert [r["epoch"] for r in resumed.validation] == [0, 2, 4, 6]
    assert len(resumed.losses) == 6 and all(v == v for v in resumed.losses)


def test_the_device_solver_on_cuda_replays_a_graph_and_agrees_with_the_cpu(caplog):
    import numpy as np

    from gsrcl.evaluate import smo

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (150, 6)), rng.normal(0.8, 1, (50, 6))])
    distances = torch.as_tensor(((x[:, None] - x[None]) ** 2).sum(-1), dtype=torch.float32)
    positive = np.arange(200) >= 150
    problems = [
        smo.DualProblem(np.arange(0, 200, step), positive[::step], gamma, c, 2 * c)
        for step in (1, 2)
        for gamma in (0.05, 0.5)
        for c in (0.1, 10.0)
    ]
    smo.release_graphs()
    recorded = smo._Replay.recordings
    with caplog.at_level("WARNING", logger="gsrcl.evaluate.smo"):
        gpu = smo.solve(distances.cuda(), problems + problems[:2])  # 10 problems
        again = smo.solve(distances.cuda(), problems + problems[:1])  # 9: padded to 10 too
    assert "not recorded" not in caplog.text  # the CUDA graph path ran
    assert smo.bucket(9) == smo.bucket(10)
    assert smo._Replay.recordings == recorded + 1  # recorded once, replayed by both solves
    assert torch.equal(again.coef.cpu(), gpu.coef[:9].cpu())
    smo.release_graphs()
    cpu = smo.solve(distances, problems)
    assert bool(gpu.converged.all())
    # CUDA's exp may round a kernel value differently, so the paths may part: compare the
    # decision values each solution gives its training cells, to the solver's tolerance
    for k, problem in enumerate(problems):
        kernel = torch.exp(-problem.gamma * distances[problem.rows][:, problem.rows]).double()
        size = len(problem.rows)
        on_gpu = kernel @ gpu.coef[k, :size].cpu() + gpu.intercept[k].cpu()
        on_cpu = kernel @ cpu.coef[k, :size] + cpu.intercept[k]
        assert torch.allclose(on_gpu, on_cpu, atol=2e-2)


def test_the_threads_that_predict_from_a_steps_distances_use_the_scoring_stream(monkeypatch):
    """The pool's threads read the distances made on the scoring stream: on that stream."""
    import numpy as np

    from gsrcl.config.presets import svm
    from gsrcl.evaluate.device_svm import DeviceSVM
    from gsrcl.evaluate.workers import Workers
    from gsrcl.model.train import ValidationScorer

    streams = []
    decide = DeviceSVM.decision_function

    def recorded(self, distances):
        streams.append(torch.cuda.current_stream(distances.device))
        return decide(self, distances)

    monkeypatch.setattr(DeviceSVM, "decision_function", recorded)
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(90, 6)), dtype=torch.float32, device="cuda:0")
    labels = np.arange(90) % 3 == 0
    tasks = {"a": (labels[:60], labels[60:75]), "b": (~labels[:60], ~labels[60:75])}
    with Workers(2) as workers:
        scorer = ValidationScorer(x[:60], x[60:75], x[75:], tasks, svm(), 3, "mcc", 0, workers)
        scorer.score(*[rng.normal(size=(n, 8)) for n in (60, 15, 15)])
    assert streams and all(stream == scorer.stream for stream in streams)
