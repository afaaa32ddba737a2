"""GsRCL runner: cell-type identification with Gaussian-noise contrastive learning, compared
fairly with simple baselines, and reference models that label new cells.

    import gsrcl
    result = gsrcl.run("config.py")                 # .summary (DataFrame), .outcomes, .folder
    model = gsrcl.ReferenceModel.load("results/x/models/d-simclr-noise")
    annotation = gsrcl.annotate(adata, model)       # .table, .to_adata(key_added=...), .write(dir)

Importing the package does no work: the API's modules load on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_API = {
    "run": "gsrcl.api",
    "load_config": "gsrcl.api",
    "build_reference": "gsrcl.api",
    "annotate": "gsrcl.api",
    "ReferenceModel": "gsrcl.reference.model",
    "Annotation": "gsrcl.reference.annotation",
    "RunResult": "gsrcl.runner.pipeline",
    "Experiment": "gsrcl.config.settings",
    "UserError": "gsrcl.errors",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(import_module(_API[name]), name)
    if name == "__version__":  # the installed distribution's, as `gsrcl --version` prints
        return import_module("gsrcl.cli").version()
    raise AttributeError(f"module 'gsrcl' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (what a notebook's tab completion offers), still loaded lazily."""
    return sorted([*__all__, "__version__"])
