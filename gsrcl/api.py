"""The public API: what `import gsrcl` offers a script or a notebook; the CLIs wrap it.

import gsrcl
result = gsrcl.run("config.py")                 # RunResult: .summary, .outcomes, .folder
model = gsrcl.ReferenceModel.load("results/x/models/d-simclr-noise")
annotation = gsrcl.annotate(adata, model)       # Annotation: .table, .to_adata(), .write()
embedding = model.embed(adata)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anndata as ad

from gsrcl.config.configfile import load_experiment
from gsrcl.config.presets import cpu_reference, reference_folds
from gsrcl.config.settings import Dataset, Experiment, Export
from gsrcl.data.readers import read_rows
from gsrcl.errors import UserError
from gsrcl.reference.annotation import Annotation, annotate_adata_or_file
from gsrcl.reference.model import ReferenceModel, check_replaceable
from gsrcl.runner.pipeline import RunResult, execute_experiment


def load_config(path: str | Path, overrides: list[str] = ()) -> Experiment:
    """The `EXPERIMENT` of a config file, with `section.field=value` overrides applied."""
    return load_experiment(path, list(overrides))


def run(
    config: str | Path | Experiment,
    overrides: list[str] = (),
    mode: str = "resume",
    log: Callable[[str], None] = print,
) -> RunResult:
    """Run (or resume) an experiment given as a config file or an `Experiment`. `mode`:
    "resume" (the default), "force" or "failed". Worker processes are spawned, so a script
    calling this must guard its top level with `if __name__ == "__main__":`."""
    if mode not in ("resume", "force", "failed"):
        raise ValueError(f"mode must be 'resume', 'force' or 'failed', not {mode!r}")
    experiment = config if isinstance(config, Experiment) else load_config(config, overrides)
    return execute_experiment(experiment, mode, log)


def build_reference(
    data: str | Path,
    labels: str,
    out: str | Path,
    *,
    log: Callable[[str], None] = print,
    **options: Any,
) -> ReferenceModel:
    """From a labelled file to a reference model, without a config: the runner's own plan, jobs
    and checkpoint selection (`presets.cpu_reference`), then export to `out`
    (`export.after_run`: the run's estimate counts it). `options`: `reference_experiment`'s
    (values, method, results_dir, epochs, steps, folds, seed, batch, keep_candidates). The
    run's results stay in `results_dir` (a rerun resumes)."""
    check_replaceable(Path(out))  # before the run, not after it
    experiment = reference_experiment(data, labels, out, **options)
    result = execute_experiment(experiment, "resume", log)
    if result.status != 0:
        raise UserError(f"the reference was not made; see the errors above and {result.folder}")
    return ReferenceModel.load(Path(out))


def reference_experiment(
    data: str | Path,
    labels: str,
    out: str | Path,
    *,
    values: str = "counts",
    method: str = "best",
    results_dir: str | Path = "results",
    epochs: int = 100,
    folds: int | None = None,
    seed: int = 0,
    batch: str | None = None,
    keep_candidates: bool = False,
    steps: int | None = None,
) -> Experiment:
    """The experiment `build_reference` runs (`gsrcl reference --check` plans it). `batch`: the
    obs column of each cell's batch (donor, sample); the Unassigned rule and "best" are then
    judged on each batch predicted without it, as a new batch will be. `keep_candidates`: with
    "best", every other method's model is written too, as `<out>-<method>`. `steps`: SimCLR's
    budget of batches (default `epochs`: a dataset of one batch trains its epochs, a larger one
    as many whole epochs as fit). `folds`: the CV's (default 5, or 2 past 50 000 cells:
    `presets.reference_folds`)."""
    dataset = Dataset(
        name=Path(data).name.split(".")[0],
        path=str(data),
        labels=labels,
        values=values,
        batch=batch,
    )
    export = Export(after_run=True, method=method, out=str(out), keep_candidates=keep_candidates)
    folds = folds if folds is not None else reference_folds(_cells_in(dataset))
    return cpu_reference(dataset, str(results_dir), epochs, folds, seed, export, steps)


def _cells_in(dataset: Dataset) -> int | None:
    """The cells of an .h5ad or .zarr file, from its obs alone (None for other formats)."""
    rows = read_rows(dataset)
    if rows is None:
        return None
    with rows:
        return rows.cells.n_obs


def annotate(
    cells: ad.AnnData | str | Path,
    model: ReferenceModel | str | Path,
    threshold: float | None = None,
    **options,
) -> Annotation:
    """Label cells (an AnnData, or a file the runner's readers take) with a reference model
    (loaded, or its folder). `threshold` overrides the model's (`model.rule`). `options`:
    chunk_size, use_raw, layer (and transpose for a file)."""
    if not isinstance(model, ReferenceModel):
        model = ReferenceModel.load(model)
    return annotate_adata_or_file(cells, model, threshold, **options)
