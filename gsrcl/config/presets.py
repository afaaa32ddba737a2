"""The paper's protocol (Alsaggaf, Buchan & Wan 2024) as settings, for configs to start from.

The numbers live once, as the defaults of `gsrcl.config.settings`; this module names the
paper's choice of methods (Gaussian noise with both losses; random masking at four gene counts
with its two encoder sizes) and bundles everything so a config can write
`contrastive=PAPER.contrastive`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from gsrcl.config.settings import (
    Classifier,
    Contrastive,
    Dataset,
    Evaluation,
    Experiment,
    Export,
    Method,
    Split,
)

SMALL_MASKING_ENCODER = (384, 256, 128, 64)  # masking with 500 or 1000 genes
LARGE_MASKING_ENCODER = (2048, 1024, 512, 128)  # masking with 3000 or 5000 genes


def masking(n_genes: int, loss: str = "simclr") -> Method:
    """The contrastive-sc comparison at the paper's encoder size for that gene count."""
    encoder = SMALL_MASKING_ENCODER if n_genes <= 1000 else LARGE_MASKING_ENCODER
    return Method(loss=loss, augmentation="masking", n_genes=n_genes, encoder=encoder)


@dataclass(frozen=True)
class Protocol:
    contrastive: Contrastive = field(default_factory=Contrastive)
    split: Split = field(default_factory=Split)
    evaluation: Evaluation = field(default_factory=Evaluation)
    methods: tuple[Method, ...] = (
        Method(loss="simclr", augmentation="noise"),
        Method(loss="supcon", augmentation="noise"),
        *(masking(n) for n in (500, 1000, 3000, 5000)),
    )


PAPER = Protocol()


def svm(balanced: bool = False) -> Classifier:
    """The paper's RBF SVM grid; `balanced` adds class_weight ∈ {None, "balanced"} to the grid:
    the paper's SVM or the class-balanced one, whichever the inner CV scores higher."""
    grid = PAPER.evaluation.classifier.grid
    if balanced:
        return Classifier(name="svm-or-balanced", grid={**grid, "class_weight": [None, "balanced"]})
    return Classifier(name="svm", grid=grid)


# A class-balanced multi-class logistic regression on log-normalised expression: the kind of
# classifier users pick today, scored one-vs-rest per cell type.
LOGISTIC = Classifier(
    name="logreg",
    estimator="sklearn.linear_model.LogisticRegression",
    params={"class_weight": "balanced", "max_iter": 1000, "tol": 1e-3},
    grid={"C": [0.01, 0.1, 1]},
    multiclass=True,
    features="lognorm",
)

# CellTypist's kind of model: a logistic regression on scaled, selected genes (lognorm, the 2000
# most variable genes, scaled). It finds rare types across donors that the lognorm one misses
# (docs/annotation.md). Balanced with a floor, a type of fewer than `balance_floor` cells weighted
# as one of that many: on a new donor plain balancing makes a type of 2 cells swallow ambiguous
# cells, while within one batch it finds rare types best (docs/class-weights.md). The floor is
# searched with C: 20 and 50 are the weightings the held-out donors of the Baron human references
# favour, each on a different reference, so each reference chooses (by leave-one-batch-out when
# it has a batch column). Chosen on the references alone (docs/constants.md): a floor of 10 has a
# mean as high, but not on every reference. With the plain-balanced `logreg` beside it, export's
# "best" judges both on the reference's held-out cells.
SCALED_LOGISTIC = replace(
    LOGISTIC,
    name="logreg-scaled",
    features="scaled",
    estimator="gsrcl.evaluate.balanced.BalancedLogisticRegression",
    params={"max_iter": 1000, "tol": 1e-3},
    grid={"C": [0.01, 0.1, 1], "balance_floor": [20, 50]},
)

# GsRCL is always shown beside the strongest simple alternatives, not only the paper's SVM.
STRONG_EVALUATION = Evaluation(
    classifier=svm(balanced=True), baselines=(svm(), svm(True), LOGISTIC, SCALED_LOGISTIC)
)


# gsrcl reference's CV folds: the paper's 5, or 2 past LARGE_REFERENCE cells, where each fold's
# test part still holds 20 000 cells or more (over twice the paper's largest dataset) and each
# further fold is one more training: a 100 000-cell reference took ~90 min at 5 folds on 2 cores
# and fits an hour at 2 (docs/scale.md)
REFERENCE_FOLDS, LARGE_REFERENCE_FOLDS, LARGE_REFERENCE = 5, 2, 50_000


def reference_folds(cells: int | None) -> int:
    """The CV folds of a reference of `cells` cells (None: not known before reading)."""
    large = cells is not None and cells > LARGE_REFERENCE
    return LARGE_REFERENCE_FOLDS if large else REFERENCE_FOLDS


def cpu_reference(
    dataset: Dataset,
    results_dir: str,
    epochs: int = 100,
    folds: int = REFERENCE_FOLDS,
    seed: int = 0,
    export: Export | None = None,
    steps: int | None = None,
) -> Experiment:
    """A reference model's experiment with CPU-sized settings (docs/cpu-protocol.md): SimCLR +
    Gaussian noise, encoder 512-256, 100 epochs, lr 1e-3, the paper's split, σ and validation
    interval, beside the strongest simple baselines; `export` as asked (`build_reference`
    exports "best" after the run). A training runs at most `steps` batches (default: as many as
    `epochs`): data of one batch (up to 8192 training cells) its epochs, larger data as many
    whole epochs as fit, so that a large reference trains as many steps as a small one."""
    return Experiment(
        name=f"reference-{dataset.name}",
        datasets=(dataset,),
        methods=(Method(loss="simclr", augmentation="noise", encoder=(512, 256), head=(256, 128)),),
        contrastive=replace(
            PAPER.contrastive,
            epochs=epochs,
            validate_every=min(50, epochs),
            lr=1e-3,
            max_steps=epochs if steps is None else steps,
        ),
        split=replace(PAPER.split, folds=folds),
        evaluation=STRONG_EVALUATION,
        export=export or Export(),
        seed=seed,
        results_dir=results_dir,
    ).validate()


# scanpy's bundled dataset: .raw holds log-normalised expression of 765 genes (X is scaled)
PBMC68K = Dataset(
    name="pbmc68k_reduced",
    path="scanpy:pbmc68k_reduced",
    labels="bulk_labels",
    values="log",
    use_raw=True,
)
