"""When a cell is `Unassigned`: the rule a model is exported with, chosen on its own reference.

A cell is Unassigned when its best probability (as a share, `shares`) is below the threshold, or
when it lies farther from the reference cells of its predicted type than `multiplier` × that
type's radius (`gsrcl.reference.neighbourhood`). Both are chosen from held-out predictions of
the reference's own cells, so that at most BUDGET of the cells they label right are Unassigned:

- multiplier: MIN_MULTIPLIER, or if more than the budget lies beyond it, what keeps the budget;
- threshold: the highest probability, at most MAX_THRESHOLD, below which at most THRESHOLD_SHARE
  of the cells fall, and that keeps the whole budget with the multiplier.

Held out how: with a batch column (donor, sample, animal), each batch is predicted by models
fitted without it and judged against the other batches' cells, which is what a new batch will
look like; without one, each cell by the inner fold that held it out and judged without itself
(a new batch's ordinary shift may then be taken for novelty; the manifest says which).

The neighbourhood gets the budget first: only it catches a type the reference never saw (such a
cell's best probability is often high: Tabula Muris granulocytes score 0.99 as NK cells). The
threshold only catches cells the classifier finds ambiguous, so it gets a small share.
MIN_MULTIPLIER = 3 is chosen on the references alone, as every constant of the labelling is
(bench/constants.py, docs/constants.md; never on a query of bench/crossbatch.py): each Baron
human reference's donors held out in turn, labelled from the other donor alone (one batch, so the
rule is calibrated within it: where the floor binds), a floor of 3 leaves 0.4-0.8 % of the
held-out donor's cells of known types Unassigned, within the budget on every reference; no floor
(the held-out ratios' percentile alone, 2 the same) leaves up to 2.7 %, beyond it; 4 keeps
within it too but catches fewer cells of a type removed from the reference (radius = the median
k-th-neighbour distance of the type's own cells, 50 components). 99 % of Tabula Muris
granulocytes, a type held out of an immune reference, lie beyond 3 radii (97 % beyond 4;
tests/test_annotate.py). A leave-one-batch-out multiplier (the 98th percentile of the held-out
batches' ratios) is 3.7-4.3 on Baron human. MAX_THRESHOLD = 0.5 keeps "more likely this type
than not": held-out probabilities of an encoder trained on the same cells are optimistic, and
a threshold chosen from them alone could be stricter than any query deserves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import f1_score

BUDGET = 0.02
THRESHOLD_SHARE = 0.01
MIN_MULTIPLIER = 3.0
MAX_THRESHOLD = 0.5


@dataclass(frozen=True)
class UnassignedRule:
    threshold: float
    multiplier: float

    def unassigned(self, best: np.ndarray, ratios: np.ndarray) -> np.ndarray:
        return (best < self.threshold) | (ratios > self.multiplier)

    def to_record(self) -> dict:
        return asdict(self)


def shares(probabilities: np.ndarray) -> np.ndarray:
    """Each type's share of a cell's summed probabilities (cells × types), so they sum to 1.

    Calibrated one-against-the-rest probabilities drift down together on a new batch: on Baron
    Mouse mouse 2, 93 % of alpha cells had no type above 0.5 under GsRCL's classifiers although
    alpha was the most probable type for most of them; their shares keep the ranking and stay
    comparable across batches (a multi-class model's probabilities are unchanged)."""
    total = probabilities.sum(axis=1, keepdims=True)
    return probabilities / np.where(total > 0, total, 1)


def choose(
    best: np.ndarray,
    ratios: np.ndarray,
    correct: np.ndarray | None = None,
    floor: float = MIN_MULTIPLIER,
) -> UnassignedRule:
    """The rule for held-out cells of known types: `best` probability and distance ratio each;
    the multiplier at least `floor` (bench/constants.py scores other floors).
    The budget is spent on the cells labelled right (`correct`; all when None): a cell given the
    wrong type lies far from that type's cells, and Unassigned is the better answer for it. Held
    out by batch this matters: a type one batch barely has is mostly mislabelled in the other's
    predictions (Baron human, ref human2 + human3: 160 of human3's 208 acinar cells called ductal
    by a model fitted on human2's single acinar cell), and those cells would set the multiplier."""
    judged = np.ones(len(best), dtype=bool) if correct is None else correct
    best, ratios = best[judged], ratios[judged]
    multiplier = max(floor, float(np.quantile(ratios, 1 - BUDGET, method="higher")))
    outside = ratios > multiplier
    candidates = np.unique(np.append(best[best <= MAX_THRESHOLD], [0.0, MAX_THRESHOLD]))
    threshold = 0.0
    for candidate in candidates[::-1]:  # the highest that keeps its share and the budget
        below = best < candidate
        if np.mean(below) <= THRESHOLD_SHARE and np.mean(below | outside) <= BUDGET:
            threshold = float(candidate)
            break
    return UnassignedRule(threshold, multiplier)


def held_out_rates(
    rule: UnassignedRule,
    best: np.ndarray,
    ratios: np.ndarray,
    predicted: np.ndarray,
    truth: np.ndarray,
) -> dict:
    """What the rule does to the held-out reference cells (type indexes `predicted`, `truth`),
    for the manifest: Unassigned shares, accuracy and macro-F1 (Unassigned counts as wrong)."""
    unassigned = rule.unassigned(best, ratios)
    assigned = ~unassigned
    correct = predicted == truth
    labelled = np.where(assigned, predicted, -1)
    return {
        "cells": int(len(best)),
        "unassigned": float(unassigned.mean()),
        "unassigned_when_right": float(unassigned[correct].mean()) if correct.any() else 0.0,
        "below_threshold": float((best < rule.threshold).mean()),
        "outside_neighbourhood": float((ratios > rule.multiplier).mean()),
        "accuracy": float((correct & assigned).mean()),
        "accuracy_on_assigned": float(correct[assigned].mean()) if assigned.any() else 0.0,
        "macro_f1": float(
            f1_score(truth, labelled, labels=np.unique(truth), average="macro", zero_division=0)
        ),
        "most_probable_accuracy": float(correct.mean()),
    }
