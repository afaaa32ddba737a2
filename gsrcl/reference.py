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

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import skops.io
import torch

from gsrcl.checkpoints import load_encoder
from gsrcl.errors import UserError
from gsrcl.neighbourhood import Neighbourhoods

FORMAT = "gsrcl-reference-model"
VERSION = 1
MANIFEST = "manifest.json"
NEIGHBOURHOODS = "neighbourhoods.npz"
# beyond skops' defaults, the only types a classifier file may hold (a Platt-calibrated model)
TRUSTED_TYPES = [
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class CellTypeModel:
    name: str
    encoder: torch.nn.Module
    encoder_file: str  # types with the same file share one encoder
    checkpoint: dict  # genes and preprocessing of the encoder's input
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
        used = {g for t in self.types for g in t.checkpoint["genes"]}
        return [g for g in self.reference_genes if g in used]


def load(folder: str | Path) -> ReferenceModel:
    """Read and verify a model folder; a missing, foreign or changed file is a UserError."""
    folder = Path(folder)
    manifest = _manifest(folder)
    _verify_checksums(folder, manifest)
    encoders: dict[str, tuple[torch.nn.Module, dict]] = {}
    types = []
    for entry in manifest["cell_types"]:
        if entry["encoder"] not in encoders:
            encoders[entry["encoder"]] = _encoder(folder / entry["encoder"])
        encoder, checkpoint = encoders[entry["encoder"]]
        classifier = _classifier(folder / entry["classifier"])
        types.append(
            CellTypeModel(entry["name"], encoder, entry["encoder"], checkpoint, classifier)
        )
    genes = (folder / "genes.txt").read_text().splitlines()
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
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not valid JSON ({error}); export the model again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not a GsRCL reference model manifest")
    if manifest.get("version") != VERSION:
        raise UserError(
            f"{path} has format version {manifest.get('version')}; this GsRCL reads version "
            f"{VERSION}; export the model again with this version"
        )
    return manifest


def _verify_checksums(folder: Path, manifest: dict) -> None:
    listed = manifest.get("files", {})
    needed = {"genes.txt", NEIGHBOURHOODS} | {
        e[part] for e in manifest.get("cell_types", []) for part in ("encoder", "classifier")
    }
    unlisted = sorted(needed - set(listed))
    if unlisted:
        raise UserError(f"{folder}: {MANIFEST} gives no checksum for {unlisted}; refusing them")
    for name, expected in listed.items():
        path = folder / name
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
        return skops.io.load(path, trusted=TRUSTED_TYPES)
    except skops.io.exceptions.UntrustedTypesFoundException as error:
        raise UserError(f"{path} holds types a GsRCL classifier never holds: {error}") from None
    except Exception as error:
        raise UserError(f"{path} is not a GsRCL classifier file ({error})") from None


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
