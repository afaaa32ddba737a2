import anndata as ad
import numpy as np

from gsrcl.data.preprocess import fit_lognorm, fit_masking


def _counts(seed=0, n=120, genes=60):
    rng = np.random.default_rng(seed)
    x = rng.poisson(rng.gamma(0.5, 4, size=genes), size=(n, genes)).astype(np.float32)
    return ad.AnnData(x)


def test_masking_preprocessing_is_fitted_on_training_cells_only():
    adata = _counts()
    train = np.arange(80)
    fitted = fit_masking(adata[train], "counts", n_genes=20)
    # change every non-training cell drastically: nothing fitted may move
    changed = adata.copy()
    changed.X[80:] = changed.X[80:] * 50 + 7
    refitted = fit_masking(changed[train], "counts", n_genes=20)
    assert np.array_equal(fitted.genes, refitted.genes)
    assert np.allclose(fitted.mean, refitted.mean) and np.allclose(fitted.std, refitted.std)
    assert fitted.target_sum == refitted.target_sum
    # the training cells are transformed identically whatever the other cells hold
    assert np.allclose(fitted.transform(adata)[train], refitted.transform(changed)[train])
    assert fitted.transform(adata).shape == (120, 20)


def test_masking_scaling_uses_training_statistics():
    adata = _counts(1)
    train = np.arange(90)
    fitted = fit_masking(adata[train], "counts", n_genes=15)
    x_train = fitted.transform(adata[train])
    assert np.allclose(x_train.mean(axis=0), 0, atol=1e-4)
    assert np.allclose(x_train.std(axis=0, ddof=1), 1, atol=1e-3)


def test_lognorm_target_is_the_training_median_and_log_data_is_left_alone():
    adata = _counts(2)
    train = np.arange(50)
    fitted = fit_lognorm(adata[train], "counts")
    assert fitted.target_sum == float(np.median(adata.X[train].sum(axis=1)))
    assert fit_lognorm(adata[train], "log").target_sum is None
    assert np.array_equal(fit_lognorm(adata[train], "log").transform(adata), adata.X)
