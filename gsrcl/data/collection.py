"""The paper's datasets by name: what `Dataset(path="zenodo:<name>")` fetches (`download`).

Ten of the GsRCL paper's 19 datasets come from the collection of Abdelaal et al. 2019 (Genome
Biology 20:194), Zenodo record 3357167: one archive, `scRNAseq_Benchmark_datasets.zip`, holding
`Intra-dataset/` and `Inter-dataset/` folders of cells × genes CSVs (cell ids in the first column,
gene names in the header) each beside a one-column label file with a header. The paper's other
nine (Adam, Klein, Romanov and six Tabula Muris "Quake" sets) are scziDesk's `.h5` files, not part
of that record, and are not registered. For the five PbmcBench sets the paper published its
binary tasks: the "Binary classification tasks" folder of the GsRCL repository (commit a9d3532,
removed from the repository's tip later), one row of 0/1 per task, checked against the labels.

Every entry records its cells, genes and cell types, so `--check` plans a run before anything is
downloaded. Where each number comes from (and what was checked) is said beside it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gsrcl.config.settings import Dataset
from gsrcl.errors import UserError

PREFIX = "zenodo:"


@dataclass(frozen=True)
class Source:
    """Where files come from: a base URL, and the environment variable that replaces it (a
    mirror, or a test's local server)."""

    folder: str  # the cache's subfolder for this source's files
    url: str
    env: str
    suffix: str = ""  # appended to each file's URL


@dataclass(frozen=True)
class Remote:
    """One file of a source: its path under the source's URL, its size and its checksum
    ("md5:..." or "sha256:..."). A checksum of None means none is published: the first download
    is then used unverified, and its SHA-256 printed for the registry."""

    source: Source
    name: str
    size: int | None
    checksum: str | None


@dataclass(frozen=True)
class PaperTask:
    """One of the paper's binary tasks: the cell type, its file, and the cells it marks 1."""

    cell_type: str
    file: Remote
    cells: int


@dataclass(frozen=True)
class Entry:
    """A registered dataset: the archive and its two members, and its recorded shape."""

    name: str
    description: str
    archive: Remote
    matrix: str  # archive member: cells × genes CSV
    labels: str  # archive member: one label per cell, in the matrix's order, with a header
    cells: int
    genes: int  # genes with a count in some cell (the runner drops all-zero genes)
    types: int
    tasks: tuple[PaperTask, ...] = ()

    @property
    def paper_cell_types(self) -> tuple[str, ...] | None:
        """The types of the paper's tasks, or None where the paper gives no task files."""
        return tuple(task.cell_type for task in self.tasks) or None


ZENODO = Source(
    folder="zenodo-3357167",
    url="https://zenodo.org/records/3357167/files/",
    env="GSRCL_ZENODO_URL",
    suffix="?download=1",
)
# The archive's size and MD5 are Zenodo's own (its record API lists them); they are pinned, with
# the same values, by two unrelated public projects that download this record. Not downloaded
# here (no network); one of those projects reports SHA-256 038d0a61ed3891c3d5f4ebd1dab595646522
# 3e38b89859e1bf4792a9aeffbf06 for the same bytes.
BENCHMARK = Remote(
    ZENODO, "scRNAseq_Benchmark_datasets.zip", 3_671_466_589, "md5:b799a660b8bcaf5f3580a9b6f9372e5b"
)

# The task files at the commit that added them; checksums and sizes computed here from that
# commit's blobs (the bytes raw.githubusercontent.com serves), so they are exact.
GSRCL_TASKS = Source(
    folder="gsrcl-a9d3532",
    url="https://raw.githubusercontent.com/ibrahimsaggaf/GsRCL/"
    "a9d35326fb5687dbfc859ac8d518d462de442c2e/",
    env="GSRCL_TASKS_URL",
)


def _tasks(folder: str, size: int, *tasks: tuple[str, int, str]) -> tuple[PaperTask, ...]:
    return tuple(
        PaperTask(
            cell_type,
            Remote(
                GSRCL_TASKS,
                f"Binary classification tasks/{folder}/{cell_type}_VR_Labels.csv",
                size,
                f"sha256:{sha256}",
            ),
            cells,
        )
        for cell_type, cells, sha256 in tasks
    )


def _pancreas(name: str, folder: str, matrix: str, **shape: int) -> Entry:
    where = f"Intra-dataset/Pancreatic_data/{folder}"
    return Entry(
        name, f"{folder} (pancreas)", BENCHMARK, f"{where}/{matrix}", f"{where}/Labels.csv", **shape
    )


def _pbmc(name: str, folder: str, prefix: str, tasks: tuple[PaperTask, ...], **shape) -> Entry:
    where = f"Inter-dataset/PbmcBench/{folder}"
    return Entry(
        name,
        f"PbmcBench {folder}, sample pbmc1",
        BENCHMARK,
        f"{where}/{prefix}_pbmc1.csv",
        f"{where}/{prefix}_pbmc1Labels.csv",
        tasks=tasks,
        **shape,
    )


# Members: the paths public code reads from this archive (the pancreas ones also listed by a
# project that opened the archive); the test server serves the same layout. Cells and types:
# Abdelaal et al.'s Table 1; PbmcBench cells: the length of the paper's task files. Genes: the
# GsRCL repository's table of its references (genes with a count: for Baron Mouse, 14 861 of the
# file's 14 878, checked against ../shared/data/baron_mouse.h5ad, which also has its 1886 cells
# and 13 types). Reading a dataset says where its files differ from these numbers. Not checked
# here: that every matrix holds whole counts (the default values="counts" refuses other values
# with a message; Muraro's published counts are UMI-corrected, so may not be whole).
DATASETS: dict[str, Entry] = {
    entry.name: entry
    for entry in (
        _pancreas(
            "baron_mouse",
            "Baron Mouse",
            "Filtered_MousePancreas_data.csv",
            cells=1886,
            genes=14861,
            types=13,
        ),
        _pancreas(
            "baron_human",
            "Baron Human",
            "Filtered_Baron_HumanPancreas_data.csv",
            cells=8569,
            genes=17499,
            types=14,
        ),
        _pancreas(
            "muraro",
            "Muraro",
            "Filtered_Muraro_HumanPancreas_data.csv",
            cells=2122,
            genes=18915,
            types=9,
        ),
        _pancreas(
            "segerstolpe",
            "Segerstolpe",
            "Filtered_Segerstolpe_HumanPancreas_data.csv",
            cells=2133,
            genes=22757,
            types=13,
        ),
        _pancreas(
            "xin",
            "Xin",
            "Filtered_Xin_HumanPancreas_data.csv",
            cells=1449,
            genes=33889,
            types=4,
        ),
        _pbmc(
            "pbmc_10xv2",
            "10Xv2",
            "10Xv2",
            _tasks(
                "PbmcBench_10Xv2",
                12890,
                (
                    "CD4+ T cell",
                    1458,
                    "6e5a5e9655cd067e28ee97efd5e39eeedc9cbb45016dd828c1d6ef81933e9f0e",
                ),
                (
                    "Cytotoxic T cell",
                    2128,
                    "3f051f239096997b080cc82b2ea67cd7fa9a4631dbb22ec0cb7fd4a03b514424",
                ),
                (
                    "Natural killer cell",
                    429,
                    "5c3930a343c266744387600ad8ed20782b9743fa9826d041e7f5c4f9df9b112e",
                ),
            ),
            cells=6444,
            genes=22280,
            types=9,
        ),
        _pbmc(
            "pbmc_10xv3",
            "10Xv3",
            "10Xv3",
            _tasks(
                "PbmcBench_10Xv3",
                6446,
                (
                    "Cytotoxic T cell",
                    962,
                    "59bdedf9176e43521700a6055adea9a50ff8b47e609f561bc8bfe0f543dcba1a",
                ),
                (
                    "Natural killer cell",
                    194,
                    "4402610c8d29ae359e8e5a356a1cef95aa2320742abe88bb9decdbcfd7ee56f6",
                ),
            ),
            cells=3222,
            genes=21905,
            types=8,
        ),
        _pbmc(
            "pbmc_drop_seq",
            "Drop-Seq",
            "DR",
            _tasks(
                "PbmcBench_Drop-Seq",
                6446,
                (
                    "CD14+ monocyte",
                    232,
                    "98ebde73aeabb0cf280c46b33ac58ed3df11c8ef3b6e97ebb27efb97bbffc063",
                ),
                (
                    "CD4+ T cell",
                    889,
                    "8fdb868fffb91ba844f3fabf5529bfa42144bf8a4ae954afa682dacf732bb898",
                ),
                (
                    "Cytotoxic T cell",
                    1189,
                    "d6fcb025fdf99b2de99b87d8cfe9e0ff7485107af4f2222005cd45bc09017a3c",
                ),
            ),
            cells=3222,
            genes=19922,
            types=9,
        ),
        _pbmc(
            "pbmc_indrop",
            "inDrop",
            "iD",
            _tasks(
                "PbmcBench_inDrop",
                6446,
                (
                    "CD14+ monocyte",
                    1006,
                    "835213fc7925c9336f29762a531cbf054e1277e5745a481129ffdc425afc804d",
                ),
                (
                    "CD4+ T cell",
                    512,
                    "c083ae9713631d346e46cb3d5054c1c3bb4b6d976e277ba98df11fbf42ff7507",
                ),
                (
                    "Cytotoxic T cell",
                    1108,
                    "b9aa97160a3b177cfff847cca0ad0cbf47143fabdb4d1f97cd1af246326793d3",
                ),
            ),
            cells=3222,
            genes=17159,
            types=7,
        ),
        _pbmc(
            "pbmc_seq_well",
            "Seq-Well",
            "SW",
            _tasks(
                "PbmcBench_Seq-Well",
                6354,
                (
                    "CD4+ T cell",
                    435,
                    "0b9b9325bc4fefd47e44efc6b859f3111133bbb0e7167a2cb4458ad05b3a1bc5",
                ),
                (
                    "Cytotoxic T cell",
                    1121,
                    "b12aff8dc871fcd6c813442549ee8373ee504ec226cb5c3838c52202da413304",
                ),
            ),
            cells=3176,
            genes=21059,
            types=7,
        ),
    )
}


def entry_of(spec: Dataset) -> Entry | None:
    """The registered dataset `spec.path` names, or None when the path is a file."""
    if not spec.path.startswith(PREFIX):
        return None
    name = spec.path.removeprefix(PREFIX)
    if name not in DATASETS:
        raise UserError(
            f"dataset {spec.name}: {spec.path} is not a registered dataset; the registered ones "
            f"are {', '.join(PREFIX + n for n in DATASETS)}"
        )
    return DATASETS[name]


def paper_dataset(name: str) -> Dataset:
    """The registered dataset `name` as the paper ran it: its binary tasks where the paper
    gives them (the PbmcBench sets), else every cell type."""
    if name not in DATASETS:
        raise UserError(f"{name} is not a registered dataset; they are {', '.join(DATASETS)}")
    return Dataset(name=name, path=PREFIX + name, cell_types=DATASETS[name].paper_cell_types)
