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


def _two_blobs(n: int = 80, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(0, 1, (n - n // 4, 4)), rng.normal(0.8, 1, (n // 4, 4))])
    return torch.as_tensor(_distances(x), dtype=torch.float32), np.arange(n) >= n - n // 4


def test_bucketed_shapes_pad_by_a_quarter_at_most():
    sizes = range(1, 3000)
    assert all(n <= smo.bucket(n) <= max(n + 1, 1.25 * n) for n in sizes)
    assert len({smo.bucket(n) for n in range(1025, 2049)}) == 4  # four shapes an octave
    assert smo.bucket(1206) == smo.bucket(1232) == 1280  # Baron Mouse's step: cells, problems


def test_padded_solves_give_the_compacting_answers_through_one_shape():
    """On a GPU every solve runs padded to a bucketed shape through one replay per shape (its
    CUDA graph recorded once: tests/test_cuda.py); the CPU runs the same path eagerly."""
    smo.release_graphs()
    distances, positive = _two_blobs()
    problems = [
        smo.DualProblem(np.arange(0, 80, step), positive[::step], gamma, c, 2 * c)
        for step in (1, 2, 3)
        for gamma in (0.05, 0.5)
        for c in (0.1, 1.0)
    ]
    compacting = smo.solve(distances, problems)
    padded = smo.solve(distances, problems, padded=True)
    for field in ("coef", "intercept", "iterations", "converged"):
        assert torch.allclose(
            getattr(padded, field).double(), getattr(compacting, field).double(), atol=1e-12
        ), field
    fewer = smo.solve(distances, problems[:11], padded=True)  # bucketed to 12 as well
    assert smo.bucket(11) == smo.bucket(12) and torch.equal(fewer.coef, padded.coef[:11])
    assert list(smo.GRAPHS.solves().values()) == [2]  # one shape, reused
    smo.solve(distances, problems * 2, padded=True)  # 24 problems: another shape
    assert sorted(smo.GRAPHS.solves().values()) == [1, 2]
    smo.release_graphs()
    assert smo.GRAPHS.solves() == {}


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
            solver: FoldClassifier(svm(), x, inner_folds=2, metric=metric, solver=solver).search(
                [y], splits
            )
            for solver in ("libsvm", "device")
        }
        libsvm, device = results["libsvm"], results["device"]
        assert np.isnan(device.scores[0][:, 0]).all()  # that split's fits failed
        assert np.allclose(device.scores[0], libsvm.scores[0], equal_nan=True, atol=1e-9)
        assert device.chosen == libsvm.chosen


def test_fits_left_unconverged_at_the_cap_are_answered_by_libsvm(caplog):
    """A cap of 2 iterations leaves every fit above the tolerance: the search still answers,
    as the libsvm search does, where it used to fail the whole job."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    y = np.arange(60) % 3 == 0
    x[y] += 1.0
    even, odd = np.arange(0, 60, 2), np.arange(1, 60, 2)
    splits = [[(even, odd), (odd, even)]]
    libsvm = FoldClassifier(svm(), x, inner_folds=2, metric="mcc", solver="libsvm").search(
        [y], splits
    )
    capped = FoldClassifier(svm(), x, inner_folds=2, metric="mcc", solver="device")
    capped.rbf_solver.max_iterations = 2
    with caplog.at_level("WARNING", logger="gsrcl.evaluate.device_svm"):
        device = capped.search([y], splits)
    assert "did not converge on the device" in caplog.text
    assert all(bool(batch[2].converged.all()) for batch in capped.rbf_solver.batches)
    assert device.chosen == libsvm.chosen
    assert np.allclose(device.scores[0], libsvm.scores[0], atol=1e-9) and 0 < device.chosen[0]
    held_out = capped.prepare(x[:20])
    decisions = device.models[0].decision_function(held_out.features)
    expected = libsvm.models[0].decision_function(
        FoldClassifier(svm(), x, inner_folds=2, metric="mcc", solver="libsvm")
        .prepare(x[:20])
        .features
    )
    assert np.allclose(decisions, expected, atol=1e-3)  # libsvm's tolerance


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
