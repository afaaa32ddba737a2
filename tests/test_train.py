import copy
import dataclasses

import numpy as np
import torch

from gsrcl.config.presets import svm
from gsrcl.config.settings import Contrastive
from gsrcl.evaluate.classifiers import FoldClassifier
from gsrcl.model.augment import gaussian_noise
from gsrcl.model.encoder import ContrastiveModel
from gsrcl.model.train import ValidationScorer, embed, minibatches, train


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(["a", "b", "c"]), 40)
    centres = rng.normal(0, 2, size=(3, 30))
    x = centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 30))
    order = rng.permutation(120)
    x, labels = torch.tensor(x[order], dtype=torch.float32), labels[order]
    train_idx, val_idx, test_idx = np.arange(80), np.arange(80, 100), np.arange(100, 120)
    tasks = {t: (labels[train_idx] == t, labels[val_idx] == t) for t in ("a", "b")}
    scorer = ValidationScorer(x[train_idx], x[val_idx], x[test_idx], tasks, svm(), 3, "mcc")
    return x[train_idx], scorer


def _train(settings: Contrastive, x, scorer, keep=False):
    torch.manual_seed(0)
    model = ContrastiveModel(
        30, (32, 16), (16, 8), batchnorm=len(x) > settings.batch_size, init_std=0.02
    )
    generator = torch.Generator().manual_seed(1)
    augment = lambda v, out: gaussian_noise(v, 1.0, generator, out)  # noqa: E731
    result = train(model, x, augment, settings, settings.epochs["simclr"], scorer, generator)
    return (model, result) if keep else result


def test_overlapped_validation_chooses_the_same_checkpoints_as_synchronous():
    x, scorer = _problem()
    base = Contrastive(epochs=12, validate_every=3, lr=1e-2)
    synchronous = _train(dataclasses.replace(base, overlap_validation="off"), x, scorer)
    overlapped = _train(dataclasses.replace(base, overlap_validation="on"), x, scorer)
    assert synchronous.validation == overlapped.validation
    assert [r["epoch"] for r in synchronous.validation[::2]] == [0, 3, 6, 9, 12]
    assert synchronous.losses == overlapped.losses and len(synchronous.losses) == 12
    for task in ("a", "b"):
        a, b = synchronous.best[task], overlapped.best[task]
        assert (a.epoch, a.score) == (b.epoch, b.score)
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert set(synchronous.seconds) == {"training", "validation_wait"}


def test_kept_test_outputs_equal_a_fresh_fit_on_the_chosen_snapshot():
    x, scorer = _problem(3)
    model, result = _train(Contrastive(epochs=6, validate_every=3, lr=1e-2), x, scorer, keep=True)
    for task, (y_train, _) in scorer.tasks.items():
        best = result.best[task]
        encoder = copy.deepcopy(model.encoder)
        encoder.load_state_dict(best.state)
        x_train, _, x_test = scorer.x
        classifier = FoldClassifier(svm(), embed(encoder, x_train), inner_folds=3, metric="mcc")
        predicted, score = classifier.task_outputs(
            classifier.fit(y_train), classifier.prepare(embed(encoder, x_test))
        )
        assert np.array_equal(predicted, best.test[0]) and np.allclose(score, best.test[1])


def test_a_checkpoint_keeps_the_weights_of_its_epoch():
    x, scorer = _problem(1)
    result = _train(
        Contrastive(epochs=6, validate_every=2, lr=1e-2, overlap_validation="on"), x, scorer
    )
    epochs = {c.epoch for c in result.best.values()}
    states = {c.epoch: c.state for c in result.best.values()}
    if len(epochs) > 1:  # different epochs hold different weights, not one shared live tensor
        first, second = sorted(epochs)[:2]
        assert not torch.equal(states[first]["0.weight"], states[second]["0.weight"])


def test_minibatches_cover_every_cell_once_and_never_leave_a_batch_of_one():
    g = torch.Generator().manual_seed(0)
    for n, size in ((10, 16), (17, 8), (33, 8), (9, 8)):
        batches = minibatches(n, size, g, "cpu")
        cells = torch.cat(batches).sort().values
        assert torch.equal(cells, torch.arange(n))
        assert min(len(b) for b in batches) > 1


def test_mini_batch_training_with_batchnorm_and_bf16_runs_and_learns():
    x, scorer = _problem(2)
    result = _train(
        Contrastive(epochs=8, validate_every=4, lr=1e-2, batch_size=32, precision="bf16"), x, scorer
    )
    assert all(np.isfinite(result.losses)) and result.losses[-1] < result.losses[0]
    assert max(c.score for c in result.best.values()) > 0.8


def test_scoring_on_several_threads_equals_scoring_on_one():
    """Tasks, inner folds and grid candidates are fitted side by side: the same numbers."""
    from gsrcl.evaluate.workers import Workers

    _, serial = _problem(4)
    rng = np.random.default_rng(5)
    embeddings = [rng.normal(size=(n, 16)) for n in (80, 20, 20)]
    one = serial.score(*embeddings)
    with Workers(3) as workers:
        serial.workers = workers
        three = serial.score(*embeddings)
    assert one.keys() == three.keys()
    for task in one:
        assert one[task].score == three[task].score
        assert all(
            np.array_equal(a, b) for a, b in zip(one[task].test, three[task].test, strict=True)
        )


def test_every_thread_that_reads_a_steps_device_tensors_works_on_the_scoring_stream(monkeypatch):
    """The distances are made on the scoring stream; the pool's threads that predict from them
    must enter that stream too (a thread's current stream is its own). Off a GPU the stream is
    a no-op, so a stand-in marks the threads inside it."""
    import contextlib
    import threading

    from gsrcl.evaluate.workers import Workers

    _, scorer = _problem(6)
    inside: set[int] = set()
    outside: list[str] = []

    @contextlib.contextmanager
    def on_stream():
        inside.add(threading.get_ident())
        try:
            yield
        finally:
            inside.discard(threading.get_ident())

    def checked(method):
        def call(self, *args, **kwargs):
            if threading.get_ident() not in inside:
                outside.append(method.__name__)
            return method(self, *args, **kwargs)

        return call

    monkeypatch.setattr(scorer, "on_stream", on_stream)
    for name in ("prepare", "fit_and_choices", "score_metric", "task_outputs"):
        monkeypatch.setattr(FoldClassifier, name, checked(getattr(FoldClassifier, name)))
    rng = np.random.default_rng(7)
    with Workers(2) as workers:
        scorer.workers = workers
        scorer.score(*[rng.normal(size=(n, 8)) for n in (80, 20, 20)])
    assert outside == []


class _Killed(BaseException):
    """What a SIGKILL does to a job, without killing the test."""


class _Memory:
    """A training state kept in memory, through torch.save / torch.load as on disk."""

    def __init__(self, die_at_save: int | None = None) -> None:
        self.blob, self.saves, self.die_at_save = None, 0, die_at_save

    def load(self):
        import io

        return None if self.blob is None else torch.load(io.BytesIO(self.blob), weights_only=True)

    def due(self) -> bool:
        return True

    def save(self, state):
        import io

        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.blob, self.saves = buffer.getvalue(), self.saves + 1
        if self.saves == self.die_at_save:
            raise _Killed()


def _train_with(settings, x, scorer, state, init_seed=0):
    torch.manual_seed(init_seed)
    model = ContrastiveModel(30, (32, 16), (16, 8), batchnorm=False, init_std=0.02)
    generator = torch.Generator().manual_seed(1)
    augment = lambda v, out: gaussian_noise(v, 1.0, generator, out)  # noqa: E731
    return train(
        model, x, augment, settings, settings.epochs["simclr"], scorer, generator, None, state
    )


def test_a_killed_training_resumes_to_the_uninterrupted_result():
    x, scorer = _problem(6)
    settings = Contrastive(epochs=12, validate_every=3, lr=1e-2, overlap_validation="on")
    whole = _train_with(settings, x, scorer, _Memory())
    state = _Memory(die_at_save=2)  # killed right after saving epoch 6
    try:
        _train_with(settings, x, scorer, state)
    except _Killed:
        pass
    resumed = _train_with(settings, x, scorer, state, init_seed=99)  # other initial weights
    assert resumed.losses == whole.losses and resumed.validation == whole.validation
    for task, a in whole.best.items():
        b = resumed.best[task]
        assert (a.epoch, a.score) == (b.epoch, b.score)
        assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
        assert all(np.array_equal(u, v) for u, v in zip(a.test, b.test, strict=True))


def test_a_step_budget_cuts_the_epochs_of_large_data_only():
    from gsrcl.config.presets import PBMC68K, cpu_reference
    from gsrcl.model.train import batches_per_epoch, epochs_for, validate_every_for

    generator = torch.Generator().manual_seed(0)
    for cells in (5, 8192, 8193, 16385, 40000):
        assert batches_per_epoch(cells, 8192) == len(minibatches(cells, 8192, generator, "cpu"))
    budget = Contrastive(epochs=100, max_steps=100)
    assert epochs_for(budget, "simclr", 8192) == 100  # one batch an epoch: the epochs
    assert epochs_for(budget, "simclr", 40000) == 20  # 5 batches an epoch
    assert epochs_for(Contrastive(epochs=100, max_steps=3), "simclr", 40000) == 1
    assert epochs_for(Contrastive(epochs=100), "simclr", 10**6) == 100  # no budget
    reference = cpu_reference(PBMC68K, "results", epochs=30).contrastive
    assert reference.max_steps == 30 and epochs_for(reference, "simclr", 700) == 30
    # a cut training is validated at the same points of its course
    paper = Contrastive(epochs=100, validate_every=50, max_steps=100)
    assert validate_every_for(paper, "simclr", 8192) == 50
    assert validate_every_for(paper, "simclr", 40000) == 10  # 20 epochs: 0, 10, 20
