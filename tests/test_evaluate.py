import warnings
from dataclasses import replace

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import matthews_corrcoef
from sklearn.model_selection import GridSearchCV, LeaveOneGroupOut, train_test_split
from sklearn.svm import SVC

from gsrcl.config.presets import LOGISTIC, PAPER, SCALED_LOGISTIC, svm
from gsrcl.config.settings import Classifier
from gsrcl.errors import UserError
from gsrcl.evaluate.balanced import BalancedLogisticRegression
from gsrcl.evaluate.classifiers import FoldClassifier, estimator_for, multiclass_classifier
from gsrcl.evaluate.metrics import binary_scores, fast_mcc
from tests.conftest import shared_file


def test_fast_mcc_equals_scikit_learn_exactly():
    rng = np.random.default_rng(0)
    cases = [
        (rng.random(n) < p, rng.random(n) < q)
        for n in (5, 37, 400)
        for p in (0.1, 0.5)
        for q in (0.0, 0.2, 0.9)
    ]
    cases += [(np.array([True, True, False]), np.array([True, True, True]))]
    for y, pred in cases:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert fast_mcc(y, pred) == matthews_corrcoef(y, pred)


def test_binary_scores_use_hard_predictions_for_mcc_and_scores_for_ap():
    y = np.array([True, True, False, False, False])
    # a perfect ranking with a wrong threshold: MCC 0 (all predicted negative) but AP 1
    scores = binary_scores(y, np.zeros(5, dtype=bool), np.array([0.9, 0.8, 0.3, 0.2, 0.1]))
    assert scores["mcc"] == 0 and scores["f1"] == 0 and scores["ap"] == 1


def _assert_same_as_grid_search(x, labels, task, spec):
    y = labels == task
    train, test = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    ours = FoldClassifier(spec, x[train], inner_folds=5, metric="mcc")
    model = ours.fit(y[train])
    predicted, score = ours.task_outputs(model, ours.prepare(x[test]))
    splits = ours.inner_splits(y[train])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = GridSearchCV(SVC(), spec.grid, scoring="matthews_corrcoef", cv=splits).fit(
            x[train], y[train]
        )
    chosen = {**{k: model.svc.get_params()[k] for k in spec.grid if k != "gamma"}}
    assert chosen == {k: v for k, v in reference.best_params_.items() if k != "gamma"}
    assert model.gamma == pytest.approx(reference.best_estimator_._gamma, rel=1e-12)
    assert np.array_equal(predicted, reference.predict(x[test]))
    assert np.allclose(score, reference.decision_function(x[test]), atol=1e-9)


def test_precomputed_kernel_search_equals_gridsearchcv_on_pbmc():
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float64)
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    _assert_same_as_grid_search(x, labels, "CD56+ NK", svm(balanced=True))


def test_precomputed_kernel_search_equals_gridsearchcv_on_baron_mouse():
    adata = ad.read_h5ad(shared_file("baron_mouse.h5ad"))
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, 500, replace=False))
    x = np.log1p(adata.X[cells].toarray().astype(np.float64))
    x = x[:, x.var(axis=0).argsort()[-3000:]]
    labels = adata.obs["cell_type"].astype(str).to_numpy()[cells]
    for task in ("delta", "endothelial"):
        _assert_same_as_grid_search(x, labels, task, PAPER.evaluation.classifier)


def test_svms_on_the_same_features_share_kernels_and_fit_only_new_settings(monkeypatch):
    """The SVM's grid within the class-balanced SVM's: with a shared solver the second search
    fits only the balanced settings, and both choose what each chooses alone."""
    from gsrcl.evaluate.kernel_svm import PrecomputedRBF

    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    x = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X, dtype=np.float64)
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    tasks = [labels == t for t in ("CD56+ NK", "CD34+", "Dendritic")]
    fits = []
    fit = PrecomputedRBF._fit
    counted = staticmethod(lambda *a: fits.append(a[3]) or fit(*a))  # a: kernel, y, gamma, params
    monkeypatch.setattr(PrecomputedRBF, "_fit", counted)

    def searched(spec, shared=None):
        fold = FoldClassifier(spec, x, inner_folds=3, metric="mcc", shared=shared)
        return fold.fit_and_choices(tasks, [None] * len(tasks))[1], len(fits)

    alone = [searched(spec)[0] for spec in (svm(), svm(balanced=True))]
    fits.clear()
    shared: dict = {}
    plain, plain_fits = searched(svm(), shared)
    balanced, all_fits = searched(svm(balanced=True), shared)
    assert len(shared) == 1 and [plain, balanced] == alone
    # the balanced half only (as many settings as the plain grid) and the refits; alone 2x
    assert all_fits - plain_fits == plain_fits
    assert all(c.get("class_weight") == "balanced" for c in fits[plain_fits : -len(tasks)])


def test_multiclass_baseline_scores_each_type_one_vs_rest():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, size=(3, 20))
    labels = np.repeat(np.array(["a", "b", "c"]), 40)
    x = np.abs(centres[np.repeat(np.arange(3), 40)] + rng.normal(size=(120, 20)))
    classifier = FoldClassifier(LOGISTIC, x[::2], inner_folds=3, metric="mcc")
    model = classifier.fit(labels[::2])
    prepared = classifier.prepare(x[1::2])
    for task in "abc":
        predicted, score = classifier.task_outputs(model, prepared, task)
        assert binary_scores(labels[1::2] == task, predicted, score)["mcc"] > 0.9
        assert score.min() >= 0 and score.max() <= 1  # class probabilities


def test_balance_with_a_floor_weighs_a_rare_type_as_one_of_floor_cells():
    rng = np.random.default_rng(0)
    y = np.array(["common"] * 240 + ["7"] * 55 + ["rare"] * 5)  # a type named by a number too
    x = rng.normal(size=(len(y), 4)) + (y == "rare")[:, None] * 1.5 + (y == "7")[:, None]
    floored = clone(BalancedLogisticRegression(balance_floor=20, C=0.5)).fit(x, y)
    assert floored.get_params()["C"] == 0.5 and floored.balance_floor == 20
    per_type = {"common": 300 / (3 * 240), "7": 300 / (3 * 55), "rare": 300 / (3 * 20)}
    by_hand = LogisticRegression(C=0.5).fit(x, y, sample_weight=[per_type[t] for t in y])
    np.testing.assert_allclose(floored.coef_, by_hand.coef_, rtol=1e-6)
    plain = LogisticRegression(class_weight="balanced").fit(x, y)
    floor_one = BalancedLogisticRegression(balance_floor=1).fit(x, y)
    np.testing.assert_allclose(floor_one.coef_, plain.coef_, rtol=1e-6)
    # the floor calls fewer cells the rare type than plain balancing does
    assert (floored.predict(x) == "rare").sum() < (plain.predict(x) == "rare").sum()


def test_with_batches_a_multiclass_grid_is_searched_leaving_each_batch_out():
    """Settings chosen for a new batch: the search runs on the held-out batches, not on inner
    folds that mix them (here, pbmc68k_reduced's cell-cycle phases as batches, the two choose
    differently)."""
    adata = sc.datasets.pbmc68k_reduced()
    x, labels = adata.X.astype(np.float32), adata.obs["bulk_labels"].to_numpy(dtype=str)
    batches = adata.obs["phase"].to_numpy(dtype=str)
    splits = list(LeaveOneGroupOut().split(x, groups=batches))
    spec = replace(SCALED_LOGISTIC, grid={"C": [0.001, 0.01, 0.1, 1], "balance_floor": [1, 50]})
    settings = {"inner_folds": 3, "metric": "mcc", "seed": 0}
    within = multiclass_classifier(spec, x, labels, **settings)
    by_batch = multiclass_classifier(spec, x, labels, **settings, held_out_splits=splits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        search = GridSearchCV(
            estimator_for(spec), spec.grid, scoring="matthews_corrcoef", cv=splits
        )
        expected = search.fit(x, labels).best_params_
    chosen = {k: by_batch.params[k] for k in spec.grid}
    assert chosen == expected != {k: within.params[k] for k in spec.grid}
    model = by_batch.model()
    assert {k: model.get_params()[k] for k in spec.grid} == chosen
    assert by_batch.held_out.shape == (len(labels), len(model.classes_))
    # held out: each batch's probabilities come from the chosen settings refit without it
    train, test = splits[0]
    alone = clone(model).fit(x[train], labels[train])
    columns = [list(model.classes_).index(c) for c in alone.classes_]
    np.testing.assert_allclose(
        by_batch.held_out[np.ix_(test, columns)], alone.predict_proba(x[test]), atol=1e-8
    )


def test_bad_estimator_settings_are_user_errors():
    with pytest.raises(UserError, match="cannot import sklearn.svm.SVX"):
        estimator_for(Classifier(name="x", estimator="sklearn.svm.SVX"))
    with pytest.raises(UserError, match="no parameters \\['Cee'\\]"):
        estimator_for(Classifier(name="x", grid={"Cee": [1]}))


def test_held_out_probabilities_of_an_exported_classifier_are_its_own_cross_validation():
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.model_selection import cross_val_predict

    from gsrcl.evaluate.classifiers import calibrated_classifiers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 50))
    y = (x[:, 0] + rng.normal(size=300) * 0.5) > 0.8
    fold = FoldClassifier(svm(True), x, inner_folds=5, metric="mcc", seed=0)
    splits = fold.inner_splits(y)
    chosen = fold.fit(y, splits)
    from_kernel = fold.rbf_solver.held_out_decisions(y, chosen, splits)
    on_features = cross_val_predict(
        chosen.on_features(), x, y, cv=splits, method="decision_function"
    )
    np.testing.assert_allclose(from_kernel, on_features, atol=1e-9)
    (calibrated,) = calibrated_classifiers(svm(True), x, [y], inner_folds=5, metric="mcc", seed=0)
    held_out = calibrated.held_out
    assert held_out.shape == (300,) and 0 <= held_out.min() and held_out.max() <= 1
    # the exported model, built from the kernel, is scikit-learn's calibration on the features
    model = calibrated.model()
    by_sklearn = CalibratedClassifierCV(chosen.on_features(), cv=splits, ensemble=False).fit(x, y)
    query = rng.normal(size=(100, 50))
    np.testing.assert_allclose(
        model.predict_proba(query), by_sklearn.predict_proba(query), atol=1e-9
    )
    assert model.calibrated_classifiers_[0].estimator.kernel == "rbf"
    # held out: less sure of the training cells than the model refit on all of them
    fitted = model.predict_proba(x)[:, 1]
    assert np.abs(held_out - y).mean() > np.abs(fitted - y).mean()


def test_calibrations_on_threads_leave_the_warning_filters_as_they_were():
    """Fits silence their warnings with catch_warnings, which saves and restores the process's
    one filter list: side by side on threads they restored each other's, and a process could be
    left ignoring every warning after an export (Workers.map puts the caller's list back)."""
    from gsrcl.evaluate.classifiers import calibrated_classifiers
    from gsrcl.evaluate.workers import Workers

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 20))
    labels = [(x[:, i] + rng.normal(size=300) * 0.5) > 0.8 for i in range(6)]
    before = list(warnings.filters)
    with Workers(2) as workers:
        for _ in range(4):
            calibrated_classifiers(
                svm(True), x, labels, inner_folds=3, metric="mcc", seed=0, workers=workers
            )
    assert warnings.filters == before


def test_the_unassigned_rule_keeps_its_budget_and_gives_the_neighbourhood_priority():
    from gsrcl.reference import rule

    rng = np.random.default_rng(0)
    best = rng.uniform(0.2, 1.0, 2000)
    ratios = rng.exponential(0.8, 2000)
    chosen = rule.choose(best, ratios)
    unassigned = chosen.unassigned(best, ratios)
    assert unassigned.mean() <= rule.BUDGET
    assert (best < chosen.threshold).mean() <= rule.THRESHOLD_SHARE
    assert chosen.multiplier >= rule.MIN_MULTIPLIER and chosen.threshold <= rule.MAX_THRESHOLD
    far = rule.choose(best, ratios * 3)  # a spread-out reference: the multiplier follows it
    assert (far.unassigned(best, ratios * 3)).mean() <= rule.BUDGET
    assert far.multiplier > chosen.multiplier
    # cells given the wrong type lie far off: they neither set the multiplier nor use the budget
    wrong = rng.random(2000) < 0.15
    mixed = np.where(wrong, ratios * 20, ratios)
    judged = rule.choose(best, mixed, ~wrong)
    assert judged == rule.choose(best[~wrong], ratios[~wrong])
    assert judged.unassigned(best, mixed)[~wrong].mean() <= rule.BUDGET
    assert judged.unassigned(best, mixed)[wrong].mean() > 0.5
    assert rule.choose(best, mixed).multiplier > 2 * judged.multiplier
    shares = rule.shares(np.array([[0.2, 0.1, 0.1], [0.0, 0.0, 0.0]]))
    np.testing.assert_allclose(shares, [[0.5, 0.25, 0.25], [0, 0, 0]])


def test_export_reuses_the_cvs_settings_and_searches_only_where_none_are_given():
    from gsrcl.evaluate.classifiers import calibrated_classifiers

    rng = np.random.default_rng(1)
    x = rng.normal(size=(240, 20))
    labels = [(x[:, 0] + rng.normal(size=240) * 0.5) > 0.7, x[:, 1] > 0.9]
    settings = {"inner_folds": 3, "metric": "mcc", "seed": 0}
    searched = calibrated_classifiers(svm(), x, labels, **settings)
    fold = FoldClassifier(svm(), x, inner_folds=3, metric="mcc", seed=0)
    _, choices = fold.fit_and_choices(labels, [None, None])
    assert set(choices[0]) == {"gamma", "C"}  # the grid's values, as the grid writes them
    # given the search's own choices, the same classifiers without searching
    given = calibrated_classifiers(svm(), x, labels, **settings, choices=choices)
    for a, b in zip(searched, given, strict=True):
        assert a.params == b.params
        np.testing.assert_allclose(a.held_out, b.held_out, atol=1e-12)
    # another choice is honoured for its type; a type without one is still searched
    other = {"gamma": 1e-4 if choices[0]["gamma"] != 1e-4 else 1e-2, "C": 100}
    mixed = calibrated_classifiers(svm(), x, labels, **settings, choices=[other, None])
    assert mixed[0].params["C"] == 100 and mixed[0].params["gamma"] == other["gamma"]
    assert mixed[1].params == searched[1].params


def test_held_out_ratios_each_computed_once_are_the_ratios():
    """Export judges candidates that mostly predict the same types: each cell's held-out ratio to
    a type is computed once and reused, with the same values as computed afresh."""
    import scanpy as sc

    from gsrcl.reference import neighbourhood

    pbmc = sc.datasets.pbmc68k_reduced().raw.to_adata()
    labels = pbmc.obs["bulk_labels"].astype(str).to_numpy()
    types = sorted(set(labels))
    arrays = neighbourhood.fit(neighbourhood.fit_space(pbmc, "log", 10), labels, types)
    fresh, regions = (
        neighbourhood.Neighbourhoods(arrays, list(pbmc.var_names), "log") for _ in range(2)
    )
    truth = np.repeat(np.arange(len(types)), [(labels == t).sum() for t in types])
    rng = np.random.default_rng(0)
    batches = np.array(["a", "b", "c"])[rng.integers(0, 3, len(truth))]
    batches[truth == 0] = "a"  # a type one batch alone has is judged within it
    judged = neighbourhood.HeldOutRatios(regions, truth, batches)
    computed = []
    real = regions.held_out_ratios_as

    def counted(t, rows, *args):
        computed.append(int(rows.sum()))
        return real(t, rows, *args)

    regions.held_out_ratios_as = counted
    for step in range(3):
        moved = rng.random(len(truth)) < (0.0 if step == 0 else 0.1)
        predicted = np.where(moved, rng.integers(0, len(types), len(truth)), truth)
        assert np.allclose(judged(predicted), fresh.held_out_ratios(predicted, truth, batches))
        assert sum(computed) <= (len(truth) if step == 0 else moved.sum()), (step, computed)
        computed.clear()
