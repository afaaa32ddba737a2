"""The RBF SVM past `evaluation.exact_max_cells`: Nystroem features and a linear SVM
(gsrcl/evaluate/nystroem_svm.py), where the runner switches to it, and what results say."""

import json
import tracemalloc
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from sklearn.metrics import matthews_corrcoef
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from gsrcl.config.presets import LOGISTIC, svm
from gsrcl.config.settings import Approximation
from gsrcl.data.dataset import DatasetCache
from gsrcl.evaluate import nystroem_svm
from gsrcl.evaluate.classifiers import FoldClassifier, fitted_as, resolve_solver
from gsrcl.evaluate.kernel_svm import PrecomputedRBF
from gsrcl.evaluate.nystroem_svm import NystroemRBF, features, landmark_weights
from gsrcl.runner import jobs, pipeline
from gsrcl.runner.pipeline import run_experiment
from gsrcl.runner.retention import job_states
from gsrcl.runner.run_folder import RunFolder
from tests.conftest import tiny_experiment

TASKS = ["CD14+ Monocyte", "CD19+ B", "Dendritic"]


@pytest.fixture(scope="module")
def pbmc():
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    x = np.asarray(adata.X.todense(), dtype=np.float32)
    return x, adata.obs["bulk_labels"].astype(str).to_numpy()


def test_the_solver_switches_exactly_above_exact_max_cells(pbmc):
    x, _ = pbmc
    spec = svm()
    assert resolve_solver("auto", spec, "cpu", 300, 300) == "libsvm"
    assert resolve_solver("auto", spec, "cpu", 301, 300) == "nystroem"
    # a GPU job past the threshold gets the approximation, never the exact device solver
    assert resolve_solver("auto", spec, "cuda:0", 300, 300) == "device"
    assert resolve_solver("auto", spec, "cuda:0", 301, 300) == "nystroem"
    assert resolve_solver("device", spec, "cuda:0", 301, 300) == "nystroem"
    assert resolve_solver("libsvm", spec, "cpu", 10**6, None) == "libsvm"  # None: always exact
    assert resolve_solver("nystroem", spec, "cpu", 5, None) == "nystroem"  # asked for

    past_300 = Approximation(exact_max_cells=300)
    at = FoldClassifier(spec, x[:300], inner_folds=3, metric="mcc", approximation=past_300)
    above = FoldClassifier(spec, x[:301], inner_folds=3, metric="mcc", approximation=past_300)
    assert isinstance(at.rbf_solver, PrecomputedRBF) and at.approximation == ""
    assert isinstance(above.rbf_solver, NystroemRBF)
    assert above.approximation == "approximate (Nystroem, m=200)"  # the default m
    more = FoldClassifier(
        spec,
        x[:301],
        inner_folds=3,
        metric="mcc",
        solver="nystroem",
        approximation=Approximation(components=500, search_max_cells=200),
    )
    # m: at most the cells; the search's sample named when it is not every cell
    assert more.approximation == "approximate (Nystroem, m=301, grid searched on 200 cells)"
    logistic = FoldClassifier(
        LOGISTIC, x[:301], inner_folds=3, metric="mcc", approximation=past_300
    )
    assert logistic.rbf_solver is None and logistic.approximation == ""


def test_scale_and_the_features_mean_what_svc_and_nystroem_mean(pbmc):
    x, labels = pbmc
    solver = NystroemRBF(x[:400], Approximation(components=50), seed=3)
    # "scale": 1 / (n_features · X.var()) of the training cells, as SVC resolves it
    svc = SVC(gamma="scale").fit(x[:400], labels[:400] == "CD19+ B")
    assert solver.gamma("scale") == pytest.approx(svc._gamma, rel=1e-9)
    assert solver.gamma(1e-3) == 1e-3
    # features from the stored distances are Nystroem's own transform of the cells
    gamma = solver.gamma("scale")
    nystroem = solver.nystroem(gamma)
    ours = features(solver.distances(x[400:]), gamma, landmark_weights(nystroem))
    assert ours.dtype == np.float32
    assert np.allclose(ours, nystroem.transform(x[400:]), atol=1e-4)


def test_past_search_max_cells_the_grid_is_searched_on_a_stratified_sample(pbmc, monkeypatch):
    x, labels = pbmc
    y = labels == "Dendritic"  # 28 of 700 cells
    fold = FoldClassifier(
        svm(),
        x,
        inner_folds=3,
        metric="mcc",
        solver="nystroem",
        approximation=Approximation(components=50, search_max_cells=300),
    )
    splits = fold.inner_splits(y)
    sampled = fold.rbf_solver._sampled(y, splits)
    rows = np.concatenate([test for _, test in sampled])
    assert 290 <= len(rows) <= 310 and len(np.unique(rows)) == len(rows)
    assert abs(y[rows].mean() - y.mean()) < 0.01  # the type in proportion
    for (train, test), (all_train, all_test) in zip(sampled, splits, strict=True):
        assert np.isin(train, all_train).all() and np.isin(test, all_test).all()
        assert np.isin(train, rows).all() and y[test].sum() >= 2
    fitted_on = []
    fit = NystroemRBF._fit
    monkeypatch.setattr(
        NystroemRBF,
        "_fit",
        lambda self, fx, fy, p: fitted_on.append(len(fy)) or fit(self, fx, fy, p),
    )
    fold.fit_and_choices([y], [splits])
    *searched, refit = fitted_on
    assert len(searched) == 16 * 3 and max(searched) < 300  # the grid on the sample's splits
    assert refit == len(x)  # the choice on every cell


def test_past_exact_max_cells_a_multiclass_grid_is_searched_on_a_sample_too(pbmc):
    x, labels = pbmc
    approximation = Approximation(exact_max_cells=400, search_max_cells=300)
    fold = FoldClassifier(LOGISTIC, x, inner_folds=3, metric="mcc", approximation=approximation)
    (model,), (choice,) = fold.fit_and_choices([labels], [None])
    search = fold._grid_search(labels, fold.inner_splits(labels))
    rows = np.concatenate([test for _, test in search.cv])
    assert 290 <= len(rows) <= 310 and choice == search.best_params_
    assert set(model.classes_) == set(labels)  # refit on every cell, every type
    named = fitted_as(LOGISTIC, "", len(x), approximation)
    assert named == f"grid searched on 300 of {len(x)} cells"
    assert fitted_as(LOGISTIC, "", 400, approximation) == ""  # at the threshold: every cell


def _exact_and_approximate(pbmc, components: int):
    """Each solver's search of the paper's grid on the same inner splits (its score tables and
    choices) and the test MCC of its models; the approximate fold classifier."""
    x, labels = pbmc
    train, test = train_test_split(
        np.arange(len(x)), test_size=0.25, stratify=labels, random_state=0
    )
    tasks = [labels[train] == t for t in TASKS]
    out = {}
    for solver in ("libsvm", "nystroem"):
        fold = FoldClassifier(
            svm(),
            x[train],
            inner_folds=3,
            metric="mcc",
            solver=solver,
            approximation=Approximation(components=components),
        )
        search = fold.search(tasks, [fold.inner_splits(y) for y in tasks])
        prepared = fold.prepare(x[test])
        mcc = [
            matthews_corrcoef(labels[test] == t, fold.task_outputs(m, prepared)[0])
            for t, m in zip(TASKS, search.models, strict=True)
        ]
        out[solver] = (search, np.array(mcc))
    return out["libsvm"], out["nystroem"], fold, train


def _agreement(exact, approximate) -> tuple[list[float], list[float], float]:
    """Per task: the mean |difference| of the two score tables (candidates' inner-CV means),
    and how far below the exact search's best its score of the approximation's choice is;
    and the largest test MCC difference."""
    tables = zip(exact[0].scores, approximate[0].scores, strict=True)
    table_gap = [float(np.abs(a.mean(1) - b.mean(1)).mean()) for a, b in tables]
    choice_loss = [
        float(t.mean(1).max() - t.mean(1)[c])
        for t, c in zip(exact[0].scores, approximate[0].chosen, strict=True)
    ]
    return table_gap, choice_loss, float(np.abs(exact[1] - approximate[1]).max())


def test_with_every_cell_a_landmark_it_searches_as_libsvm_does(pbmc):
    """m ≥ the cells: the features span the exact kernel, and liblinear's hinge loss is SVC's
    objective (but for the penalised intercept): every candidate scores as under libsvm, so
    the choice is libsvm's or one it scores the same."""
    exact, approximate, fold, _ = _exact_and_approximate(pbmc, components=10_000)
    assert fold.rbf_solver.components == len(fold.rbf_solver.x)
    table_gap, choice_loss, mcc_gap = _agreement(exact, approximate)
    assert max(table_gap) < 0.01 and max(choice_loss) < 0.005, (table_gap, choice_loss)
    assert mcc_gap < 0.05


def test_a_hundred_landmarks_score_close_to_the_exact_svm(pbmc):
    exact, approximate, fold, train = _exact_and_approximate(pbmc, components=100)
    table_gap, choice_loss, mcc_gap = _agreement(exact, approximate)
    assert max(table_gap) < 0.1 and max(choice_loss) < 0.05, (table_gap, choice_loss)
    assert np.abs(exact[1] - approximate[1]).mean() < 0.05 and mcc_gap < 0.1
    # the fitted model on features (what export refits and saves) decides as it does
    model = fold.fit(pbmc[1][train] == "CD19+ B")
    x = pbmc[0][-50:]
    decisions = model.decision_function(fold.prepare(x).features)
    on_features = model.nystroem.transform(x) - model.mean  # centred on the training cells
    assert np.allclose(model.svm.decision_function(on_features), decisions, atol=1e-4)
    refit = model.on_features()
    assert nystroem_svm.is_pipeline(refit)
    assert refit.named_steps["nystroem"].gamma == model.gamma
    refit.fit(pbmc[0][train], pbmc[1][train] == "CD19+ B")  # the same model, refit whole
    centre = refit.named_steps["centre"].mean_  # its landmarks the same, in its own order
    assert np.allclose(np.sort(centre), np.sort(model.mean), atol=1e-4)
    assert np.allclose(refit.decision_function(x), decisions, atol=0.05)


def test_the_approximate_path_holds_no_cells_by_cells_array(pbmc, monkeypatch):
    x, labels = pbmc
    # 1400 cells of 60 genes: the cells themselves are small beside cells × cells
    x = np.vstack([x[:, :60], x[:, :60] + np.random.default_rng(0).random((len(x), 60))])
    labels = np.concatenate([labels, labels])
    n, m = len(x), 40
    made = []
    real = nystroem_svm.squared_distances

    def watched(a, b):
        out = real(a, b)
        made.append(tuple(out.shape))
        return out

    monkeypatch.setattr(nystroem_svm, "squared_distances", watched)
    tracemalloc.start()
    fold = FoldClassifier(
        svm(True),
        x,
        inner_folds=3,
        metric="mcc",
        approximation=Approximation(components=m),
        solver="nystroem",
    )
    models, _ = fold.fit_and_choices([labels == t for t in TASKS], [None] * len(TASKS))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert made and all(shape[1] == m for shape in made)
    # what the solver made and holds (not the cells it was given) is cells × m or m × m
    held = {k: v for k, v in vars(fold.rbf_solver).items() if k != "x"}
    arrays = [v for v in held.values() if isinstance(v, np.ndarray)]
    arrays += list((fold.rbf_solver._features or (0, np.empty((0, m))))[1:])
    arrays += [a for model in models for a in (model.weights, model.mean)]
    assert len(arrays) >= 4 and all(m in a.shape for a in arrays), [a.shape for a in arrays]
    # every numpy array made on the way, together, stayed under one float32 cells × cells
    assert peak < n * n * 4, peak


def test_results_say_which_classifiers_were_approximate(tmp_path, monkeypatch):
    experiment = tiny_experiment(tmp_path, methods=())
    folds = pipeline.dataset_folds(experiment.datasets[0], experiment, DatasetCache(), None)
    cells = [len(folds.train(k)) for k in range(experiment.split.folds)]
    threshold = max(cells) - 1  # the largest fold(s) just above it, any other at or below
    approximate = [k for k, c in enumerate(cells) if c > threshold]
    assert 0 < len(approximate) < len(cells), cells
    evaluation = replace(experiment.evaluation, exact_max_cells=threshold, nystroem_components=50)
    experiment = replace(experiment, evaluation=evaluation)
    lines = []
    assert run_experiment(experiment, log=lines.append) == 0
    run = tmp_path / "results" / "tiny"
    label = "approximate (Nystroem, m=50)"

    for k in range(len(cells)):
        record = json.loads(
            (
                run / "jobs" / "pbmc68k_reduced" / "baseline" / f"fold-{k}" / "metrics.json"
            ).read_text()
        )
        assert record["solvers"] == {"svm": "nystroem" if k in approximate else "libsvm"}
        assert {row.get("fitted") for row in record["rows"]} == {
            label if k in approximate else None
        }
    recorded = json.loads((run / "experiment.json").read_text())["approximate"]
    assert recorded == {
        "pbmc68k_reduced": {"baseline-svm": {"fitted": label, "folds": approximate}}
    }
    summary = pd.read_csv(run / "summary.csv", keep_default_na=False)
    where = f" in {len(approximate)} of {len(cells)} folds"
    assert set(summary["note"]) == {f"classifier {label}{where}"}
    page = (run / "report.html").read_text()
    assert (
        "Approximate classifiers" in page
        and f"pbmc68k_reduced / baseline-svm: classifier {label}" in page
    )
    assert " ≈" in page and "approximate classifiers" in page  # the scores marked; the facts
    assert "Approximate classifiers" in (run / "summary.md").read_text()
    assert any(label in line and "baseline-svm" in line for line in lines)  # said before and after
    # another version of the approximation: its jobs are redone, the exact ones kept
    planned = jobs.plan(experiment)
    monkeypatch.setattr(nystroem_svm, "VERSION", nystroem_svm.VERSION + 1)
    states = {
        job.fold: state.status
        for job, state in job_states(experiment, RunFolder.of(experiment), planned).items()
    }
    assert states == {k: "stale" if k in approximate else "done" for k in range(len(cells))}


def test_an_exact_run_says_nothing_of_approximations(tmp_path):
    from gsrcl.report.page import approximate_note, markdown_table
    from gsrcl.runner.summary import mcc_table

    summary = pd.DataFrame(
        {
            "dataset": ["d", "d"],
            "task": ["a", "a"],
            "cells": [10, 10],
            "note": ["", "classifier approximate (Nystroem, m=5)"],
            "method": ["baseline-svm", "simclr-noise"],
            "folds": [2, 2],
            **{f"{m}_{s}": [0.5, 0.6] for m in ("mcc", "f1", "ap") for s in ("mean", "se")},
        }
    )
    exact = summary.assign(note="")
    assert approximate_note(exact) == [] and "≈" not in markdown_table(
        exact, "mcc", ["baseline-svm", "simclr-noise"]
    )
    assert "Nystroem" not in mcc_table(exact)
    table = markdown_table(summary, "mcc", ["baseline-svm", "simclr-noise"])
    assert "0.500 ± 0.500 |" in table and "0.600 ± 0.600** ≈" in table
    assert "d / simclr-noise: classifier approximate (Nystroem, m=5)" in mcc_table(summary)


def test_export_calibrates_and_saves_an_approximate_classifier(tmp_path):
    """Past the threshold export's classifiers are Nystroem pipelines on the features: the CV's
    choice honoured, held-out probabilities from their own splits, a model on the genes that a
    classifier file holds (skops, the model folder's trusted types) and that reads back."""
    import skops.io

    from gsrcl.evaluate.classifiers import calibrated_classifiers, multiclass_classifier
    from gsrcl.reference.model import TRUSTED_TYPES

    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 20))
    labels = [(x[:, 0] + rng.normal(size=240) * 0.5) > 0.7, x[:, 1] > 0.9]
    approximation = Approximation(exact_max_cells=239, components=50)
    settings = {"inner_folds": 3, "metric": "mcc", "seed": 0, "approximation": approximation}
    choice = {"gamma": "scale", "C": 10}
    given, searched = calibrated_classifiers(svm(), x, labels, **settings, choices=[choice, None])
    assert given.params["C"] == 10 and given.params["gamma"] == pytest.approx(1 / (20 * x.var()))
    assert given.params["solver"] == "nystroem" and given.params["n_components"] == 50
    assert searched.params["solver"] == "nystroem" and 0 <= searched.held_out.min()
    model = given.model()
    path = tmp_path / "type.skops"
    skops.io.dump(model, path)
    loaded = skops.io.load(path, trusted=TRUSTED_TYPES)
    query = rng.normal(size=(30, 20))
    np.testing.assert_allclose(loaded.predict_proba(query), model.predict_proba(query))
    # a held-out cell is less sure than the same cell under the model fitted on all of them
    fitted = model.predict_proba(x)[:, 1]
    assert np.abs(given.held_out - labels[0]).mean() > np.abs(fitted - labels[0]).mean()

    multiclass = replace(svm(), multiclass=True)
    types = np.where(labels[0], "a", np.where(labels[1], "b", "c"))
    every = multiclass_classifier(multiclass, x, types, **settings)
    assert every.params["solver"] == "nystroem" and every.held_out.shape == (240, 3)
    assert every.model().predict_proba(query).shape == (30, 3)


def test_export_past_exact_max_cells_fits_on_a_sample_and_saves_a_loadable_model(
    pbmc, tmp_path, monkeypatch
):
    """Export's calibration and held-out fits run on the search's sample, every cell still
    held out; the model is fitted on every cell and annotate's loader takes it."""
    import skops.io

    from gsrcl.evaluate.classifiers import calibrated_classifiers
    from gsrcl.reference import model as reference_model

    x, labels = pbmc
    rows_fitted = []
    real_fit = Pipeline.fit

    def watched(self, x_fit, y, **kwargs):
        rows_fitted.append(x_fit.shape[0])
        return real_fit(self, x_fit, y, **kwargs)

    monkeypatch.setattr(Pipeline, "fit", watched)
    batches = np.arange(len(x)) % 2
    held_out_splits = [(np.flatnonzero(batches != b), np.flatnonzero(batches == b)) for b in (0, 1)]
    approximation = Approximation(exact_max_cells=300, components=40, search_max_cells=200)
    tasks = [labels == t for t in TASKS[:2]]
    calibrated = calibrated_classifiers(
        svm(True),
        x,
        tasks,
        inner_folds=3,
        metric="mcc",
        seed=0,
        held_out_splits=held_out_splits,
        approximation=approximation,
    )
    assert all(c.held_out.shape == (len(x),) and np.isfinite(c.held_out).all() for c in calibrated)
    assert rows_fitted and max(rows_fitted) < 300, rows_fitted  # samples, not the 700 cells
    positive = calibrated[1].held_out[tasks[1]].mean()
    assert positive > 2 * calibrated[1].held_out[~tasks[1]].mean()  # held out, it still knows B
    model = calibrated[1].model()
    assert rows_fitted[-1] == len(x)  # the model itself on every cell
    skops.io.dump(model, tmp_path / "b.skops")
    loaded = reference_model._classifier(tmp_path / "b.skops")
    assert np.allclose(loaded.predict_proba(x[:20]), model.predict_proba(x[:20]))


def test_export_holds_out_on_the_calibrations_sample(pbmc, monkeypatch):
    """Past exact_max_cells each held-out split's fit runs on the calibration's sample of its
    training cells, also where the held-out splits (batches) are fewer than the inner folds:
    a rare type's sample is not drawn again with another floor."""
    from gsrcl.evaluate.classifiers import calibrated_classifiers

    x, labels = pbmc
    row_of = {row.tobytes(): i for i, row in enumerate(x)}
    assert len(row_of) == len(x)
    fits: list[set[int]] = []
    real_fit = Pipeline.fit

    def watched(self, x_fit, y, **kwargs):
        fits.append({row_of[row.tobytes()] for row in x_fit})
        return real_fit(self, x_fit, y, **kwargs)

    monkeypatch.setattr(Pipeline, "fit", watched)
    batches = np.arange(len(x)) % 2
    held_out_splits = [(np.flatnonzero(batches != b), np.flatnonzero(batches == b)) for b in (0, 1)]
    rare = labels == "CD4+/CD45RA+/CD25- Naive T"  # 8 cells: the floor decides its sample
    calibrated_classifiers(
        svm(True),
        x,
        [rare],
        inner_folds=3,
        metric="mcc",
        seed=0,
        held_out_splits=held_out_splits,
        approximation=Approximation(exact_max_cells=300, components=40, search_max_cells=200),
    )
    sample = max(fits[:-2], key=len)  # the calibration's fit on its whole sample
    assert len(sample) < len(x)
    # each batch's training part is the sample's cells of the other batch: together the sample
    assert fits[-2] | fits[-1] == sample, len(sample ^ (fits[-2] | fits[-1]))


def test_the_approximate_search_is_the_same_on_two_threads_run_after_run(pbmc):
    """liblinear seeds C's process-wide rand() at each fit: fits side by side drew from each
    other's sequence and the same seed gave other scores run to run."""
    from gsrcl.evaluate.workers import Workers

    x, labels = pbmc
    tasks = [labels == t for t in TASKS]
    tables = []
    for _ in range(2):
        with Workers(2) as workers:
            fold = FoldClassifier(
                svm(),
                x,
                inner_folds=3,
                metric="mcc",
                solver="nystroem",
                workers=workers,
                approximation=Approximation(components=60),
            )
            search = fold.search(tasks, [fold.inner_splits(y) for y in tasks])
        tables.append(np.stack(search.scores))
    assert np.array_equal(tables[0], tables[1], equal_nan=True)
