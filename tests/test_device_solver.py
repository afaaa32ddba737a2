"""The device solver (libsvm's SMO batched on a torch device) against libsvm itself."""

import warnings

import numpy as np
import pytest
import scanpy as sc
import torch
from sklearn.model_selection import train_test_split
from sklearn.svm import SVC

from gsrcl.config.presets import svm
from gsrcl.config.settings import Classifier, Evaluation
from gsrcl.errors import UserError
from gsrcl.evaluate import smo
from gsrcl.evaluate.agreement import compare_solvers
from gsrcl.evaluate.classifiers import FoldClassifier, resolve_solver
from gsrcl.evaluate.kernel_svm import squared_distances
from gsrcl.runner.jobs import fingerprint, plan
from tests.conftest import tiny_experiment


def _pbmc():
    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()
    x = np.asarray(adata.X.toarray() if hasattr(adata.X, "toarray") else adata.X, np.float64)
    return x, adata.obs["bulk_labels"].astype(str).to_numpy()


def _distances(x: np.ndarray) -> np.ndarray:
    d = squared_distances(torch.as_tensor(x), torch.as_tensor(x)).numpy()
    np.fill_diagonal(d, 0.0)
    return d


@pytest.mark.parametrize(
    "c, class_weight, gamma",
    [(0.1, None, 0.5), (1.0, "balanced", 0.05), (100.0, None, 2.0), (10.0, {0: 3.0, 1: 0.5}, 0.2)],
)
def test_one_dual_gives_libsvm_decisions_and_objective(c, class_weight, gamma):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1, (70, 4)), rng.normal(1.2, 1, (20, 4))])
    x[5] = x[4]  # a duplicated cell: zero curvature on that pair
    y = np.arange(90) >= 70
    kernel = np.exp(-gamma * _distances(x))
    reference = SVC(kernel="precomputed", C=c, class_weight=class_weight).fit(kernel, y)
    weights = reference.class_weight_
    problem = smo.DualProblem(np.arange(90), y, gamma, c * weights[0], c * weights[1])
    solution = smo.solve(torch.as_tensor(_distances(x), dtype=torch.float32), [problem])
    coef = solution.coef[0].numpy()
    ours = kernel @ coef + float(solution.intercept[0])
    assert bool(solution.converged[0])
    assert np.abs(ours - reference.decision_function(kernel)).max() < 1e-2
    assert np.array_equal(ours >= 0, reference.predict(kernel))
    box = np.where(y, c * weights[1], c * weights[0])
    libsvm = np.zeros(90)
    libsvm[reference.support_] = reference.dual_coef_[0]
    k32 = kernel.astype(np.float32).astype(np.float64)
    objective, violation = smo.objective_and_violation(k32, y, coef, box)
    libsvm_objective, _ = smo.objective_and_violation(k32, y, libsvm, box)
    assert violation < 1e-3  # libsvm's stopping rule, met on every variable
    assert abs(objective - libsvm_objective) <= 1e-3 * max(1.0, abs(libsvm_objective))


def test_every_variable_at_a_bound_takes_libsvm_middle_intercept():
    """C so small that every α sits at C: no free variable, rho from the bounds."""
    x = np.array([[0.0], [0.1], [0.2], [1.0], [1.1]])
    y = np.array([False, False, False, True, True])
    kernel = np.exp(-1.0 * _distances(x))
    reference = SVC(kernel="precomputed", C=1e-3).fit(kernel, y)
    problem = smo.DualProblem(np.arange(5), y, 1.0, 1e-3, 1e-3)
    solution = smo.solve(torch.as_tensor(_distances(x), dtype=torch.float32), [problem])
    assert float(solution.intercept[0]) == pytest.approx(reference.intercept_[0], abs=1e-6)


def test_device_search_agrees_with_libsvm_on_real_cells():
    """pbmc68k_reduced (log expression of 765 genes), every cell type as a task, the
    class-balanced grid (32 candidates × 5 inner folds): the issue's agreement targets."""
    x, labels = _pbmc()
    rows = np.arange(len(labels))
    train, val = train_test_split(rows, test_size=0.3, stratify=labels, random_state=0)
    types = [t for t in np.unique(labels) if (labels[train] == t).sum() >= 5]
    tasks = {t: (labels[train] == t, labels[val] == t) for t in types}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agreement = compare_solvers(svm(balanced=True), x[train], x[val], tasks, 5, "mcc")
    assert agreement.searches == len(types) == 10
    assert agreement.same_choice >= 0.98 * agreement.searches or agreement.worst_choice_loss <= 0.01
    assert agreement.worst_choice_loss <= 0.01
    assert agreement.same_validation >= 0.98 * agreement.searches
    assert agreement.worst_validation_gap <= 0.02
    assert agreement.worst_violation < 1e-3
    assert agreement.worst_objective_gap < 1e-3


def test_device_search_scores_ap_and_f1_and_takes_failed_fits():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.zeros(60, dtype=bool)
    y[:3] = True  # 3 positives: some inner splits train on none of them
    x[:3] += 2.0
    splits = [[(np.arange(3, 60), np.arange(0, 10)), (np.arange(0, 50), np.arange(50, 60))]]
    for metric in ("ap", "f1", "mcc"):
        results = {
            solver: FoldClassifier(svm(), x, 2, metric, solver=solver).search([y], splits)
            for solver in ("libsvm", "device")
        }
        libsvm, device = results["libsvm"], results["device"]
        assert np.isnan(device.scores[0][:, 0]).all()  # that split's fits failed
        assert np.allclose(device.scores[0], libsvm.scores[0], equal_nan=True, atol=1e-9)
        assert device.chosen == libsvm.chosen


def test_solver_setting_resolves_and_is_fingerprinted(tmp_path):
    spec = svm()
    assert resolve_solver("auto", spec, "cpu") == "libsvm"
    assert resolve_solver("auto", spec, "cuda:0") == "device"
    assert resolve_solver("device", spec, "cpu") == "device"
    assert resolve_solver("libsvm", spec, "cuda:1") == "libsvm"
    probability = Classifier(name="p", params={"probability": True})
    assert resolve_solver("auto", probability, "cuda:0") == "libsvm"
    with pytest.raises(UserError, match="probability.*evaluation.solver='libsvm'"):
        resolve_solver("device", probability, "cpu")
    base = tiny_experiment(tmp_path)
    device = tiny_experiment(
        tmp_path, evaluation=Evaluation(**{**base.evaluation.__dict__, "solver": "device"})
    )
    job = plan(base)[0]
    assert fingerprint(base, job) != fingerprint(device, job)


def test_a_run_with_the_device_solver_gives_the_libsvm_run_summary(tmp_path):
    """The runner end to end (baselines and SimCLR checkpoint selection) with each solver."""
    import json

    import pandas as pd

    from gsrcl.runner.pipeline import run_experiment

    summaries = {}
    for solver in ("libsvm", "device"):
        base = tiny_experiment(tmp_path / solver)
        experiment = tiny_experiment(
            tmp_path / solver,
            methods=base.methods[:1],
            evaluation=Evaluation(**{**base.evaluation.__dict__, "solver": solver}),
        )
        assert run_experiment(experiment, log=lambda line: None) == 0
        run_dir = tmp_path / solver / "results" / "tiny"
        summaries[solver] = pd.read_csv(run_dir / "summary.csv")
        metrics = run_dir / "jobs" / "pbmc68k_reduced" / "simclr-noise" / "fold-0" / "metrics.json"
        assert json.loads(metrics.read_text())["solvers"] == {"svm": solver}
        recorded = json.loads((run_dir / "experiment.json").read_text())
        assert recorded["config"]["evaluation"]["solver"] == solver
        assert recorded["solvers"] == {"cpu": solver}
    columns = ["mcc_mean", "f1_mean", "ap_mean"]
    libsvm, device = summaries["libsvm"], summaries["device"]
    assert list(libsvm["task"]) == list(device["task"])
    assert np.allclose(libsvm[columns], device[columns], atol=1e-6)
