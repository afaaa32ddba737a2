"""One contrastive training with checkpoint selection.

Every `validate_every` epochs (and before the first and after the last) the frozen encoder embeds
the training, validation and test cells on its device; a classifier is fitted on the training
embeddings of each task and scored on the validation cells; each task keeps the encoder state of
its best score (the earliest on ties) and that classifier's outputs on the test cells, so the
chosen checkpoint is never fitted again (the choice sees validation scores only). Scoring is CPU
work on small embeddings, so it can run on a background thread while training goes on: the
scores, and so the chosen checkpoints, are the same either way. Only the chosen states are held,
in memory, one copy per distinct epoch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from gsrcl.config.settings import EXACT, Approximation, Classifier, Contrastive
from gsrcl.evaluate.classifiers import FoldClassifier, inner_splits
from gsrcl.evaluate.workers import SERIAL, Workers
from gsrcl.model.augment import Augment, two_views
from gsrcl.model.encoder import ContrastiveModel
from gsrcl.model.losses import nt_xent, supcon

log = logging.getLogger(__name__)
progress = logging.getLogger(
    "gsrcl.runner.progress"
)  # a worker forwards these to the runner's display


@dataclass
class Checkpoint:
    epoch: int
    score: float  # on the validation cells
    state: dict[str, torch.Tensor]
    test: tuple[np.ndarray, np.ndarray]  # (predicted positive, score) of the test cells
    params: dict = field(default_factory=dict)  # the classifier's grid choice (export reuses it)


@dataclass
class TrainingResult:
    losses: list[float]
    validation: list[dict] = field(default_factory=list)  # rows: epoch, task, score
    best: dict[str, Checkpoint] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # training vs waiting on validation


def validation_epochs(epochs: int, every: int) -> list[int]:
    return sorted(set(range(0, epochs + 1, every)) | {epochs})


def batches_per_epoch(n: int, batch_size: int) -> int:
    """How many batches `minibatches` makes of `n` cells."""
    if n <= batch_size:
        return 1
    return -(-n // batch_size) - (n % batch_size == 1)


def epochs_for(settings: Contrastive, loss: str, cells: int) -> int:
    """The epochs a training of `loss` on `cells` cells runs: its configured epochs, cut to
    the whole epochs that fit in `max_steps` batches (at least one)."""
    epochs = settings.epochs[loss]
    if settings.max_steps is None:
        return epochs
    fit = settings.max_steps // batches_per_epoch(cells, settings.batch_size)
    return max(1, min(epochs, fit))


def validate_every_for(settings: Contrastive, loss: str, cells: int) -> int:
    """The epochs between validation steps of that training: `validate_every`, shrunk in
    proportion where the step budget cuts the epochs, so a cut training is scored at the same
    points of its course (100 epochs every 50 cut to 12: every 6)."""
    configured, epochs = settings.epochs[loss], epochs_for(settings, loss, cells)
    if epochs == configured:
        return settings.validate_every
    return max(1, settings.validate_every * epochs // configured)


def minibatches(n: int, batch_size: int, generator: torch.Generator, device) -> list[torch.Tensor]:
    """The whole set when it fits; else a shuffled partition that never leaves a batch of one."""
    if n <= batch_size:
        return [torch.arange(n, device=device)]
    order = torch.randperm(n, generator=generator, device=generator.device).to(device)
    batches = list(order.split(batch_size))
    if len(batches[-1]) == 1:
        batches[-2] = torch.cat(batches[-2:])
        batches.pop()
    return batches


@torch.no_grad()
def embed(encoder: torch.nn.Module, x: torch.Tensor, chunk: int = 8192) -> np.ndarray:
    encoder.eval()
    return torch.cat([encoder(part) for part in x.split(chunk)]).float().cpu().numpy()


@dataclass
class Scored:
    """One task on one snapshot: the validation score and the test cells' outputs."""

    score: float
    test: tuple[np.ndarray, np.ndarray]
    params: dict  # the classifier's choice among the grid's values


class ValidationScorer:
    """Embeds a snapshot's training, validation and test cells (on the device) and scores every
    task (on the CPU, over the job's `workers`): `tasks[name] = (training labels, validation
    labels)`. What depends only on the cells and labels (the inner splits) is built once.
    `approximation`: when and how its RBF SVC is approximated (FoldClassifier)."""

    def __init__(
        self,
        x_train: torch.Tensor,
        x_val: torch.Tensor,
        x_test: torch.Tensor,
        tasks: dict,
        classifier: Classifier,
        inner_folds: int,
        metric: str,
        seed: int = 0,
        workers: Workers = SERIAL,
        solver: str = "auto",
        approximation: Approximation = EXACT,
    ) -> None:
        self.x = (x_train, x_val, x_test)
        self.tasks = tasks
        self.classifier, self.inner_folds, self.metric = classifier, inner_folds, metric
        self.solver = solver
        self.approximation = approximation
        self.seed, self.workers = seed, workers  # the inner CV shuffle: the same at every step
        self.splits = {name: inner_splits(y, inner_folds, seed) for name, (y, _) in tasks.items()}
        # on a GPU the device solver's kernels go to a stream of their own, so the training's
        # kernels (on the default stream) do not queue behind a whole scoring step
        self.stream = torch.cuda.Stream(x_train.device) if x_train.is_cuda else None

    def embed(self, encoder: torch.nn.Module) -> tuple[np.ndarray, ...]:
        return tuple(embed(encoder, x) for x in self.x)

    def on_stream(self):
        """Work on the scoring's stream from here (a no-op off a GPU). The current stream is per
        thread: every thread that touches the step's device tensors enters it, so their making
        and their reading are ordered on one stream (and the allocator never hands a block
        still being read on one stream to another)."""
        return torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()

    def score(self, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> dict[str, Scored]:
        with self.on_stream():
            return self._score(train, val, test)

    def _score(self, train: np.ndarray, val: np.ndarray, test: np.ndarray) -> dict[str, Scored]:
        fold = FoldClassifier(
            self.classifier,
            train,
            inner_folds=self.inner_folds,
            metric=self.metric,
            device=str(self.x[0].device),
            seed=self.seed,
            workers=self.workers,
            solver=self.solver,
            approximation=self.approximation,
        )
        names = list(self.tasks)
        models, choices = fold.fit_and_choices(
            [self.tasks[n][0] for n in names], [self.splits[n] for n in names]
        )
        val_prepared, test_prepared = fold.prepare(val), fold.prepare(test)

        def outputs(i: int) -> Scored:  # on a pool thread: distances made on the scoring stream
            y_val = self.tasks[names[i]][1]
            with self.on_stream():
                return Scored(
                    fold.score_metric(models[i], val_prepared, y_val),
                    fold.task_outputs(models[i], test_prepared),
                    choices[i],
                )

        return dict(zip(names, self.workers.map(outputs, range(len(names))), strict=True))


class CheckpointSelector:
    """Keeps each task's best snapshot; scores in the background when `background`, at most one
    snapshot behind, and always applies scores in epoch order."""

    def __init__(self, scorer: ValidationScorer, background: bool) -> None:
        self.scorer = scorer
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="validation") if background else None
        self.pending: tuple[int, dict, Future] | None = None
        self.validation: list[dict] = []
        self.best: dict[str, Checkpoint] = {}
        self.waited = 0.0  # seconds training stood still for validation

    def offer(self, epoch: int, encoder: torch.nn.Module) -> None:
        start = time.perf_counter()
        embeddings = self.scorer.embed(encoder)
        state = {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()}
        self._collect()
        self.scorer.workers.refresh()  # no scoring under way: cores freed meanwhile are taken
        if self.pool is None:
            self._keep(epoch, state, self._timed_score(*embeddings))
        else:
            self.pending = (epoch, state, self.pool.submit(self._timed_score, *embeddings))
        self.waited += time.perf_counter() - start

    def _timed_score(self, *embeddings: np.ndarray) -> tuple[dict[str, Scored], float]:
        start = time.perf_counter()
        return self.scorer.score(*embeddings), time.perf_counter() - start

    def settle(self) -> None:
        """Apply the pending snapshot's scores (its result is needed before a save)."""
        start = time.perf_counter()
        self._collect()
        self.waited += time.perf_counter() - start

    def finish(self) -> None:
        self.settle()
        if self.pool is not None:
            self.pool.shutdown()

    def _collect(self) -> None:
        if self.pending is not None:
            epoch, state, future = self.pending
            self.pending = None
            self._keep(epoch, state, future.result())

    def _keep(self, epoch: int, state: dict, timed: tuple[dict[str, Scored], float]) -> None:
        scored, seconds = timed
        mean = np.mean([r.score for r in scored.values()]) if scored else float("nan")
        log.info(
            "validation step at epoch %d: %d tasks scored in %.1f s (mean score %.3f)",
            epoch,
            len(scored),
            seconds,
            mean,
        )
        for task, result in scored.items():
            self.validation.append({"epoch": epoch, "task": task, "score": result.score})
            best = self.best.get(task)
            if best is None or result.score > best.score:  # one state per epoch, for its tasks
                self.best[task] = Checkpoint(epoch, result.score, state, result.test, result.params)


def overlap_validation(setting: str, device: torch.device) -> bool:
    """ "auto": overlap on a GPU; on a CPU the scoring thread would compete for the same cores."""
    return setting == "on" or (setting == "auto" and device.type == "cuda")


class TrainingState(Protocol):
    """Where a training's state is kept between validation steps (`runner.jobs.JobProgress`)."""

    def load(self) -> dict | None: ...

    def due(self) -> bool: ...  # whether this validation step should save

    def save(self, state: dict) -> None: ...


def train(
    model: ContrastiveModel,
    x: torch.Tensor,
    augment: Augment,
    settings: Contrastive,
    epochs: int,
    scorer: ValidationScorer,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
    state: TrainingState | None = None,
) -> TrainingResult:
    """Train on `x` (already on its device); `labels` switches SimCLR to SupCon. With a `state`,
    the training state is saved at the validation steps it asks for and a saved one is resumed
    from: the result is the one an uninterrupted training gives."""
    # fused: one kernel for the whole update, which at the paper's width (46M parameters) is a
    # memory-bound share of every step (bench/training.py: 129 → 152 GFLOP/s on 2 CPU cores)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, fused=True
    )
    step = _compiled(model, settings.compile)
    selector = CheckpointSelector(scorer, overlap_validation(settings.overlap_validation, x.device))
    checkpoints = set(validation_epochs(epochs, settings.validate_every))
    epoch_losses: list[torch.Tensor] = []
    start = time.perf_counter()
    saved = state.load() if state is not None else None
    first = _restore(saved, model, optimizer, generator, selector, epoch_losses) if saved else 0
    selector.offer(first, model.encoder)
    views = None
    for epoch in range(first + 1, epochs + 1):
        model.train()
        for batch in minibatches(len(x), settings.batch_size, generator, x.device):
            cells = x if len(batch) == len(x) else x[batch]  # the whole set: no copy
            views = two_views(augment, cells, views)
            with _precision(settings.precision, x.device):
                z = step(views)
            z1, z2 = z.float().chunk(2)  # the loss in fp32 whatever the forward pass used
            if labels is None:
                loss = nt_xent(z1, z2, settings.temperature)
            else:
                loss = supcon(z1, z2, labels[batch], settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_losses.append(loss.detach())  # read back in bulk: no device sync per epoch
        if epoch in checkpoints:
            progress.info("epoch %d/%d", epoch, epochs)
            if state is not None and epoch < epochs and state.due():
                selector.settle()
                state.save(_snapshot(epoch, model, optimizer, generator, selector, epoch_losses))
            selector.offer(epoch, model.encoder)
    selector.finish()
    total = time.perf_counter() - start
    return TrainingResult(
        losses=torch.stack(epoch_losses).cpu().tolist() if epoch_losses else [],
        validation=selector.validation,
        best=selector.best,
        seconds={"training": total - selector.waited, "validation_wait": selector.waited},
    )


def _snapshot(epoch, model, optimizer, generator, selector, losses) -> dict:
    """Everything the rest of the training depends on, before the snapshot of `epoch` is
    scored (a resumed training scores it again)."""
    return {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "losses": torch.stack(losses).cpu(),
        "validation": selector.validation,
        "best": {
            task: {
                "epoch": c.epoch,
                "score": c.score,
                "state": c.state,
                "test": [torch.from_numpy(np.asarray(a)) for a in c.test],
                "params": c.params,
            }
            for task, c in selector.best.items()
        },
    }


def _restore(saved: dict, model, optimizer, generator, selector, losses: list) -> int:
    """Put a `_snapshot` back; return its epoch."""
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    try:
        generator.set_state(saved["generator"].cpu())
    except RuntimeError:  # saved on another kind of device: its random stream cannot carry over
        log.warning("resumed on another kind of device: the noise from here on differs")
    torch.set_rng_state(saved["torch_rng"].cpu())
    losses += list(saved["losses"].to(next(model.parameters()).device))
    selector.validation = list(saved["validation"])
    selector.best = {
        task: Checkpoint(
            c["epoch"],
            c["score"],
            {k: v.cpu() for k, v in c["state"].items()},
            tuple(t.cpu().numpy() for t in c["test"]),
            c.get("params", {}),  # none in a file saved before choices were kept
        )
        for task, c in saved["best"].items()
    }
    return int(saved["epoch"])


def _precision(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _compiled(model: ContrastiveModel, compile_model: bool) -> Callable:
    return torch.compile(model) if compile_model else model
