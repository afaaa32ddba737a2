"""The experiment `python3 runner.py` runs. Edit it, or copy it and pass --config FILE.

As shipped: scanpy's bundled pbmc68k_reduced (700 cells × 765 genes, 10 cell types), every
cell type, GsRCL (SimCLR and SupCon with Gaussian noise), random gene masking with 500 genes, and
the baselines (the paper's SVM, a class-balanced SVM, a logistic regression), sized to finish in
under 10 minutes on a 2-core laptop: narrower encoders, 100 SimCLR / 50 SupCon epochs and a 10×
larger learning rate than the paper's (1e-3), which short trainings need.
`gsrcl.config.presets.PAPER` holds the paper's protocol (see configs/paper.py).
"""

from dataclasses import replace

from gsrcl.config.presets import PAPER, SMALL_MASKING_ENCODER, STRONG_EVALUATION
from gsrcl.config.settings import Compute, Dataset, Experiment, Method

EXPERIMENT = Experiment(
    name="pbmc68k_reduced",
    datasets=(
        # .raw holds log-normalised expression of 765 genes; X is scaled, so it is not used
        Dataset(
            name="pbmc68k_reduced",
            path="scanpy:pbmc68k_reduced",
            labels="bulk_labels",
            values="log",
            use_raw=True,
        ),
    ),
    methods=(
        Method(loss="simclr", augmentation="noise", encoder=(1024, 512), head=(256, 128)),
        Method(loss="supcon", augmentation="noise", encoder=(1024, 512), head=(256, 128)),
        Method(loss="simclr", augmentation="masking", n_genes=500, encoder=SMALL_MASKING_ENCODER),
    ),
    contrastive=replace(
        PAPER.contrastive, epochs={"simclr": 100, "supcon": 50}, validate_every=25, lr=1e-3
    ),
    # an SVM on more than evaluation.exact_max_cells (9000) training cells is fitted
    # approximately (Nystroem features, evaluation.nystroem_components = 200; the results say so)
    evaluation=STRONG_EVALUATION,
    # every visible GPU, else the CPU; jobs are placed by what they need, one per core at most
    compute=Compute(devices="auto"),
    seed=0,
)
