import anndata as ad
import numpy as np
import pandas as pd
import pytest

from gsrcl.config.settings import Dataset
from gsrcl.data.dataset import LABEL, load_dataset
from gsrcl.errors import UserError
from tests.conftest import PBMC, shared_file


def test_bundled_pbmc68k_reduced_reads_its_log_values_and_labels():
    adata = load_dataset(PBMC)
    assert adata.shape == (700, 765)
    assert adata.obs[LABEL].nunique() == 10
    assert adata.X.min() >= 0


def test_csv_matrix_with_one_column_labels_file(tmp_path):
    rng = np.random.default_rng(0)
    counts = pd.DataFrame(
        rng.poisson(2, size=(6, 4)),
        index=[f"cell{i}" for i in range(6)],
        columns=["g1", "g2", "g3", "g4"],
    )
    counts.to_csv(tmp_path / "matrix.csv")
    pd.DataFrame({"x": list("aabbcc")}).to_csv(tmp_path / "Labels.csv", index=False)
    adata = load_dataset(
        Dataset(
            name="csv", path=str(tmp_path / "matrix.csv"), labels_file=str(tmp_path / "Labels.csv")
        )
    )
    assert list(adata.var_names) == ["g1", "g2", "g3", "g4"]
    assert list(adata.obs_names) == [f"cell{i}" for i in range(6)]
    assert list(adata.obs[LABEL]) == list("aabbcc")
    assert np.array_equal(adata.X, counts.to_numpy(dtype=np.float32))


def test_labels_that_do_not_match_the_cells_are_refused(tmp_path):
    pd.DataFrame(np.ones((3, 2)), index=list("abc"), columns=["g1", "g2"]).to_csv(
        tmp_path / "m.csv"
    )
    pd.DataFrame({"x": ["t", "u"]}).to_csv(tmp_path / "l.csv", index=False)
    with pytest.raises(UserError, match="2 labels for 3 cells"):
        load_dataset(
            Dataset(name="d", path=str(tmp_path / "m.csv"), labels_file=str(tmp_path / "l.csv"))
        )


def test_negative_values_and_missing_label_column_are_refused(tmp_path):
    bad = ad.AnnData(
        np.array([[1.0, -2.0], [0.0, 3.0]], dtype=np.float32),
        obs=pd.DataFrame({"cell_type": ["a", "b"]}, index=["c1", "c2"]),
    )
    bad.write_h5ad(tmp_path / "bad.h5ad")
    with pytest.raises(UserError, match="negative values"):
        load_dataset(Dataset(name="d", path=str(tmp_path / "bad.h5ad")))
    with pytest.raises(UserError, match="no obs column 'celltype'"):
        load_dataset(Dataset(name="d", path=str(tmp_path / "bad.h5ad"), labels="celltype"))


def test_baron_mouse_duplicate_cell_ids_are_made_unique():
    adata = load_dataset(Dataset(name="baron", path=str(shared_file("baron_mouse.h5ad"))))
    assert adata.shape == (1886, 14878 - 17)  # 17 genes are zero in every cell: removed
    assert adata.obs_names.is_unique
    assert adata.obs[LABEL].nunique() == 13
