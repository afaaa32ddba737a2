"""--check's survey of a large dataset (gsrcl.data.survey): what `load_dataset` would return,
read a block of cells at a time, and the values of the cells asked for."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from gsrcl.config.settings import Dataset
from gsrcl.data import dataset, survey
from gsrcl.data.dataset import LABEL, load_dataset
from gsrcl.data.survey import survey_dataset
from gsrcl.errors import UserError
from tests.conftest import PBMC, tiny_experiment


@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    monkeypatch.setattr(survey, "BLOCK_VALUES", 7 * 20)  # blocks of 7 cells of 20 genes


def _file(tmp_path, x, labels, ids=None) -> Dataset:
    cells = ids if ids is not None else [f"cell{i:03d}" for i in range(x.shape[0])]
    adata = ad.AnnData(
        X=x,
        obs=pd.DataFrame({"type": labels}, index=cells),
        var=pd.DataFrame(index=[f"g{j}" for j in range(x.shape[1])]),
    )
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    return Dataset(name="d", path=str(path), labels="type")


def _dense(x):
    return x.toarray() if sp.issparse(x) else x


@pytest.mark.parametrize("stored", [np.asarray, sp.csr_matrix])
def test_a_survey_is_what_reading_the_file_whole_gives(tmp_path, stored, caplog):
    rng = np.random.default_rng(0)
    x = rng.poisson(1.0, size=(40, 20)).astype(np.float32)
    x[5] = 0  # an empty cell
    x[:, 3] = 0  # an empty gene
    labels = np.array(["a", "b", None, "c"] * 10, dtype=object)
    ids = [f"cell{(i * 7) % 40:03d}" for i in range(40)]  # not in id order
    ids[9] = ids[8]  # a repeated id
    spec = _file(tmp_path, stored(x), labels, ids)
    with caplog.at_level(logging.WARNING):
        surveyed = survey_dataset(spec, most_cells=0)
    said = caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        whole = load_dataset(spec)
    assert said == caplog.text and "without a label" in said and "all-zero" in said
    assert surveyed.cells.X is None
    assert list(surveyed.cells.obs_names) == list(whole.obs_names)
    assert list(surveyed.cells.var_names) == list(whole.var_names)
    assert surveyed.cells.obs[LABEL].equals(whole.obs[LABEL])
    asked = whole.obs_names[[20, 3, 11, 0]]
    values = surveyed.values(asked)
    assert sp.issparse(values) == sp.issparse(whole.X) and values.dtype == np.float32
    assert np.array_equal(_dense(values), _dense(whole[asked].X))


@pytest.mark.parametrize(
    "bad, message",
    [(-1.0, "holds negative values"), (np.nan, "NaN or infinite"), (0.5, "non-integer values")],
)
def test_a_bad_value_in_a_late_block_is_refused_as_reading_whole_refuses_it(tmp_path, bad, message):
    x = np.ones((40, 20), dtype=np.float32)
    x[37, 4] = bad
    spec = _file(tmp_path, x, ["a", "b"] * 20)
    with pytest.raises(UserError) as whole:
        load_dataset(spec)
    with pytest.raises(UserError, match=message) as surveyed:
        survey_dataset(spec, most_cells=0)
    assert str(surveyed.value) == str(whole.value)


def test_a_small_file_is_read_whole(tmp_path):
    spec = _file(tmp_path, np.ones((40, 20), dtype=np.float32), ["a", "b"] * 20)
    assert survey_dataset(spec, most_cells=40) is None


def test_check_plans_a_large_dataset_without_reading_its_matrix(tmp_path, monkeypatch):
    from gsrcl.runner.pipeline import check

    pbmc = PBMC.__class__(**{**PBMC.__dict__, "cell_types": ("CD19+ B", "CD34+", "Dendritic")})
    cells = load_dataset(pbmc)  # .raw's log values, written as a file of its own
    path = tmp_path / "pbmc.h5ad"
    ad.AnnData(cells.X, obs=cells.obs[[LABEL]], var=cells.var[[]]).write_h5ad(path)
    spec = Dataset(
        name=pbmc.name, path=str(path), labels=LABEL, values="log", cell_types=pbmc.cell_types
    )
    experiment = tiny_experiment(tmp_path, datasets=(spec,), methods=())
    whole = []
    assert check(experiment, log=whole.append) == 0

    def unread(spec):
        raise AssertionError("--check read the matrix whole")

    monkeypatch.setattr(survey, "SURVEY_CELLS", 100)
    monkeypatch.setattr(dataset, "load_dataset", unread)
    surveyed = []
    assert check(experiment, log=surveyed.append) == 0
    plan = [line for line in whole if "cells" in line and "estimate" not in line]
    assert plan and plan == [line for line in surveyed if line in plan]
    assert "700 cells × 765 genes" in "\n".join(surveyed)
    assert any("jobs of ~" in line for line in surveyed)


def test_a_survey_cache_gives_values_to_the_cells_asked_for(tmp_path, monkeypatch):
    monkeypatch.setattr(survey, "SURVEY_CELLS", 10)
    x = np.random.default_rng(1).poisson(2.0, size=(40, 20)).astype(np.float32)
    spec = _file(tmp_path, sp.csr_matrix(x), ["a", "b"] * 20)
    cache = survey.SurveyCache()
    cells = cache.get(spec)
    assert cells.X is None and cells.n_obs == 40
    sample = cache.with_values(spec, cells[[3, 17, 30]])  # a view, as the report's sample is
    assert np.array_equal(sample.X.toarray(), load_dataset(spec)[[3, 17, 30]].X.toarray())
    assert dataset.DatasetCache().with_values(spec, cells) is cells
    with pytest.raises(KeyError, match="cells not in dataset"):
        cache.surveys[spec].values(pd.Index(["cell003", "no such cell"]))
