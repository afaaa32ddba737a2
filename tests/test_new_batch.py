"""A reference of several donors (a batch column): the Unassigned rule and "best" are judged on
each donor held out, as a new donor will be; the CellTypist-like model is among the candidates."""

from __future__ import annotations

import json
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
from sklearn.base import clone

import gsrcl
from gsrcl.config.presets import LOGISTIC, SCALED_LOGISTIC
from gsrcl.config.settings import Contrastive, Dataset, Evaluation, Experiment, Method, Split
from gsrcl.data.preprocess import SCALED_GENES
from gsrcl.errors import UserError
from gsrcl.reference import export
from gsrcl.reference.annotation import UNASSIGNED
from gsrcl.runner import jobs
from gsrcl.runner.pipeline import run_experiment
from tests.conftest import shared_file

TYPES = ["alpha", "beta", "ductal", "acinar", "delta"]


def _experiment(folder, batch: str | None) -> Experiment:
    """A tiny SimCLR beside the two logistic regressions, on three donors of human pancreas."""
    return Experiment(
        name="donors",
        datasets=(Dataset(name="pancreas", path=str(folder / "donors.h5ad"), batch=batch),),
        methods=(Method(loss="simclr", augmentation="noise", encoder=(32, 16), head=(16, 8)),),
        contrastive=Contrastive(epochs=4, validate_every=2, lr=1e-3),
        split=Split(folds=2),
        evaluation=Evaluation(baselines=(LOGISTIC, SCALED_LOGISTIC), inner_folds=3),
        results_dir=str(folder / "results"),
    ).validate()


@pytest.fixture(scope="module")
def donors(tmp_path_factory):
    folder = tmp_path_factory.mktemp("donors")
    full = ad.read_h5ad(shared_file("baron_human_3donors.h5ad"))
    full.obs_names_make_unique()
    kinds = full.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.permutation(np.flatnonzero(kinds == t))[:70] for t in TYPES])
    cells = full[np.sort(rows)].copy()
    expressed = np.asarray(cells.X.sum(axis=0)).ravel()
    cells = cells[:, np.argsort(-expressed)[:4000]].copy()  # a smaller matrix: a faster test
    cells.write_h5ad(folder / "donors.h5ad")
    experiment = _experiment(folder, "batch")
    assert run_experiment(experiment, log=lambda _: None) == 0
    lines: list[str] = []
    best = export.export_model(
        experiment, out=folder / "best", log=lines.append, keep_candidates=True
    )
    return {"folder": folder, "cells": cells, "experiment": experiment, "best": best, "log": lines}


def test_best_is_the_method_that_labels_a_held_out_donor_best(donors):
    model = gsrcl.ReferenceModel.load(donors["best"])
    selection = model.manifest["selection"]
    assert selection["rule"] == export.SELECTION_BY_BATCH + export.ENCODER_OPTIMISM
    table = selection["table"]
    assert set(table) == {"simclr-noise", "baseline-logreg", "baseline-logreg-scaled"}
    mean = {m: (v["held_out_accuracy"] + v["held_out_macro_f1"]) / 2 for m, v in table.items()}
    assert model.manifest["method"] == max(mean, key=mean.__getitem__)
    assert any("accuracy / macro-F1 on held-out reference cells" in line for line in donors["log"])
    # the other candidates, built to choose, are kept beside it with the same table, and the
    # table holds each one's own held-out figures
    models = {model.manifest["method"]: model}
    for method in set(table) - {model.manifest["method"]}:
        models[method] = gsrcl.ReferenceModel.load(donors["folder"] / f"best-{method}")
        assert models[method].manifest["method"] == method
        assert models[method].manifest["selection"] == selection
    for method, kept in models.items():
        held_out = kept.manifest["unassigned"]["held_out"]
        assert table[method]["held_out_accuracy"] == held_out["accuracy"]
        assert table[method]["held_out_macro_f1"] == held_out["macro_f1"]
    # held out: each donor's cells scored by a model fitted on the other donors alone, never by
    # the model fitted on every cell (which labels its own training cells better)
    scaled = models["baseline-logreg-scaled"]
    cell_type = scaled.types[0]
    x, _ = cell_type.input.prepare(donors["cells"])
    truth = donors["cells"].obs["cell_type"].to_numpy(dtype=str)
    held_out = _leave_one_donor_out(cell_type.classifier, x, truth, donors["cells"].obs["batch"])
    recorded = scaled.manifest["unassigned"]["held_out"]["most_probable_accuracy"]
    assert recorded == pytest.approx((held_out == truth).mean(), abs=1 / len(truth))
    fitted_on_all = cell_type.classifier.predict(x)
    assert (fitted_on_all == truth).mean() > recorded + 2 / len(truth)


def _leave_one_donor_out(classifier, x: np.ndarray, truth: np.ndarray, donors) -> np.ndarray:
    """Each donor's cells labelled by `classifier`'s settings refit on the other donors."""
    predicted = np.empty(len(truth), dtype=object)
    donors = donors.to_numpy(dtype=str)
    for donor in np.unique(donors):
        held = donors == donor
        predicted[held] = clone(classifier).fit(x[~held], truth[~held]).predict(x[held])
    return predicted


def test_a_donor_the_reference_lacks_gets_its_types_not_unassigned(donors, tmp_path):
    """A reference of two donors (their batch column) labels the third, which it never saw, in
    a file of its own (genes in another order, some missing): most of its cells get their own
    type, few are taken for novelty (Unassigned)."""
    cells = donors["cells"]
    donor = cells.obs["batch"].to_numpy(dtype=str)
    cells[donor != "human3"].copy().write_h5ad(tmp_path / "donors.h5ad")
    experiment = replace(
        _experiment(tmp_path, "batch"),
        methods=(),
        evaluation=Evaluation(baselines=(SCALED_LOGISTIC,), inner_folds=3),
    )
    assert run_experiment(experiment, log=lambda _: None) == 0
    method = "baseline-logreg-scaled"
    model = gsrcl.ReferenceModel.load(
        export.export_model(experiment, method=method, out=tmp_path / "m", log=lambda _: None)
    )
    assert "2 batches (batch: human1, human2)" in model.manifest["unassigned"]["calibrated_on"]
    genes = np.random.default_rng(2).permutation(cells.n_vars)[: int(0.98 * cells.n_vars)]
    query = cells[donor == "human3"][:, genes].copy()
    truth = query.obs["cell_type"].to_numpy(dtype=str)
    query.obs = query.obs[[]]
    predicted = gsrcl.annotate(query, model, say=lambda _: None).table["predicted"].to_numpy()
    assert (predicted == UNASSIGNED).mean() <= 0.05
    assert (predicted == truth).mean() >= 0.9


def test_an_encoders_classifier_keeps_the_settings_chosen_with_its_snapshot(donors):
    """Export refits no grid the CV searched: each encoder type's SVM takes the settings its
    fold chose on the snapshot it kept (jobs record them), and is not searched again."""
    folders = [donors["best"], *donors["folder"].glob("best-*")]
    models = [gsrcl.ReferenceModel.load(f) for f in folders]
    (simclr,) = [m for m in models if m.manifest["method"] == "simclr-noise"]
    run = donors["folder"] / "results" / "donors" / "jobs" / "pancreas" / "simclr-noise"
    for entry in simclr.manifest["cell_types"]:
        metrics = json.loads((run / f"fold-{entry['fold']}" / "metrics.json").read_text())
        (row,) = [r for r in metrics["rows"] if r["task"] == entry["name"]]
        assert row["params"]["C"] == entry["classifier_params"]["C"]
        assert row["params"]["gamma"] in ("scale", entry["classifier_params"]["gamma"])
        assert any(
            f"  {entry['name']}: " in line and "the CV's choice" in line for line in donors["log"]
        )


def test_the_rule_is_calibrated_on_each_donor_held_out(donors):
    """The same run exported with and without the batch column: held out by donor, the cells lie
    farther from the other donors' cells than from their own donor's, so the multiplier grows,
    and the held-out accuracy is lower (what a new donor will see)."""
    folder = donors["folder"]
    within = _experiment(folder, None)
    job = jobs.plan(within)[0]
    assert jobs.fingerprint(within, job) == jobs.fingerprint(donors["experiment"], job)  # no rerun
    method = "baseline-logreg-scaled"
    by_donor = export.export_model(donors["experiment"], method=method, out=folder / "by-donor")
    plain = export.export_model(within, method=method, out=folder / "within", log=lambda _: None)
    by_donor, plain = (
        gsrcl.ReferenceModel.load(f).manifest["unassigned"] for f in (by_donor, plain)
    )
    assert "3 batches (batch: human1, human2, human3)" in by_donor["calibrated_on"]
    assert plain["calibrated_on"] == export.WITHIN_BATCHES
    assert by_donor["multiplier"] > plain["multiplier"] >= 3
    assert by_donor["held_out"]["accuracy"] < plain["held_out"]["accuracy"]
    assert by_donor["held_out"]["cells"] == plain["held_out"]["cells"] == donors["cells"].n_obs
    # the budget is spent on the cells labelled right; the wrongly labelled are flagged more
    assert by_donor["held_out"]["unassigned_when_right"] <= 0.02
    assert by_donor["held_out"]["unassigned"] > by_donor["held_out"]["unassigned_when_right"]


def test_the_scaled_model_reads_its_genes_by_name_in_any_order(donors):
    folder = donors["folder"]
    path = export.export_model(
        donors["experiment"], method="baseline-logreg-scaled", out=folder / "scaled", log=print
    )
    model = gsrcl.ReferenceModel.load(path)
    assert model.kind == "expression" and len(model.genes) == SCALED_GENES
    cells = donors["cells"].copy()
    cells.obs = cells.obs[[]]
    table = gsrcl.annotate(cells, model, say=lambda _: None).table
    shuffled = cells[:, np.random.default_rng(1).permutation(cells.n_vars)].copy()
    again = gsrcl.annotate(shuffled, model, say=lambda _: None).table
    assert (table["predicted"] == again["predicted"]).all()
    truth = donors["cells"].obs["cell_type"].to_numpy(dtype=str)
    assert (table["most_probable"].to_numpy() == truth).mean() > 0.9


def test_a_batch_column_the_data_lacks_is_named(donors):
    experiment = donors["experiment"]
    spec = replace(experiment.datasets[0], batch="donor")
    wrong = replace(experiment, datasets=(spec,))
    with pytest.raises(UserError, match="no obs column 'donor' for `batch`"):
        export.export_model(wrong, out=donors["folder"] / "wrong", log=lambda _: None)
