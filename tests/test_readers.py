"""One test per input format and per bad input: shape, genes and labels, or the message."""

import gzip
import logging
import warnings

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from gsrcl.config.settings import Dataset
from gsrcl.data.dataset import LABEL, load_dataset
from gsrcl.errors import UserError

CELLS = [f"cell{i}" for i in range(8)]
GENES = ["Cd3e", "Cd19", "Lyz2", "Nkg7", "Actb"]
TYPES = ["T", "B", "T", "NK", "B", "T", "NK", "B"]


@pytest.fixture
def counts():
    rng = np.random.default_rng(0)
    x = rng.poisson(3, size=(len(CELLS), len(GENES))).astype(np.float32)
    x[:, 0] += 1  # no all-zero cell
    return x


def _check(adata, counts, labels=TYPES, cells=CELLS):
    assert list(adata.obs_names) == cells
    assert list(adata.var_names) == GENES
    assert list(adata.obs[LABEL]) == labels
    dense = adata.X.toarray() if sp.issparse(adata.X) else adata.X
    rows = [CELLS.index(c) for c in cells]
    assert np.array_equal(dense, counts[rows])


def _write_labels(path, labels=TYPES):
    pd.DataFrame({"x": labels}).to_csv(path, index=False)
    return str(path)


def test_h5ad_layer(tmp_path, counts):
    adata = ad.AnnData(
        np.log1p(counts),
        obs=pd.DataFrame({"type": TYPES}, index=CELLS),
        var=pd.DataFrame(index=GENES),
        layers={"counts": counts},
    )
    adata.write_h5ad(tmp_path / "d.h5ad")
    _check(
        load_dataset(
            Dataset(name="d", path=str(tmp_path / "d.h5ad"), labels="type", layer="counts")
        ),
        counts,
    )


def test_csv_genes_by_cells_with_transpose_gzipped(tmp_path, counts):
    table = pd.DataFrame(counts.T, index=GENES, columns=CELLS)
    with gzip.open(tmp_path / "m.csv.gz", "wt") as f:
        table.to_csv(f)
    spec = Dataset(
        name="d",
        path=str(tmp_path / "m.csv.gz"),
        transpose=True,
        labels_file=_write_labels(tmp_path / "Labels.csv"),
    )
    _check(load_dataset(spec), counts)


def test_tsv_with_labels_matched_by_cell_id(tmp_path, counts):
    pd.DataFrame(counts, index=CELLS, columns=GENES).to_csv(tmp_path / "m.tsv", sep="\t")
    order = [3, 0, 7, 1, 5, 2, 4]  # shuffled, and cell6 has no label: dropped
    pd.DataFrame({"cell": [CELLS[i] for i in order], "type": [TYPES[i] for i in order]}).to_csv(
        tmp_path / "labels.csv", index=False
    )
    adata = load_dataset(
        Dataset(name="d", path=str(tmp_path / "m.tsv"), labels_file=str(tmp_path / "labels.csv"))
    )
    kept = [c for c in CELLS if c != "cell6"]
    _check(adata, counts, [TYPES[CELLS.index(c)] for c in kept], kept)


def test_10x_h5(tmp_path, counts):
    matrix = sp.csc_matrix(counts.T.astype(np.int32))  # 10x stores genes × cells, by cell
    with h5py.File(tmp_path / "filtered.h5", "w") as f:
        m = f.create_group("matrix")
        m["barcodes"] = np.array(CELLS, dtype="S")
        m["data"], m["indices"], m["indptr"] = matrix.data, matrix.indices, matrix.indptr
        m["shape"] = np.array(matrix.shape)
        features = m.create_group("features")
        features["id"] = np.array([f"ENS{i}" for i in range(len(GENES))], dtype="S")
        features["name"] = np.array(GENES, dtype="S")
        features["feature_type"] = np.array(["Gene Expression"] * len(GENES), dtype="S")
        features["genome"] = np.array(["mm10"] * len(GENES), dtype="S")
    spec = Dataset(
        name="d", path=str(tmp_path / "filtered.h5"), labels_file=_write_labels(tmp_path / "l.csv")
    )
    _check(load_dataset(spec), counts)


def test_10x_matrix_market_folder(tmp_path, counts):
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.coo_matrix(counts.T.astype(np.int32)))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.write("\n".join(CELLS) + "\n")
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.write("".join(f"ENS{i}\t{g}\tGene Expression\n" for i, g in enumerate(GENES)))
    spec = Dataset(name="d", path=str(folder), labels_file=_write_labels(tmp_path / "l.csv"))
    _check(load_dataset(spec), counts)


@pytest.mark.parametrize("sparse", [False, True])
def test_sczidesk_h5_of_the_gsrcl_paper(tmp_path, counts, sparse):
    with h5py.File(tmp_path / "Baron.h5", "w") as f:
        if sparse:
            csr = sp.csr_matrix(counts)
            g = f.create_group("exprs")
            g["data"], g["indices"], g["indptr"], g["shape"] = (
                csr.data,
                csr.indices,
                csr.indptr,
                csr.shape,
            )
        else:
            f["exprs"] = counts
        f.create_group("obs")["cell_type1"] = np.array(TYPES, dtype="S")
        f["obs_names"] = np.array(CELLS, dtype="S")
        f["var_names"] = np.array(GENES, dtype="S")
    _check(
        load_dataset(Dataset(name="d", path=str(tmp_path / "Baron.h5"), labels="cell_type1")),
        counts,
    )


def test_gsrcl_one_row_vr_label_files(tmp_path, counts):
    pd.DataFrame(counts, index=CELLS, columns=GENES).to_csv(tmp_path / "m.csv")
    for cell_type in ("T", "B", "NK"):
        row = [int(t == cell_type) for t in TYPES]
        (tmp_path / f"{cell_type}_VR_Labels.csv").write_text(",".join(map(str, row)) + "\n")
    spec = Dataset(
        name="d", path=str(tmp_path / "m.csv"), labels_file=str(tmp_path / "*_VR_Labels.csv")
    )
    _check(load_dataset(spec), counts)


def test_duplicated_ids_all_zero_genes_and_unlabelled_cells_are_reported(tmp_path, counts, caplog):
    x = np.concatenate([counts, np.zeros((len(CELLS), 1), np.float32)], axis=1)
    obs = pd.DataFrame({"cell_type": [*TYPES[:-1], None]}, index=["a"] * 4 + ["b"] * 4)
    ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[*GENES, "Empty"])).write_h5ad(
        tmp_path / "d.h5ad"
    )
    with caplog.at_level(logging.WARNING):
        adata = load_dataset(Dataset(name="d", path=str(tmp_path / "d.h5ad")))
    assert adata.obs_names.is_unique and adata.n_obs == 7 and list(adata.var_names) == GENES
    text = caplog.text
    assert (
        "not unique" in text
        and "dropped 1 cells without a label" in text
        and "1 all-zero genes" in text
    )


# ---- bad inputs: one message each ----


def _h5ad(tmp_path, x, **obs):
    obs = pd.DataFrame(obs or {"cell_type": TYPES[: len(x)]}, index=CELLS[: len(x)])
    ad.AnnData(
        np.asarray(x, np.float32), obs=obs, var=pd.DataFrame(index=GENES[: np.shape(x)[1]])
    ).write_h5ad(tmp_path / "d.h5ad")
    return str(tmp_path / "d.h5ad")


@pytest.mark.parametrize(
    "change, values, message",
    [
        (lambda x: np.where(x == x.max(), np.nan, x), "counts", "NaN or infinite"),
        (lambda x: np.where(x == x.max(), np.inf, x), "counts", "NaN or infinite"),
        (lambda x: x - 1.5, "counts", "negative values"),
        (lambda x: np.log1p(x), "counts", "declared values='counts' but holds non-integer"),
        (lambda x: x * 10, "log", "declared values='log' but holds integers up to"),
    ],
)
def test_bad_values_are_refused_with_a_message_naming_the_file(
    tmp_path, counts, change, values, message
):
    path = _h5ad(tmp_path, change(counts))
    with pytest.raises(UserError, match=message) as error:
        load_dataset(Dataset(name="d", path=path, values=values))
    assert "d.h5ad" in str(error.value)


def test_bad_files_are_refused_with_a_message(tmp_path, counts):
    (tmp_path / "m.csv").write_text("cell,g1,g2\nc1,1,x\nc2,2,3\n")
    cases = [
        (Dataset(name="d", path=str(tmp_path / "missing.h5ad")), "missing.h5ad not found"),
        (Dataset(name="d", path=str(tmp_path / "m.csv")), "non-numeric values"),
        (
            Dataset(name="d", path=str(tmp_path / "m.csv"), labels_file=str(tmp_path / "nope.csv")),
            None,
        ),
        (Dataset(name="d", path=str(tmp_path / "x.parquet")), "x.parquet not found"),
    ]
    (tmp_path / "weird.xyz").write_text("1,2")
    cases.append((Dataset(name="d", path=str(tmp_path / "weird.xyz")), "unknown format"))
    for spec, message in cases:
        with pytest.raises(UserError, match=message or "non-numeric|not found"):
            load_dataset(spec)


def test_vr_files_of_the_wrong_length_are_refused(tmp_path, counts):
    path = _h5ad(tmp_path, counts)
    (tmp_path / "T_VR_Labels.csv").write_text("1,0,1\n")
    with pytest.raises(UserError, match="one row of 8 values 0 or 1"):
        load_dataset(Dataset(name="d", path=path, labels_file=str(tmp_path / "*_VR_Labels.csv")))


def test_repeated_gene_names_are_reported_and_kept_apart(tmp_path, counts, caplog):
    var = pd.DataFrame(index=["Cd3e", "Cd19", "Cd3e", "Nkg7", "Actb"])
    obs = pd.DataFrame({"cell_type": TYPES}, index=CELLS)
    ad.AnnData(counts, obs=obs, var=var).write_h5ad(tmp_path / "d.h5ad")
    table = pd.DataFrame(counts, index=CELLS, columns=list(var.index))
    table.to_csv(tmp_path / "d.csv")
    for name in ("d.h5ad", "d.csv"):
        caplog.clear()
        spec = Dataset(name="d", path=str(tmp_path / name), labels_file=None)
        if name.endswith(".csv"):
            spec = Dataset(name="d", path=spec.path, labels_file=_write_labels(tmp_path / "l.csv"))
        with caplog.at_level(logging.WARNING):
            adata = load_dataset(spec)
        assert list(adata.var_names) == ["Cd3e", "Cd19", "Cd3e-1", "Nkg7", "Actb"], name
        assert "1 gene names occur more than once (e.g. ['Cd3e'])" in caplog.text


def test_a_tab_separated_file_named_csv_is_read_and_said(tmp_path, counts, caplog):
    pd.DataFrame(counts, index=CELLS, columns=GENES).to_csv(tmp_path / "m.csv", sep="\t")
    spec = Dataset(
        name="d", path=str(tmp_path / "m.csv"), labels_file=_write_labels(tmp_path / "l.csv")
    )
    with caplog.at_level(logging.WARNING):
        _check(load_dataset(spec), counts)
    assert "m.csv is tab-separated, not as its name says" in caplog.text


def test_an_all_zero_matrix_and_a_genes_as_rows_table_get_the_message_that_fits(tmp_path, counts):
    with pytest.raises(UserError, match=r"every value of .*d.h5ad is 0 \(8 cells × 5 genes\)"):
        load_dataset(Dataset(name="d", path=_h5ad(tmp_path, np.zeros_like(counts))))
    genes_by_cells = pd.DataFrame(counts.T, index=GENES, columns=CELLS)
    genes_by_cells.to_csv(tmp_path / "g.csv")
    labels = _write_labels(tmp_path / "l.csv")
    with pytest.raises(UserError, match="8 labels for 5 cells.*set transpose=True"):
        load_dataset(Dataset(name="d", path=str(tmp_path / "g.csv"), labels_file=labels))


@pytest.mark.parametrize("suffix", [".loom", ".zarr"])
def test_loom_and_zarr_through_anndatas_readers(tmp_path, counts, suffix):
    obs = pd.DataFrame({"cell_type": TYPES}, index=CELLS)
    adata = ad.AnnData(counts, obs=obs, var=pd.DataFrame(index=GENES))
    path = tmp_path / f"d{suffix}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (adata.write_loom if suffix == ".loom" else adata.write_zarr)(path)
    _check(load_dataset(Dataset(name="d", path=str(path))), counts)


def test_an_h5ad_with_an_empty_x_names_its_layers_and_the_setting(tmp_path, counts):
    obs = pd.DataFrame({"cell_type": TYPES}, index=CELLS)
    adata = ad.AnnData(X=None, obs=obs, var=pd.DataFrame(index=GENES))
    adata.layers["counts"] = sp.csr_matrix(counts)
    path = tmp_path / "layers.h5ad"
    adata.write_h5ad(path)
    with pytest.raises(UserError, match=r"empty X \(the layers \['counts'\]\).*layer=NAME"):
        load_dataset(Dataset(name="d", path=str(path)))
    _check(load_dataset(Dataset(name="d", path=str(path), layer="counts")), counts)
