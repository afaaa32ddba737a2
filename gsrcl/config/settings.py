"""Typed, validated experiment settings.

Every number of the paper's protocol is a field here; the defaults are the paper's values
(`gsrcl.config.presets.PAPER` gathers them). `Experiment.validate()` checks types and ranges
and names the offending field, so a mistyped config stops before any work.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from gsrcl.errors import UserError

LOSSES = ("simclr", "supcon")
METRICS = ("mcc", "f1", "ap")


BASELINE = "baseline"  # the method of the jobs that score the baselines

# The exact RBF SVM (kernel_svm) holds a fold's training cells' squared distances (float64, n²)
# and, per fit thread, an inner split's kernel with its distances slice: measured at 7000 cells,
# 25 bytes per n² with one fit thread (+13 per further thread), so a 2 GiB budget holds
# n = √(2 GiB / 25 B) = 9268 training cells; rounded down. The largest registered dataset of
# the paper (Baron Human, 8569 cells) is under it even when export fits on every cell.
EXACT_MAX_CELLS = 9000
# Nystroem components (landmark cells) of the approximation past it. Its memory grows as cells
# × m (features 4 B, and per fit thread liblinear's copy of the rows, ~22 B: 0.5 GB at 100 000
# cells) and its time faster: on 6786 tiled Baron Mouse cells m = 500 searched 2.8× slower than
# m = 200 for test MCCs as close to the exact SVM's (4 types). bench/approximate_svm.py
# measures the agreement at this m (docs/approximate-svm.md); a reference with many rare types
# may want more (landmarks are drawn uniformly, so a rare type may have none).
NYSTROEM_COMPONENTS = 200
# The approximate search's inner CV runs on a stratified sample of this many training cells (its
# choice is refit on all of them): the search then costs the same at any size past it, and the
# job grows with the cells only through its refits, embeddings and predictions. The measured
# agreement with the exact SVM is in docs/approximate-svm-sampled.md.
SEARCH_MAX_CELLS = 10_000


@dataclass(frozen=True)
class Approximation:
    """When an RBF SVC's grid is searched on the Nystroem approximation instead of exact
    kernels, and on how many cells (the `Evaluation` settings of the same names)."""

    exact_max_cells: int | None = None  # past it, approximate; None: always exact
    components: int = NYSTROEM_COMPONENTS  # landmark cells
    search_max_cells: int | None = None  # the inner CV's sample past it; None: every cell


EXACT = Approximation()  # what a classifier is fitted by unless told otherwise


# the solver name of the approximation, in `Evaluation.solver` and in results
APPROXIMATE_SOLVER = "nystroem"


def past_exact(cells: int | None, exact_max_cells: int | None) -> bool:
    """Whether `cells` training cells are more than `exact_max_cells` (None: never)."""
    return None not in (cells, exact_max_cells) and cells > exact_max_cells


def approximates(solver: str, cells: int | None, exact_max_cells: int | None) -> bool:
    """Whether an RBF SVC on `cells` training cells is fitted on the approximation: when
    `solver` asks for it or past `exact_max_cells`."""
    return solver == APPROXIMATE_SOLVER or past_exact(cells, exact_max_cells)


@dataclass(frozen=True)
class Dataset:
    """One labelled dataset: where it is, where its labels are, and what its values are."""

    name: str
    # .h5ad, .h5 (10x or scziDesk), a 10x matrix-market folder, CSV/TSV (.gz),
    # "scanpy:pbmc68k_reduced" for scanpy's bundled dataset, or "zenodo:<name>" for one of the
    # paper's datasets, downloaded on first use (gsrcl.data.collection lists them)
    path: str
    labels: str = "cell_type"  # the obs column holding the cell type
    # instead of `labels`: a CSV with one column (a label per cell, in order) or two (cell id,
    # label), or a glob of the GsRCL paper's one-row binary files "<dir>/*_VR_Labels.csv"
    labels_file: str | None = None
    values: Literal["counts", "log"] = "counts"  # raw counts, or already log-normalised
    use_raw: bool = False  # read `.raw` instead of `X` (pbmc68k_reduced keeps log values there)
    layer: str | None = None  # .h5ad: read this layer instead of `X`
    transpose: bool = False  # CSV/TSV with genes as rows and cells as columns
    cell_types: tuple[str, ...] | None = None  # the tasks; None = every cell type
    # the obs column naming each cell's batch (donor, sample, animal): an exported model's
    # Unassigned rule and "best" are then judged on each batch predicted without it
    batch: str | None = None

    def check(self) -> list[str]:
        problems = []
        if not self.name or "/" in self.name:
            problems.append("name must be a non-empty string without '/'")
        if self.cell_types is not None and not self.cell_types:
            problems.append("cell_types must list at least one type, or be None for all")
        if self.use_raw and self.layer is not None:
            problems.append("use_raw and layer both choose the matrix; set one of them")
        return problems


@dataclass(frozen=True)
class Split:
    """Stratified hold-out for checkpoint selection, then k-fold CV on the rest."""

    validation_fraction: float = 0.2
    folds: int = 5

    def check(self) -> list[str]:
        problems = []
        if not 0 < self.validation_fraction < 1:
            problems.append("validation_fraction must be between 0 and 1")
        if self.folds < 2:
            problems.append("folds must be at least 2")
        return problems


@dataclass(frozen=True)
class Method:
    """A contrastive method: loss × augmentation, with its encoder and head widths."""

    loss: Literal["simclr", "supcon"]
    augmentation: Literal["noise", "masking"]
    noise_sigma: float = 1.0  # Gaussian noise: std of the noise added to each view
    mask_p: float = 0.9  # masking: input dropout probability
    n_genes: int | None = None  # masking: top highly variable genes; None = all genes
    encoder: tuple[int, ...] = (4096, 4096, 4096, 2048)
    head: tuple[int, ...] = (512, 128)

    @property
    def name(self) -> str:
        genes = f"-{self.n_genes}" if self.n_genes else ""
        return f"{self.loss}-{self.augmentation}{genes}"

    def check(self) -> list[str]:
        problems = []
        if self.noise_sigma <= 0:
            problems.append("noise_sigma must be > 0")
        if not 0 <= self.mask_p < 1:
            problems.append("mask_p must be in [0, 1)")
        if self.n_genes is not None and self.n_genes < 2:
            problems.append("n_genes must be at least 2, or None for all genes")
        if self.augmentation == "masking" and self.n_genes is None:
            problems.append("masking needs n_genes (the number of highly variable genes)")
        if self.augmentation == "noise" and self.n_genes is not None:
            problems.append("n_genes applies to masking; Gaussian noise uses all genes")
        if not self.encoder or min(self.encoder) < 1:
            problems.append("encoder must list positive layer widths")
        if not self.head or min(self.head) < 1:
            problems.append("head must list positive layer widths")
        return problems


@dataclass(frozen=True)
class Contrastive:
    """Training of the contrastive encoder, shared by every method."""

    epochs: dict[str, int] = field(default_factory=lambda: {"simclr": 3000, "supcon": 1000})
    validate_every: int = 50  # epochs between checkpoint scorings on the validation cells
    batch_size: int = 8192  # full batch when the training cells fit, BatchNorm otherwise
    # a budget of optimizer steps (batches): a training whose epochs would take more runs as
    # many whole epochs as fit in it (at least one); None: the epochs as given. Data of one
    # batch takes one step an epoch, so the budget only binds past batch_size training cells.
    max_steps: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-6
    temperature: float = 0.07
    init_std: float = 0.02  # weights ~ N(0, init_std), biases 0
    # Not the paper's: speed options, off until bench/training.py shows they pay.
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast of the forward pass
    compile: bool = False  # torch.compile the model
    # score snapshots on a background thread while training continues ("auto": on GPUs only)
    overlap_validation: Literal["auto", "on", "off"] = "auto"

    def __post_init__(self) -> None:
        # `epochs=20` (e.g. from --set) means the same number for every loss.
        if isinstance(self.epochs, int) and not isinstance(self.epochs, bool):
            object.__setattr__(self, "epochs", dict.fromkeys(LOSSES, self.epochs))

    def check(self) -> list[str]:
        problems = []
        if isinstance(self.epochs, dict):
            unknown = set(self.epochs) - set(LOSSES)
            if unknown:
                problems.append(f"epochs has unknown losses {sorted(unknown)}; use {list(LOSSES)}")
            if any(e < 1 for e in self.epochs.values()):
                problems.append("epochs must be at least 1")
        if self.validate_every < 1:
            problems.append("validate_every must be at least 1")
        if self.batch_size < 2:
            problems.append("batch_size must be at least 2")
        if self.max_steps is not None and self.max_steps < 1:
            problems.append("max_steps must be at least 1, or None (the epochs as given)")
        for name in ("lr", "temperature", "init_std"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be > 0")
        if self.weight_decay < 0:
            problems.append("weight_decay must be >= 0")
        return problems


@dataclass(frozen=True)
class Classifier:
    """A scikit-learn estimator with fixed params and a grid searched by inner CV."""

    name: str
    estimator: str = "sklearn.svm.SVC"  # import path
    params: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list] = field(
        default_factory=lambda: {"gamma": ["scale", 1e-4, 1e-3, 1e-2], "C": [0.1, 1, 10, 100]}
    )
    # Baselines only: fit once on the multi-class labels, then score each type one-vs-rest.
    multiclass: bool = False
    # Baselines only: "log1p" = log(x + 1) of all genes (the paper); "lognorm" = per-cell
    # normalised to the median total count, then log1p; "scaled" = lognorm, the 2000 most
    # variable genes, each scaled by the training cells' mean and std (CellTypist's input).
    features: Literal["log1p", "lognorm", "scaled"] = "log1p"

    @property
    def baseline_name(self) -> str:
        """Its name as a baseline method, in results and for export."""
        return f"{BASELINE}-{self.name}"

    def check(self) -> list[str]:
        problems = []
        if "." not in self.estimator:
            problems.append("estimator must be an import path such as 'sklearn.svm.SVC'")
        if any(not isinstance(v, list | tuple) or not v for v in self.grid.values()):
            problems.append("grid values must be non-empty lists")
        return problems


def _paper_svm() -> Classifier:
    return Classifier(name="svm")


@dataclass(frozen=True)
class Evaluation:
    """How embeddings and baselines are classified and scored. An RBF SVC's grid is searched
    exactly on cell × cell kernels up to `exact_max_cells` training cells, and past it on the
    Nystroem approximation (`nystroem_components` landmark cells) with a linear SVM."""

    classifier: Classifier = field(default_factory=_paper_svm)  # on the learnt embeddings
    baselines: tuple[Classifier, ...] = field(default_factory=lambda: (_paper_svm(),))
    metric: Literal["mcc", "f1", "ap"] = "mcc"  # inner CV and checkpoint selection
    inner_folds: int = 5
    # who solves an RBF SVC's grid: "libsvm" (CPU), "device" (libsvm's algorithm batched on the
    # job's torch device, GPU or CPU), "auto" (the device on a GPU, libsvm elsewhere), or
    # "nystroem" (always the approximation below)
    solver: Literal["auto", "libsvm", "device", "nystroem"] = "auto"
    # an RBF SVC whose training cells exceed this is fitted on the same grid approximately
    # (Nystroem features + a linear SVM, gsrcl.evaluate.nystroem_svm: memory linear in the
    # cells) instead of on cell × cell kernels; None: always exact. The default fits the exact
    # search in about 2 GiB (EXACT_MAX_CELLS above); results say which tasks were approximate.
    exact_max_cells: int | None = EXACT_MAX_CELLS
    nystroem_components: int = NYSTROEM_COMPONENTS  # the approximation's m (landmark cells)
    # the approximate grid search's inner CV on a stratified sample of this many training
    # cells, the choice refit on all (SEARCH_MAX_CELLS above); None: on every cell
    search_max_cells: int | None = SEARCH_MAX_CELLS

    @property
    def approximation(self) -> Approximation:
        return Approximation(self.exact_max_cells, self.nystroem_components, self.search_max_cells)

    def approximates(self, cells: int) -> bool:
        """Whether an RBF SVC on `cells` training cells is fitted on the approximation."""
        return approximates(self.solver, cells, self.exact_max_cells)

    def check(self) -> list[str]:
        problems = []
        if self.inner_folds < 2:
            problems.append("inner_folds must be at least 2")
        if self.exact_max_cells is not None and self.exact_max_cells < 1:
            problems.append("exact_max_cells must be at least 1, or None (always exact)")
        if self.nystroem_components < 2:
            problems.append("nystroem_components must be at least 2")
        if self.search_max_cells is not None and self.search_max_cells < 10 * self.inner_folds:
            problems.append("search_max_cells must be at least 10 × inner_folds, or None")
        if self.classifier.multiclass:
            problems.append("classifier.multiclass applies to baselines only")
        names = [b.name for b in self.baselines]
        if len(set(names)) != len(names):
            problems.append(f"baselines need distinct names, got {names}")
        return problems


@dataclass(frozen=True)
class Compute:
    """Where jobs run."""

    devices: str | tuple[int, ...] = "auto"  # "auto" (all GPUs, else CPU), "cpu", or GPU indices
    # GPU jobs one GPU runs at once: "auto" packs as many as its memory and the cores allow
    workers_per_device: int | Literal["auto"] = "auto"
    # CPU jobs at once (baselines; every job where there is no GPU): "auto" = up to one per core
    cpu_workers: int | Literal["auto"] = "auto"
    # torch / BLAS / scoring threads per job; None = the cores shared out among the running jobs,
    # shared out again as jobs finish (a job takes its new share at its next validation step)
    threads: int | None = None
    # "local": worker processes on this machine; "ray": Ray tasks on a cluster (pip install ray)
    executor: Literal["local", "ray"] = "local"
    # ray: None starts a local Ray in the runner; "auto" joins the cluster this machine is part
    # of; "ray://head:10001" connects to a remote head node
    ray_address: str | None = None
    ray_cpus_per_job: int = 1  # ray: cores a CPU job reserves (GPU jobs: 1 core, a GPU share)
    # a training saves its state (to resume after a kill) at a validation step at most this often;
    # 0 saves at every step. At the paper's width one save is GBs, so not every few seconds on a GPU
    save_progress_seconds: float = 300.0

    def check(self) -> list[str]:
        problems = []
        if isinstance(self.devices, str) and self.devices not in ("auto", "cpu"):
            problems.append("devices must be 'auto', 'cpu' or a list of GPU indices")
        if any(w != "auto" and w < 1 for w in (self.workers_per_device, self.cpu_workers)):
            problems.append("workers_per_device and cpu_workers must be 'auto' or at least 1")
        if self.threads is not None and self.threads < 1:
            problems.append("threads must be at least 1, or None")
        if self.ray_cpus_per_job < 1:
            problems.append("ray_cpus_per_job must be at least 1")
        if self.save_progress_seconds < 0:
            problems.append("save_progress_seconds must be >= 0")
        return problems


@dataclass(frozen=True)
class Export:
    """Reference models for `python3 -m gsrcl annotate` (one per dataset)."""

    after_run: bool = False  # export each dataset's model when the run finishes
    # a method of the run (baselines too), or "best": the one whose model labels held-out cells best
    method: str = "best"
    # the model folder (one dataset only); None: results/<experiment>/models/<dataset>-<method>
    out: str | None = None
    keep_candidates: bool = False  # with "best": every other method's model too, beside it


@dataclass(frozen=True)
class Storage:
    """What a run keeps on disk. At the paper's width one encoder is 412 MB in float32."""

    # "chosen": per dataset, method and cell type only the encoder export would choose across
    # the folds (the others are removed once a better fold is done); "all": every fold's
    keep_encoders: Literal["chosen", "all"] = "chosen"
    # encoders stored as float16 halve the disk; annotation labels measured the same for
    # >= 99.9 % of cells (docs/storage.md). Training and scoring always use float32.
    encoder_precision: Literal["float32", "float16"] = "float16"


@dataclass(frozen=True)
class Experiment:
    """One experiment: datasets × methods × folds, plus the baselines."""

    name: str
    datasets: tuple[Dataset, ...]
    methods: tuple[Method, ...] = ()
    contrastive: Contrastive = field(default_factory=Contrastive)
    split: Split = field(default_factory=Split)
    evaluation: Evaluation = field(default_factory=Evaluation)
    compute: Compute = field(default_factory=Compute)
    export: Export = field(default_factory=Export)
    storage: Storage = field(default_factory=Storage)
    seed: int = 0
    results_dir: str = "results"

    @property
    def method_names(self) -> list[str]:
        """Every scored method in display order: the baselines, then the contrastive methods."""
        baselines = [b.baseline_name for b in self.evaluation.baselines]
        return baselines + [m.name for m in self.methods]

    def check(self) -> list[str]:
        problems = []
        if not self.name or "/" in self.name:
            problems.append("name must be a non-empty string without '/'")
        if not self.datasets:
            problems.append("datasets must list at least one dataset")
        for kind, items in (("datasets", self.datasets), ("methods", self.methods)):
            names = [item.name for item in items]
            if len(set(names)) != len(names):
                problems.append(f"{kind} need distinct names, got {names}")
        if self.export.method not in ("best", *self.method_names):
            problems.append(f"export.method must be 'best' or one of {self.method_names}")
        if self.export.out is not None and len(self.datasets) != 1:
            problems.append("export.out names one model folder: it needs exactly one dataset")
        return problems

    def validate(self) -> Experiment:
        """Raise a UserError naming every wrong field; return self for chaining."""
        problems = _problems(self, "experiment")
        if problems:
            raise UserError("invalid config:\n  " + "\n  ".join(problems))
        return self


# ---- generic validation of dataclass fields against their type hints ----


def _problems(obj: Any, path: str) -> list[str]:
    problems = []
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        where = f"{path}.{f.name}"
        if not _conforms(value, hints[f.name]):
            problems.append(f"{where} must be {_describe(hints[f.name])}, got {value!r}")
            continue
        for item_path, item in _nested(value, where):
            problems += _problems(item, item_path)
    if not problems and hasattr(obj, "check"):  # ranges matter once the types are right
        problems += [f"{path}: {p}" for p in obj.check()]
    return problems


def _nested(value: Any, where: str) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(value):
        return [(where, value)]
    if isinstance(value, tuple | list):
        return [(f"{where}[{i}]", v) for i, v in enumerate(value) if dataclasses.is_dataclass(v)]
    return []


def _conforms(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return value in args
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if origin is tuple:
        element = args[0] if args else Any
        return isinstance(value, tuple | list) and all(_conforms(v, element) for v in value)
    if origin is list or hint is list:
        return isinstance(value, list | tuple)
    if origin is dict:
        key, val = args
        return isinstance(value, dict) and all(
            _conforms(k, key) and _conforms(v, val) for k, v in value.items()
        )
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    if origin is dict:
        return f"a dict of {_describe(args[0])} to {_describe(args[1])}"
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))
