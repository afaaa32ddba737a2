"""How a logistic regression should weigh rare types, judged on the references alone.

    python3 bench/class_weights.py   # about 15 min on 2 CPU cores; writes docs/class-weights.md

For each reference of bench/crossbatch.py (Baron human: two donors with their batch column, each
held out in turn; Baron mouse 1 and the Tabula Muris immune reference: the inner folds), the
scaled-gene logistic regression (`logreg-scaled`) is fitted as export fits it
(`gsrcl.evaluate.classifiers.multiclass_classifier`: grid search on the held-out splits, the
batches where there are some, then each held-out split refit without it) with each weighting:
plain `class_weight="balanced"` (a floor of 1), floors of 10, 20 and 50 cells
(`BalancedLogisticRegression`) and no weights (CellTypist's choice), each searched over C; and
the default, whose grid holds the floors 20 and 50 too. Printed: accuracy and macro-F1 of the
most probable type on the held-out cells, the quantity "best" is chosen by (before the
Unassigned rule). No query cell is used: the weighting is chosen where a user could choose it.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, f1_score
from sklearn.model_selection import LeaveOneGroupOut

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from crossbatch import cases, markdown  # noqa: E402

from gsrcl.config.presets import SCALED_LOGISTIC  # noqa: E402
from gsrcl.config.settings import Evaluation  # noqa: E402
from gsrcl.data.preprocess import fit_features  # noqa: E402
from gsrcl.evaluate.classifiers import multiclass_classifier  # noqa: E402

PAGE = ROOT / "docs" / "class-weights.md"
WEIGHTINGS = {
    "balanced (floor 1)": {"balance_floor": 1},
    "floor 10": {"balance_floor": 10},
    "floor 20": {"balance_floor": 20},
    "floor 50": {"balance_floor": 50},
    "floor 20 or 50, searched (default)": {},
    "none (CellTypist)": None,
}


def spec_for(weights: dict | None):
    """logreg-scaled with that weighting, searched over C only ({}: the default, as it is);
    None = scikit-learn's unweighted LogisticRegression."""
    if weights == {}:
        return SCALED_LOGISTIC
    grid = {"C": SCALED_LOGISTIC.grid["C"]}
    if weights is None:
        estimator = "sklearn.linear_model.LogisticRegression"
        return replace(SCALED_LOGISTIC, estimator=estimator, grid=grid)
    return replace(SCALED_LOGISTIC, params={**SCALED_LOGISTIC.params, **weights}, grid=grid)


def held_out(reference, batch: str | None, specs: dict) -> dict[str, tuple[float, float]]:
    """For each named spec: accuracy and macro-F1 of the most probable type on the held-out
    reference cells. The specs differ only in weighting, so the features are fitted once."""
    labels = reference.obs["cell_type"].to_numpy(dtype=str)
    x = fit_features(SCALED_LOGISTIC.features, reference, "counts").transform(reference)
    splits = None
    if batch is not None:
        groups = reference.obs[batch].to_numpy(dtype=str)
        splits = list(LeaveOneGroupOut().split(x, groups=groups))
    evaluation, types = Evaluation(), sorted(set(labels))
    scores = {}
    for name, spec in specs.items():
        model = multiclass_classifier(
            spec,
            x,
            labels,
            inner_folds=evaluation.inner_folds,
            metric=evaluation.metric,
            seed=0,
            held_out_splits=splits,
        )
        predicted = np.asarray(model.classes)[model.held_out.argmax(axis=1)]
        macro = f1_score(labels, predicted, labels=types, average="macro", zero_division=0)
        scores[name] = float(accuracy_score(labels, predicted)), float(macro)
    return scores


def main() -> None:
    rows = []
    specs = {name: spec_for(weights) for name, weights in WEIGHTINGS.items()}
    for case in cases():
        for name, (accuracy, macro) in held_out(case.reference, case.batch, specs).items():
            rows.append(
                {
                    "reference": case.name,
                    "weighting": name,
                    "accuracy": accuracy,
                    "macro-F1": macro,
                    "mean": (accuracy + macro) / 2,
                }
            )
            print(f"{case.name:8} {name:20} {accuracy:.3f} {macro:.3f}", flush=True)
    table = pd.DataFrame(rows)
    means = table.pivot(index="weighting", columns="reference", values="mean")
    text = "\n".join(
        [
            "# Rare types in the logistic regressions: how much to balance",
            "",
            "Written by `python3 bench/class_weights.py` (see its docstring). Held-out cells of "
            "each reference only (each donor of a Baron human reference held out in turn; the "
            "inner folds elsewhere); most probable type, before the Unassigned rule. "
            "`logreg-scaled` searches the floors 20 and 50 with C (gsrcl/config/presets.py); "
            "gsrcl/evaluate/balanced.py says why.",
            "",
            "Mean of accuracy and macro-F1:",
            "",
            markdown(means.round(4)),
            "",
            "Every figure:",
            "",
            markdown(table.round(4).set_index("reference")),
            "",
        ]
    )
    PAGE.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
