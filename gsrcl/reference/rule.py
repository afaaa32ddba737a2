"""When a cell is `Unassigned`: the rule a model is exported with, chosen on its own reference.

A cell is Unassigned when its best probability is below the threshold, or when it lies farther
from the reference cells of its predicted type than `multiplier` × that type's radius
(`gsrcl.reference.neighbourhood`). Both are chosen from held-out predictions of the reference's
own cells (each cell's probabilities from classifiers fitted without it, its neighbourhood judged
without it), so that at most BUDGET of cells of known types are Unassigned:

- multiplier: MIN_MULTIPLIER, or if more than the budget lies beyond it, what keeps the budget;
- threshold: the highest probability, at most MAX_THRESHOLD, that keeps the budget with it.

The neighbourhood gets the budget first: only it catches a type the reference never saw (such a
cell's best probability is often high: Tabula Muris granulocytes score 0.99 as NK cells).

A reference of one batch cannot show how far a new batch moves: cells of the same type from
another mouse lie farther out than any held-out reference cell. MIN_MULTIPLIER = 3 is measured
(radius = the median k-th-neighbour distance of the type's own cells): with Baron Mouse mouse 1 as
reference, 3 % of mouse 2's cells of known types lie beyond 3 radii (60 % beyond 1), while 97 % of
Tabula Muris granulocytes, a type held out of an immune reference, still do (docs/annotation.md).
MAX_THRESHOLD = 0.5 keeps "more likely this type than not": held-out probabilities of an encoder
trained on the same cells are optimistic, and a threshold chosen from them alone could be
stricter than any query deserves.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

BUDGET = 0.05
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


def choose(best: np.ndarray, ratios: np.ndarray) -> UnassignedRule:
    """The rule for held-out cells of known types: `best` probability and distance ratio each."""
    multiplier = max(MIN_MULTIPLIER, float(np.quantile(ratios, 1 - BUDGET)))
    outside = ratios > multiplier
    candidates = np.unique(np.append(best[best <= MAX_THRESHOLD], [0.0, MAX_THRESHOLD]))
    threshold = 0.0
    for candidate in candidates[::-1]:  # the highest that keeps the budget
        if np.mean((best < candidate) | outside) <= BUDGET:
            threshold = float(candidate)
            break
    return UnassignedRule(threshold, multiplier)


def held_out_rates(
    rule: UnassignedRule, best: np.ndarray, ratios: np.ndarray, correct: np.ndarray
) -> dict:
    """What the rule does to the held-out reference cells, for the manifest."""
    unassigned = rule.unassigned(best, ratios)
    assigned = ~unassigned
    return {
        "cells": int(len(best)),
        "unassigned": float(unassigned.mean()),
        "below_threshold": float((best < rule.threshold).mean()),
        "outside_neighbourhood": float((ratios > rule.multiplier).mean()),
        "accuracy": float((correct & assigned).mean()),
        "accuracy_on_assigned": float(correct[assigned].mean()) if assigned.any() else 0.0,
    }
