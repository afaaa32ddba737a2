"""One contrastive training with checkpoint selection.

Every `validate_every` epochs (and before the first and after the last) the frozen encoder embeds
the training and validation cells, a classifier is fitted on the training embeddings of each task
and scored on the validation cells; each task keeps the encoder state of its best score (the
earliest on ties). Only those states are held, in memory, one copy per distinct epoch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from gsrcl.augment import Augment
from gsrcl.encoder import ContrastiveModel
from gsrcl.evaluate import FoldClassifier
from gsrcl.losses import nt_xent, supcon
from gsrcl.settings import Classifier, Contrastive

# scores one encoder snapshot: task → validation score
SnapshotScorer = Callable[[torch.nn.Module], dict[str, float]]


@dataclass
class Checkpoint:
    epoch: int
    score: float
    state: dict[str, torch.Tensor]


@dataclass
class TrainingResult:
    losses: list[float]
    validation: list[dict] = field(default_factory=list)  # rows: epoch, task, score
    best: dict[str, Checkpoint] = field(default_factory=dict)


def validation_epochs(epochs: int, every: int) -> list[int]:
    return sorted(set(range(0, epochs + 1, every)) | {epochs})


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


def train(
    model: ContrastiveModel,
    x: torch.Tensor,
    augment: Augment,
    settings: Contrastive,
    epochs: int,
    score_snapshot: SnapshotScorer,
    generator: torch.Generator,
    labels: torch.Tensor | None = None,
) -> TrainingResult:
    """Train on `x` (already on its device); `labels` switches SimCLR to SupCon."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    checkpoints = set(validation_epochs(epochs, settings.validate_every))
    result = TrainingResult(losses=[])
    epoch_losses = []
    _select(result, model, 0, score_snapshot)
    for epoch in range(1, epochs + 1):
        model.train()
        for batch in minibatches(len(x), settings.batch_size, generator, x.device):
            xb = x[batch]
            z = model(torch.cat([augment(xb), augment(xb)]))
            z1, z2 = z.chunk(2)
            if labels is None:
                loss = nt_xent(z1, z2, settings.temperature)
            else:
                loss = supcon(z1, z2, labels[batch], settings.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        epoch_losses.append(loss.detach())  # read back in bulk: no device sync per epoch
        if epoch in checkpoints:
            _select(result, model, epoch, score_snapshot)
    result.losses = torch.stack(epoch_losses).cpu().tolist() if epoch_losses else []
    return result


def _select(result: TrainingResult, model: ContrastiveModel, epoch: int, score_snapshot) -> None:
    model.eval()
    scores = score_snapshot(model.encoder)
    state = None
    for task, score in scores.items():
        result.validation.append({"epoch": epoch, "task": task, "score": score})
        best = result.best.get(task)
        if best is None or score > best.score:
            if state is None:  # one copy per epoch, shared by every task it is best for
                state = {k: v.detach().cpu().clone() for k, v in model.encoder.state_dict().items()}
            result.best[task] = Checkpoint(epoch, score, state)


@torch.no_grad()
def embed(encoder: torch.nn.Module, x: torch.Tensor, chunk: int = 8192) -> np.ndarray:
    encoder.eval()
    return torch.cat([encoder(part) for part in x.split(chunk)]).float().cpu().numpy()


def validation_scorer(
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    tasks: dict[str, tuple[np.ndarray, np.ndarray]],
    classifier: Classifier,
    inner_folds: int,
    metric: str,
) -> SnapshotScorer:
    """Scores a snapshot for each task: `tasks[name] = (train labels, validation labels)`."""

    def score(encoder: torch.nn.Module) -> dict[str, float]:
        fold = FoldClassifier(
            classifier, embed(encoder, x_train), inner_folds, metric, str(x_train.device)
        )
        prepared = fold.prepare(embed(encoder, x_val))
        return {
            name: fold.score_metric(fold.fit(y_train), prepared, y_val)
            for name, (y_train, y_val) in tasks.items()
        }

    return score


def encoder_with(model: ContrastiveModel, checkpoint: Checkpoint) -> torch.nn.Module:
    """A copy of the model's encoder holding a checkpoint's weights."""
    encoder = copy.deepcopy(model.encoder)
    encoder.load_state_dict(checkpoint.state)
    return encoder
