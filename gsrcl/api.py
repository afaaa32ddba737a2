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

import anndata as ad

from gsrcl.config.configfile import load_experiment
from gsrcl.config.settings import Experiment
from gsrcl.reference.annotation import Annotation, annotate_adata_or_file
from gsrcl.reference.model import ReferenceModel
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


def annotate(
    cells: ad.AnnData | str | Path,
    model: ReferenceModel | str | Path,
    threshold: float = 0.5,
    **options,
) -> Annotation:
    """Label cells (an AnnData, or a file the runner's readers take) with a reference model
    (loaded, or its folder). `options`: chunk_size, use_raw, layer (and transpose for a file)."""
    if not isinstance(model, ReferenceModel):
        model = ReferenceModel.load(model)
    return annotate_adata_or_file(cells, model, threshold, **options)
