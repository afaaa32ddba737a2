"""The reference model folder: what `gsrcl export` writes and `gsrcl annotate` reads.

```
<model>/
  manifest.json             format, dataset, method, scale of the values, cell types (each with
                            its encoder, classifier, fold, epoch, scores), versions, and the
                            SHA-256 of every other file
  genes.txt                 the reference's genes, one per line
  neighbourhoods.npz        each type's place in the reference's expression space (the check
                            that sends cells unlike any reference type to `Unassigned`)
  encoders/<sha>.pt         torch weights + genes + preprocessing (loaded with weights_only=True);
                            cell types that chose the same encoder share its file
  classifiers/<type>.skops  a calibrated classifier per cell type (skops: loading runs no code)
```
Loading checks every checksum first, so a file changed or swapped after export is refused.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import skops.io
import torch
from sklearn.calibration import CalibratedClassifierCV
from sklearn.svm import SVC

from gsrcl.errors import UserError
from gsrcl.files import sha256
from gsrcl.model.checkpoints import EncoderFile, load_encoder
from gsrcl.reference.neighbourhood import Neighbourhoods

FORMAT = "gsrcl-reference-model"
VERSION = 1
MANIFEST = "manifest.json"
NEIGHBOURHOODS = "neighbourhoods.npz"
# beyond skops' defaults, the only types a classifier file may hold (a Platt-calibrated model)
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
]
# skops trusts every scikit-learn estimator by default; a GsRCL classifier is exactly this
CLASSIFIER_TYPES = (CalibratedClassifierCV, SVC)
MAX_MANIFEST_BYTES = 8 << 20  # a manifest of thousands of cell types is well under 1 MB
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class CellTypeModel:
    name: str
    encoder: torch.nn.Module
    encoder_file: str  # types with the same file share one encoder
    checkpoint: EncoderFile  # the encoder's file: genes and preprocessing of its input
    classifier: Any


@dataclass
class ReferenceModel:
    folder: Path
    manifest: dict
    types: list[CellTypeModel]
    neighbourhoods: Neighbourhoods
    reference_genes: list[str]  # genes.txt

    @property
    def values(self) -> str:
        return self.manifest["values"]

    @property
    def genes(self) -> list[str]:
        """Every gene some encoder reads, in the reference's order."""
        used = {g for t in self.types for g in t.checkpoint.input.genes}
        return [g for g in self.reference_genes if g in used]

    @classmethod
    def load(cls, folder: str | Path) -> ReferenceModel:
        """Read and verify a model folder written by `gsrcl export`."""
        return load(folder)

    @property
    def cell_types(self) -> pd.DataFrame:
        """The types the model knows and what each was trained on: reference cells of the type,
        whether the run's CV scored it (a type too small for the split was not), the fold and
        epoch of its encoder, its validation score and test MCC in that CV."""
        columns = ["name", "cells", "validated", "fold", "epoch", "validation_score", "test_mcc"]
        rows = [
            {c: entry.get(c, True if c == "validated" else None) for c in columns}
            for entry in self.manifest["cell_types"]
        ]
        return pd.DataFrame(rows, columns=columns)

    @property
    def main_encoder(self) -> str:
        """The encoder file most types share: its embedding is the one annotate reports."""
        counts = Counter(t.encoder_file for t in self.types)
        return max(counts, key=counts.__getitem__)

    def embed(self, adata: ad.AnnData, chunk_size: int = 2048) -> np.ndarray:
        """The representation of `adata`'s cells by the main encoder (cells × its width)."""
        from gsrcl.reference.annotation import embed_cells  # annotation builds on this module

        return embed_cells(self, adata, chunk_size)

    def annotate(self, adata: ad.AnnData, threshold: float = 0.5, **options):
        """Label an in-memory AnnData (`gsrcl.reference.annotation.annotate`): an Annotation."""
        from gsrcl.reference.annotation import annotate

        return annotate(adata, self, threshold, **options)


def load(folder: str | Path) -> ReferenceModel:
    """Read and verify a model folder; a missing, foreign or changed file is a UserError."""
    folder = Path(folder)
    manifest = _manifest(folder)
    _verify_checksums(folder, manifest)
    encoders: dict[str, tuple[torch.nn.Module, dict]] = {}
    types = []
    for entry in manifest["cell_types"]:
        if entry["encoder"] not in encoders:
            encoders[entry["encoder"]] = _encoder(_inside(folder, entry["encoder"]))
        encoder, checkpoint = encoders[entry["encoder"]]
        classifier = _classifier(_inside(folder, entry["classifier"]))
        types.append(
            CellTypeModel(entry["name"], encoder, entry["encoder"], checkpoint, classifier)
        )
    try:
        genes = (folder / "genes.txt").read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{folder / 'genes.txt'} is not text; export the model again") from None
    try:
        neighbourhoods = Neighbourhoods(folder / NEIGHBOURHOODS, genes, manifest["values"])
    except (ValueError, KeyError, OSError) as error:
        raise UserError(f"{folder / NEIGHBOURHOODS} is not a GsRCL file ({error})") from None
    return ReferenceModel(folder, manifest, types, neighbourhoods, genes)


def _manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise UserError(
            f"{folder} is not a GsRCL reference model (no {MANIFEST}); export one with "
            "`python3 -m gsrcl export --config CONFIG`"
        )
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise UserError(f"{path} is {path.stat().st_size} bytes, too large for a GsRCL manifest")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a GsRCL reference model manifest")
    if manifest.get("version") != VERSION:
        raise UserError(
            f"{path} has format version {manifest.get('version')}; this GsRCL reads version "
            f"{VERSION}; export the model again with this version"
        )
    problem = _schema_problem(manifest)
    if problem:
        raise UserError(f"{path}: {problem}; export the model again")
    return manifest


def _schema_problem(manifest: dict) -> str:
    """What makes the manifest unusable, or "" (types checked before any value is used)."""
    for key, kind in (("dataset", str), ("method", str), ("values", str), ("cell_types", list)):
        if not isinstance(manifest.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if manifest["values"] not in ("counts", "log"):
        return "'values' must be 'counts' or 'log'"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v) for k, v in files.items()
    ):
        return "'files' must map each file name to its SHA-256"
    for entry in manifest["cell_types"]:
        parts = ("name", "encoder", "classifier")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(p), str) for p in parts):
            return f"each of 'cell_types' needs the text fields {list(parts)}"
    return ""


def _inside(folder: Path, name: str) -> Path:
    """The file `name` of the model folder, refusing any way out of it (absolute paths, '..',
    a link that points elsewhere): a manifest must never make us load a file it did not ship."""
    relative = PurePosixPath(name)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise UserError(f"{folder}: {MANIFEST} names {name!r}, outside the model folder")
    path = folder / relative
    if not path.resolve().is_relative_to(folder.resolve()):
        raise UserError(f"{folder}: {name} leads outside the model folder; refusing it")
    return path


def _verify_checksums(folder: Path, manifest: dict) -> None:
    listed = manifest["files"]
    needed = {"genes.txt", NEIGHBOURHOODS} | {
        e[part] for e in manifest.get("cell_types", []) for part in ("encoder", "classifier")
    }
    unlisted = sorted(needed - set(listed))
    if unlisted:
        raise UserError(f"{folder}: {MANIFEST} gives no checksum for {unlisted}; refusing them")
    for name, expected in listed.items():
        path = _inside(folder, name)
        if not path.is_file():
            raise UserError(f"{folder}: {name} is missing; copy the whole model folder")
        if sha256(path) != expected:
            raise UserError(
                f"{folder}: {name} does not match its checksum in {MANIFEST}: it was changed or "
                "replaced after export; refusing to load it (export the model again)"
            )


def _encoder(path: Path) -> tuple[torch.nn.Module, dict]:
    try:
        return load_encoder(path)
    except Exception as error:  # weights_only refuses anything but tensors and plain data
        raise UserError(f"{path} is not a GsRCL encoder file ({error})") from None


def _classifier(path: Path) -> Any:
    try:
        model = skops.io.load(path, trusted=TRUSTED_TYPES)
    except skops.io.exceptions.UntrustedTypesFoundException as error:
        raise UserError(f"{path} holds types a GsRCL classifier never holds: {error}") from None
    except Exception as error:
        raise UserError(f"{path} is not a GsRCL classifier file ({error})") from None
    if not _is_gsrcl_classifier(model):
        raise UserError(
            f"{path} holds a {type(model).__name__}, not the calibrated SVM GsRCL exports; "
            "export the model again"
        )
    return model


def _is_gsrcl_classifier(model: Any) -> bool:
    """A Platt-calibrated SVC over the classes False / True, nothing else."""
    if type(model) is not CalibratedClassifierCV:
        return False
    inner = getattr(model, "calibrated_classifiers_", [])
    classes = [bool(c) for c in getattr(model, "classes_", [])]
    return bool(inner) and classes == [False, True] and all(type(c.estimator) is SVC for c in inner)


def check_replaceable(folder: Path) -> None:
    """Export writes only where it may: a new or empty folder, or a model folder it made."""
    if not folder.exists():
        return
    if folder.is_dir() and not any(folder.iterdir()):
        return
    if not _is_model_folder(folder):
        raise UserError(
            f"{folder} exists and is not a GsRCL model folder; export never overwrites other "
            "files: choose another --out"
        )


def _is_model_folder(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def swap_in(staging: Path, folder: Path, scratch: Path) -> None:
    """Put the finished `staging` folder in place of `folder`: the old model moves into
    `scratch` (removed with it) only once the new one is whole, and comes back if the swap fails."""
    previous = scratch / "previous"
    if folder.exists():
        os.rename(folder, previous)
    try:
        os.rename(staging, folder)
    except OSError:
        if previous.exists():
            os.rename(previous, folder)
        raise


def write_manifest(folder: Path, manifest: dict) -> None:
    """The manifest, with the checksum of every file in the folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        **manifest,
        "files": {p.relative_to(folder).as_posix(): sha256(p) for p in files},
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))
