"""The experiment `python3 runner.py` runs. Edit it, or copy it and pass --config FILE.

As shipped: scanpy's bundled pbmc68k_reduced (700 cells × 765 genes, 10 cell types), every cell type,
GsRCL (SimCLR and SupCon with Gaussian noise), random gene masking with 500 genes, and the
baselines, sized to finish in under 10 minutes on a 2-core laptop. `gsrcl.presets.PAPER` holds the
paper's protocol (see configs/paper.py).
"""

from dataclasses import replace

from gsrcl.presets import PAPER, SMALL_MASKING_ENCODER
from gsrcl.settings import Classifier, Compute, Dataset, Evaluation, Experiment, Method

SVM_GRID = PAPER.evaluation.classifier.grid

EXPERIMENT = Experiment(
    name="pbmc68k_reduced",
    datasets=(
        # .raw holds log-normalised expression of 765 genes; X is scaled, so it is not used
        Dataset(name="pbmc68k_reduced", path="scanpy:pbmc68k_reduced", labels="bulk_labels",
                values="log", use_raw=True),
    ),
    methods=(
        Method(loss="simclr", augmentation="noise", encoder=(1024, 512), head=(256, 128)),
        Method(loss="supcon", augmentation="noise", encoder=(1024, 512), head=(256, 128)),
        Method(loss="simclr", augmentation="masking", n_genes=500, encoder=SMALL_MASKING_ENCODER),
    ),
    contrastive=replace(PAPER.contrastive, epochs={"simclr": 100, "supcon": 50}, validate_every=25,
                        lr=1e-3),
    evaluation=Evaluation(
        classifier=Classifier(name="svm-balanced", grid={**SVM_GRID, "class_weight": [None, "balanced"]}),
        baselines=(
            Classifier(name="svm", grid=SVM_GRID),  # the paper's baseline
            Classifier(name="svm-balanced", grid={**SVM_GRID, "class_weight": [None, "balanced"]}),
            Classifier(
                name="logreg", estimator="sklearn.linear_model.LogisticRegression",
                params={"class_weight": "balanced", "max_iter": 1000}, grid={"C": [0.01, 0.1, 1]},
                multiclass=True, features="lognorm",
            ),
        ),
    ),
    compute=Compute(devices="auto", cpu_workers=1),
    seed=0,
)
