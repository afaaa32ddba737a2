"""Shared fixtures: small real data and a tiny experiment that runs in seconds."""

from __future__ import annotations

from pathlib import Path

import pytest

from gsrcl.config.presets import PBMC68K
from gsrcl.config.settings import Classifier, Contrastive, Evaluation, Experiment, Method, Split

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"

PBMC = PBMC68K


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (the shared data folder sits beside the project in CI)")
    return path


def tiny_experiment(tmp_path: Path, **changes) -> Experiment:
    """pbmc68k_reduced, three cell types, small encoders, a few epochs, a 2-candidate grid."""
    svm = Classifier(name="svm", grid={"C": [1, 10]})
    settings = dict(
        name="tiny",
        datasets=(
            PBMC.__class__(**{**PBMC.__dict__, "cell_types": ("CD19+ B", "CD34+", "Dendritic")}),
        ),
        methods=(
            Method(loss="simclr", augmentation="noise", encoder=(64, 32), head=(32, 16)),
            Method(loss="supcon", augmentation="noise", encoder=(64, 32), head=(32, 16)),
            Method(
                loss="simclr", augmentation="masking", n_genes=200, encoder=(64, 32), head=(32, 16)
            ),
        ),
        contrastive=Contrastive(epochs=4, validate_every=2, lr=1e-3),
        split=Split(folds=3),
        evaluation=Evaluation(classifier=svm, baselines=(svm,), inner_folds=3),
        results_dir=str(tmp_path / "results"),
    )
    return Experiment(**{**settings, **changes}).validate()
