"""The validation hold-out and the CV folds of a dataset, and which cell-type tasks they can score.

Made once per dataset from the experiment seed, stratified on the multi-class cell type, saved with
the results and reused by every job, so all methods and baselines are scored on the same cells.

Rule for rare cell types: a task (type vs rest) is scored only if the validation part and every test
fold hold at least one cell of the type and every training fold at least two (inner CV needs two);
otherwise it is skipped and the reason is written to the splits file and the summary.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import asdict, dataclass

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split

from gsrcl.config.settings import Split
from gsrcl.data.labels import label_key
from gsrcl.errors import UserError

VALIDATION = -1  # fold number of the validation (checkpoint selection) cells


@dataclass(frozen=True)
class Task:
    name: str  # the cell type, positive class of this binary task
    cells: int
    scored: bool
    reason: str = ""


@dataclass(frozen=True)
class Folds:
    """Cell ids with their fold number (`VALIDATION` for the hold-out), and the tasks."""

    cells: list[str]
    assignment: np.ndarray
    tasks: list[Task]

    def train(self, fold: int) -> np.ndarray:
        return np.flatnonzero((self.assignment != VALIDATION) & (self.assignment != fold))

    def test(self, fold: int) -> np.ndarray:
        return np.flatnonzero(self.assignment == fold)

    def validation(self) -> np.ndarray:
        return np.flatnonzero(self.assignment == VALIDATION)

    @property
    def scored_tasks(self) -> list[str]:
        return [t.name for t in self.tasks if t.scored]


def make_folds(
    cells: list[str], labels: np.ndarray, split: Split, seed: int, cell_types: tuple | None
) -> Folds:
    _check_types(labels, cell_types)
    in_cv = int(len(labels) * (1 - split.validation_fraction))
    if in_cv < 2 * split.folds:
        raise UserError(
            f"{len(labels)} cells are too few for a {split.validation_fraction:.0%} validation "
            f"part and {split.folds} folds; use more cells or fewer folds (split.folds)"
        )
    assignment = _assign(labels, split, seed)
    folds = Folds(list(cells), assignment, [])  # the tasks are judged on this assignment
    return dataclasses.replace(folds, tasks=plan_tasks(labels, folds, split.folds, cell_types))


def _assign(labels: np.ndarray, split: Split, seed: int) -> np.ndarray:
    strata = _strata(labels, split.folds)
    index = np.arange(len(labels))
    try:
        cv_part, validation = train_test_split(
            index, test_size=split.validation_fraction, stratify=strata, random_state=seed
        )
        assignment = np.full(len(labels), VALIDATION)
        kfold = StratifiedKFold(split.folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():  # a rare stratum smaller than k is expected: plan_tasks
            warnings.filterwarnings("ignore", message="The least populated class")
            for fold, (_, test) in enumerate(kfold.split(cv_part, strata[cv_part])):
                assignment[cv_part[test]] = fold
    except ValueError as error:
        raise UserError(f"cannot split the cells as configured (split): {error}") from None
    return assignment


def _check_types(labels: np.ndarray, cell_types: tuple | None) -> None:
    present = set(np.unique(labels).tolist())
    unknown = [t for t in cell_types or () if t not in present]
    if unknown:
        raise UserError(
            f"cell_types {unknown} are not in the labels; the types are {sorted(present)}"
        )
    if len(present) < 2:
        raise UserError(
            f"the labels hold one cell type ({sorted(present)}); tasks need two or more"
        )


def _strata(labels: np.ndarray, n_folds: int) -> np.ndarray:
    """Cell types too small to spread over the folds share one stratum, so splitting never fails."""
    types, counts = np.unique(labels, return_counts=True)
    rare = set(types[counts <= n_folds])
    strata = np.array(["\0rare" if label in rare else label for label in labels], dtype=object)
    if (strata == "\0rare").sum() == 1:  # a stratum of one cannot be split: join the largest
        strata[strata == "\0rare"] = types[np.argmax(counts)]
    return strata


def plan_tasks(
    labels: np.ndarray, folds: Folds, n_folds: int, cell_types: tuple | None
) -> list[Task]:
    present, counts = np.unique(labels, return_counts=True)
    sizes = dict(zip(present.tolist(), counts.tolist(), strict=True))
    wanted = (
        list(cell_types) if cell_types else sorted(sizes, key=lambda t: (-sizes[t], label_key(t)))
    )
    unknown = [t for t in wanted if t not in sizes]
    if unknown:
        raise UserError(
            f"cell_types {unknown} are not in the labels; the types are {sorted(sizes)}"
        )
    if len(sizes) < 2:
        raise UserError(f"the labels hold one cell type ({list(sizes)}); tasks need two or more")
    return [Task(t, sizes[t], *_scorable(labels == t, folds, n_folds)) for t in wanted]


def _scorable(positive: np.ndarray, folds: Folds, n_folds: int) -> tuple[bool, str]:
    in_validation = positive[folds.validation()].sum()
    in_test = [positive[folds.test(k)].sum() for k in range(n_folds)]
    in_train = [positive[folds.train(k)].sum() for k in range(n_folds)]
    if in_validation < 1 or min(in_test) < 1 or min(in_train) < 2:
        return False, (
            f"too few cells for the split: {positive.sum()} in all, {in_validation} in validation, "
            f"{min(in_test)} in the smallest test fold, {min(in_train)} in the smallest "
            "training fold (needs 1, 1 and 2)"
        )
    return True, ""


def random_rows(cells: int, most: int) -> np.ndarray:
    """Every row of `cells`, or past `most` a random `most` of them (seed 0), sorted: what a
    figure of at most `most` cells shows."""
    if cells <= most:
        return np.arange(cells)
    return np.sort(np.random.default_rng(0).choice(cells, most, replace=False))


def stratified_sample(
    rows: np.ndarray, labels: np.ndarray, share: float, rng: np.random.Generator, floor: int = 3
) -> np.ndarray:
    """About `share` of `rows` (sorted), each label of `labels[rows]` in proportion; a label
    keeps at least `floor` of its rows where it has them, so a rare type is still seen."""
    kept = []
    for label in np.unique(labels[rows]):
        members = rows[labels[rows] == label]
        n = min(len(members), max(floor, round(share * len(members))))
        kept.append(rng.choice(members, n, replace=False))
    return np.sort(np.concatenate(kept))


def sampled_splits(
    y: np.ndarray, splits: list[tuple[np.ndarray, np.ndarray]], cells: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner `splits` of the cells labelled `y` cut to a stratified sample of about `cells` of
    them (seed `seed`): each class in proportion, with at least twice as many cells as there are
    splits. A grid searched on them costs the same at any size; its choice is refit on all."""
    if cells >= len(y):
        return splits
    kept = _sample_mask(y, cells, seed, 2 * len(splits))
    return [(train[kept[train]], test[kept[test]]) for train, test in splits]


def sampled_training(
    y: np.ndarray,
    splits: list[tuple[np.ndarray, np.ndarray]],
    cells: int,
    seed: int,
    like: list[tuple[np.ndarray, np.ndarray]] | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """`splits` with only their training cells cut to the stratified sample `sampled_splits`
    draws for them (or for the splits `like`: the same cells, as a sample of another
    cross-validation of `y`): a fit on them costs the same at any size, and every held-out cell
    is predicted."""
    if cells >= len(y):
        return splits
    kept = _sample_mask(y, cells, seed, 2 * len(like or splits))
    return [(train[kept[train]], test) for train, test in splits]


def within_sample(
    splits: list[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """The cells `splits` use (sorted) and the splits as positions among them: what a
    cross-validation over those cells alone takes."""
    rows = np.unique(np.concatenate([np.concatenate(split) for split in splits]))
    return rows, [(np.searchsorted(rows, a), np.searchsorted(rows, b)) for a, b in splits]


def _sample_mask(y: np.ndarray, cells: int, seed: int, floor: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    kept = np.zeros(len(y), dtype=bool)
    kept[stratified_sample(np.arange(len(y)), y, cells / len(y), rng, floor)] = True
    return kept


def folds_record(folds: Folds, meta: dict) -> dict:
    """The folds as saved in the results folder, with the `meta` they were made for."""
    return {
        **meta,
        "cells": folds.cells,
        "assignment": folds.assignment.tolist(),
        "tasks": [asdict(t) for t in folds.tasks],
    }


def folds_from_record(saved: dict | None, meta: dict) -> Folds | None:
    """The saved folds if they were made with the same `meta` (seed, split settings, cells)."""
    if saved is None:
        return None
    meta = json.loads(json.dumps(meta))  # compare as saved (tuples become lists)
    if any(saved.get(k) != v for k, v in meta.items()):
        return None
    try:
        tasks = [Task(**t) for t in saved["tasks"]]
        return Folds(saved["cells"], np.array(saved["assignment"]), tasks)
    except (KeyError, TypeError):
        return None
