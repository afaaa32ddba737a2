"""The paper's protocol (Alsaggaf, Buchan & Wan 2024) on the paper's datasets, for a GPU box.

Encoder 4096-4096-4096-2048 on all genes, 3000 SimCLR / 1000 SupCon epochs, validation every 50
epochs, the paper's SVM grid, random masking at 500/1000/3000/5000 genes (`PAPER`). The datasets
are named, not pathed: the first run downloads them (Zenodo record 3357167, 3.67 GB, and the
paper's binary task files) into $GSRCL_DATA_DIR, by default ~/.cache/gsrcl-runner; `--check`
plans the run without downloading. These are the 10 of the paper's 19 datasets that are in that
collection (`gsrcl.data.collection`); the PbmcBench sets are scored on the paper's own tasks.
"""

from gsrcl.config.presets import PAPER
from gsrcl.config.settings import Experiment
from gsrcl.data.collection import paper_dataset

EXPERIMENT = Experiment(
    name="paper",
    datasets=tuple(
        paper_dataset(name)
        for name in (
            "baron_mouse",
            "baron_human",
            "muraro",
            "segerstolpe",
            "xin",
            "pbmc_10xv2",
            "pbmc_10xv3",
            "pbmc_drop_seq",
            "pbmc_indrop",
            "pbmc_seq_well",
        )
    ),
    methods=PAPER.methods,
    contrastive=PAPER.contrastive,
    split=PAPER.split,
    evaluation=PAPER.evaluation,
    seed=0,
)
