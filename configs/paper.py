"""The paper's protocol (Alsaggaf, Buchan & Wan 2024) for a GPU box: every number from PAPER.

Encoder 4096-4096-4096-2048 on all genes, 3000 SimCLR / 1000 SupCon epochs, validation every 50
epochs, the paper's SVM grid, random masking at 500/1000/3000/5000 genes. Put the paper's datasets
under data/ and list them here; Baron Mouse from ../shared/data is the example.
"""

from gsrcl.config.presets import PAPER
from gsrcl.config.settings import Dataset, Experiment

EXPERIMENT = Experiment(
    name="paper",
    datasets=(
        Dataset(name="baron_mouse", path="../shared/data/baron_mouse.h5ad", labels="cell_type"),
    ),
    methods=PAPER.methods,
    contrastive=PAPER.contrastive,
    split=PAPER.split,
    evaluation=PAPER.evaluation,
    seed=0,
)
