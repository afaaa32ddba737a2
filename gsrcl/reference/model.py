"""The reference model folder: what `gsrcl export` writes and `gsrcl annotate` reads.

```
<model>/
  manifest.json             format, dataset, method and kind, scale of the values, cell types
                            (each with its encoder, classifier, fold, epoch, scores), the run's
                            CV table the method was chosen from, the Unassigned rule and its
                            held-out rates, versions, and the SHA-256 of every other file
  genes.txt                 the reference's genes, one per line
  neighbourhoods.npz        each type's place in the reference's expression space (the check
                            that sends cells unlike any reference type to `Unassigned`)
  encoders/<sha>.pt         kind "encoder": torch weights + genes + preprocessing (loaded with
                            weights_only=True); cell types that chose the same encoder share it
  classifiers/<type>.skops  a calibrated classifier per cell type (skops: loading runs no code);
                            a multi-class baseline has one, classifiers/all-types.skops
```
Kind "expression" (a baseline exported) has no encoders: its classifiers read the expression,
prepared as the manifest's "input" says (the per-cell normalisation; for scaled features also
the genes kept and their mean and std). Loading checks every checksum first, so a file changed
or swapped after export is refused.
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
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from gsrcl.errors import UserError
from gsrcl.evaluate import nystroem_svm
from gsrcl.evaluate.balanced import BalancedLogisticRegression
from gsrcl.files import sha256
from gsrcl.model.checkpoints import EncoderInput, load_encoder
from gsrcl.reference.neighbourhood import Neighbourhoods
from gsrcl.reference.rule import UnassignedRule

FORMAT = "gsrcl-reference-model"
VERSION = 2
KINDS = ("encoder", "expression")
MANIFEST = "manifest.json"
NEIGHBOURHOODS = "neighbourhoods.npz"
# beyond skops' defaults, the only types a classifier file may hold (a Platt-calibrated model,
# the logistic regressions' balance with a floor)
TRUSTED_TYPES = [
    "gsrcl.evaluate.balanced.BalancedLogisticRegression",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
]
MAX_MANIFEST_BYTES = 8 << 20  # a manifest of thousands of cell types is well under 1 MB
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass
class CellTypeModel:
    name: str
    encoder: torch.nn.Module  # the identity for an expression model
    encoder_file: str  # types with the same file share one encoder ("" for expression models)
    input: EncoderInput  # the genes the classifier's features come from, and their preprocessing
    classifier: Any
    positive: bool | str  # the classifier's class that means this type: True, or its name

    @property
    def column(self) -> int:
        """This type's column of the classifier's `predict_proba`."""
        return list(self.classifier.classes_).index(self.positive)


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
    def kind(self) -> str:
        """ "encoder" (GsRCL: encoder + classifier) or "expression" (a baseline's classifier)."""
        return self.manifest["kind"]

    @property
    def rule(self) -> UnassignedRule:
        """When a cell is Unassigned, as chosen at export (`gsrcl.reference.rule`)."""
        chosen = self.manifest["unassigned"]
        return UnassignedRule(chosen["threshold"], chosen["multiplier"])

    @property
    def genes(self) -> list[str]:
        """Every gene some classifier's features come from, in the reference's order."""
        used = {g for t in self.types for g in t.input.genes}
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
        """The encoder file most types share: its embedding is the one annotate reports
        ("" for an expression model, whose embedding is the reference's principal components)."""
        counts = Counter(t.encoder_file for t in self.types)
        return max(counts, key=counts.__getitem__)

    def embed(self, adata: ad.AnnData, chunk_size: int = 2048) -> np.ndarray:
        """The representation of `adata`'s cells by the main encoder (cells × its width)."""
        from gsrcl.reference.annotation import embed_cells  # annotation builds on this module

        return embed_cells(self, adata, chunk_size)

    def annotate(self, adata: ad.AnnData, threshold: float | None = None, **options):
        """Label an in-memory AnnData (`gsrcl.reference.annotation.annotate`): an Annotation."""
        from gsrcl.reference.annotation import annotate

        return annotate(adata, self, threshold, **options)


def load(folder: str | Path) -> ReferenceModel:
    """Read and verify a model folder; a missing, foreign or changed file is a UserError."""
    folder = Path(folder)
    manifest = _manifest(folder)
    _verify_checksums(folder, manifest)
    try:
        genes = (folder / "genes.txt").read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{folder / 'genes.txt'} is not text; export the model again") from None
    inputs = _Inputs(folder, manifest, genes)
    classifiers: dict[str, Any] = {}
    types = []
    for entry in manifest["cell_types"]:
        encoder, reads = inputs.of(entry)
        name = entry["classifier"]
        if name not in classifiers:  # a multi-class model is one file for every type
            classifiers[name] = _classifier(_inside(folder, name))
        positive = True if _is_binary(classifiers[name]) else entry["name"]
        if positive not in list(classifiers[name].classes_):
            raise UserError(f"{folder / name} has no class {entry['name']!r}; export again")
        cell_type = CellTypeModel(
            entry["name"], encoder, entry.get("encoder") or "", reads, classifiers[name], positive
        )
        types.append(cell_type)
    try:
        neighbourhoods = Neighbourhoods.load(folder / NEIGHBOURHOODS, genes, manifest["values"])
    except (ValueError, KeyError, OSError) as error:
        raise UserError(f"{folder / NEIGHBOURHOODS} is not a GsRCL file ({error})") from None
    return ReferenceModel(folder, manifest, types, neighbourhoods, genes)


class _Inputs:
    """Each type's feature maker: its encoder file (read once per file), or for an expression
    model the identity on the reference's genes prepared as the manifest's "input" says."""

    def __init__(self, folder: Path, manifest: dict, genes: list[str]) -> None:
        self.folder = folder
        self.encoders: dict[str, tuple[torch.nn.Module, EncoderInput]] = {}
        self.expression = None
        if manifest["kind"] == "expression":  # every type reads the same features
            record = manifest["input"]
            scaling = [k for k in ("mean", "std") if "genes" in record]
            reads = EncoderInput(
                record.get("genes", genes),
                manifest["values"],
                record["target_sum"],
                **{k: np.asarray(record[k], dtype=np.float32) for k in scaling},
            )
            self.expression = torch.nn.Identity(), reads

    def of(self, entry: dict) -> tuple[torch.nn.Module, EncoderInput]:
        if self.expression is not None:
            return self.expression
        name = entry["encoder"]
        if name not in self.encoders:
            encoder, saved = _encoder(_inside(self.folder, name))
            self.encoders[name] = encoder, saved.input
        return self.encoders[name]


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
    for key, kind in (
        ("dataset", str),
        ("method", str),
        ("kind", str),
        ("values", str),
        ("cell_types", list),
        ("unassigned", dict),
    ):
        if not isinstance(manifest.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if manifest["values"] not in ("counts", "log"):
        return "'values' must be 'counts' or 'log'"
    if manifest["kind"] not in KINDS:
        return f"'kind' must be one of {list(KINDS)}"
    rule = manifest["unassigned"]
    if not all(_is_number(rule.get(k)) for k in ("threshold", "multiplier")):
        return "'unassigned' needs the numbers 'threshold' and 'multiplier'"
    if manifest["kind"] == "expression":
        record = manifest.get("input")
        target_sum = record.get("target_sum", "missing") if isinstance(record, dict) else "missing"
        if target_sum is not None and not _is_number(target_sum):
            return "an expression model's 'input' needs 'target_sum' (a number or null)"
        if "genes" in record and not _is_scaling(record):
            return "an expression model's scaled 'input' needs 'genes', 'mean', 'std' alike"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and SHA256.fullmatch(v) for k, v in files.items()
    ):
        return "'files' must map each file name to its SHA-256"
    parts = ("name", "classifier") + (("encoder",) if manifest["kind"] == "encoder" else ())
    for entry in manifest["cell_types"]:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(p), str) for p in parts):
            return f"each of 'cell_types' needs the text fields {list(parts)}"
    return ""


def _is_scaling(record: dict) -> bool:
    """Genes (text) with a mean and a positive std each."""
    genes, mean, std = (record.get(k) for k in ("genes", "mean", "std"))
    lists = all(isinstance(v, list) for v in (genes, mean, std))
    return (
        lists
        and len(genes) == len(mean) == len(std) > 0
        and all(isinstance(g, str) for g in genes)
        and all(_is_number(v) for v in mean)
        and all(_is_number(v) and v > 0 for v in std)
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


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
        e[part]
        for e in manifest.get("cell_types", [])
        for part in ("encoder", "classifier")
        if e.get(part)
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


def _encoder(path: Path) -> tuple[torch.nn.Module, Any]:
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
            f"{path} holds a {type(model).__name__}, not a classifier GsRCL exports (a "
            "calibrated SVM, or a multi-class logistic regression); export the model again"
        )
    return model


def _is_gsrcl_classifier(model: Any) -> bool:
    """A Platt-calibrated SVC, exact or approximate (one type against the rest, or
    multi-class), or a multi-class LogisticRegression (balanced with a floor, or plain):
    nothing else."""
    if type(model) in (BalancedLogisticRegression, LogisticRegression):
        return _is_multiclass(model)
    if type(model) is not CalibratedClassifierCV:
        return False
    inner = getattr(model, "calibrated_classifiers_", [])
    classes_ok = _is_binary(model) or _is_multiclass(model)
    return bool(inner) and classes_ok and all(_is_svm(c.estimator) for c in inner)


def _is_svm(model: Any) -> bool:
    return type(model) is SVC or nystroem_svm.is_pipeline(model)


def _is_binary(model: Any) -> bool:
    return list(getattr(model, "classes_", [])) == [False, True]


def _is_multiclass(model: Any) -> bool:
    classes = list(getattr(model, "classes_", []))
    return len(classes) >= 2 and all(isinstance(c, str) for c in classes)


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
