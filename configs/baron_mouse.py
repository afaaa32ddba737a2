"""Baron Mouse pancreas (1886 cells × 14 878 genes, 13 cell types) with CPU-sized settings.

The paper's split, folds and SVM grid; the embedding classifier and a baseline add
class_weight="balanced" to the grid, and a class-balanced logistic regression stands beside the
paper's SVM, so GsRCL is compared with the strongest simple baseline. The encoder is narrower and
trains for fewer epochs than the paper's (configs/paper.py) so a laptop finishes it.
"""

from dataclasses import replace

from gsrcl.config.presets import PAPER, STRONG_EVALUATION, masking
from gsrcl.config.settings import Dataset, Experiment, Method

EXPERIMENT = Experiment(
    name="baron_mouse",
    datasets=(
        Dataset(name="baron_mouse", path="../shared/data/baron_mouse.h5ad", labels="cell_type"),
    ),
    methods=(
        Method(loss="simclr", augmentation="noise", encoder=(512, 256), head=(256, 128)),
        Method(loss="supcon", augmentation="noise", encoder=(512, 256), head=(256, 128)),
        masking(1000),
    ),
    contrastive=replace(
        PAPER.contrastive, epochs={"simclr": 100, "supcon": 30}, validate_every=25, lr=1e-3
    ),
    evaluation=STRONG_EVALUATION,
    seed=0,
)
