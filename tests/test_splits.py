import numpy as np
import pytest

from gsrcl.config.settings import Split
from gsrcl.data.splits import VALIDATION, folds_from_record, folds_record, make_folds
from gsrcl.errors import UserError
from gsrcl.runner.run_folder import RunFolder


def _labels():
    counts = {"a": 300, "b": 120, "c": 40, "d": 12, "e": 4}
    return np.array([t for t, n in counts.items() for _ in range(n)])


def test_split_is_stratified_disjoint_and_reproducible():
    labels = _labels()
    cells = [f"c{i}" for i in range(len(labels))]
    folds = make_folds(cells, labels, Split(0.2, 5), seed=3, cell_types=None)
    again = make_folds(cells, labels, Split(0.2, 5), seed=3, cell_types=None)
    other = make_folds(cells, labels, Split(0.2, 5), seed=4, cell_types=None)
    assert np.array_equal(folds.assignment, again.assignment)
    assert not np.array_equal(folds.assignment, other.assignment)
    validation = folds.validation()
    assert abs(len(validation) - 0.2 * len(labels)) <= 1
    for k in range(5):
        train, test = set(folds.train(k)), set(folds.test(k))
        assert not train & test and not train & set(validation) and not test & set(validation)
        assert len(train) + len(test) + len(validation) == len(labels)
        # stratified: each fold holds the large type in proportion
        share = np.mean(labels[folds.test(k)] == "a")
        assert abs(share - 300 / len(labels)) < 0.03
    assert set(np.unique(folds.assignment)) == {VALIDATION, 0, 1, 2, 3, 4}


def test_rare_type_is_skipped_with_a_reason_not_dropped():
    labels = _labels()
    folds = make_folds([str(i) for i in range(len(labels))], labels, Split(0.2, 5), 0, None)
    tasks = {t.name: t for t in folds.tasks}
    assert set(tasks) == {"a", "b", "c", "d", "e"}
    assert tasks["a"].scored and tasks["d"].scored
    assert not tasks["e"].scored and "too few cells" in tasks["e"].reason
    assert "e" not in folds.scored_tasks


def test_unknown_cell_type_is_a_clear_error():
    labels = _labels()
    with pytest.raises(UserError, match="'zzz'"):
        make_folds([str(i) for i in range(len(labels))], labels, Split(), 0, ("a", "zzz"))


def test_saved_folds_are_reused_only_when_settings_match(tmp_path):
    labels = _labels()
    folds = make_folds([str(i) for i in range(len(labels))], labels, Split(), 0, None)
    run = RunFolder(tmp_path)
    run.write_splits("d", folds_record(folds, {"seed": 0}))
    loaded = folds_from_record(run.read_splits("d"), {"seed": 0})
    assert np.array_equal(loaded.assignment, folds.assignment) and loaded.tasks == folds.tasks
    assert folds_from_record(run.read_splits("d"), {"seed": 1}) is None
    (tmp_path / "splits" / "d.json").write_text('{"seed": 0, "cel')  # truncated: made anew
    assert run.read_splits("d") is None


def test_a_dataset_too_small_for_the_folds_is_a_clear_error():
    labels = np.array(list("aabbcc"))
    with pytest.raises(UserError, match="6 cells are too few .* 5 folds"):
        make_folds([str(i) for i in range(6)], labels, Split(0.2, 5), 0, None)


def test_numeric_labels_sort_as_numbers_in_tasks_and_figures():
    from gsrcl.data.labels import ordered
    from gsrcl.report.figures import type_colours

    labels = np.array([str(i) for i in (10, 2, 1, 11)] * 12)
    folds = make_folds([str(i) for i in range(len(labels))], labels, Split(0.2, 2), 0, None)
    assert [t.name for t in folds.tasks] == ["1", "2", "10", "11"]  # same sizes: by value
    assert ordered(["b", "10", "a", "2", "1.5"]) == ["1.5", "2", "10", "a", "b"]
    assert list(type_colours(["10", "9", "T cell"])) == ["9", "10", "T cell"]
