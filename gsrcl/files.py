"""Writing files so that a reader never sees half of one: a temporary name, then a rename.

Every file the tool writes (results, models, annotations) goes through `atomic_write`, which also
gives the file the permissions the user's umask asks for (0644 under umask 022), as `open` would.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(tmp_path)` then rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask
        os.replace(tmp, path)
    except OSError as error:
        if error.filename or error.errno is None:
            raise
        raise OSError(error.errno, error.strerror, str(path)) from error  # name the file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=1, default=_plain)))


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(source: Path, target: Path) -> None:
    """A second name for a file: a hard link where the file system has them, else a copy."""
    target.unlink(missing_ok=True)
    try:
        os.link(source, target)
    except OSError:
        atomic_write(target, lambda tmp: shutil.copyfile(source, tmp))


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | tuple | set):
        return list(value)
    return str(value)


def safe_name(name: str) -> str:
    """A file name for any user-given name (a cell type), one-to-one and bounded: a readable
    slug of at most 48 characters, then 8 hex digits of the exact name's SHA-256
    ('CD4+/CD25 T Reg' → 'CD4+_CD25_T_Reg-<8 hex>'), so 'T/cell' and 'T_cell', or 'αβ T cell'
    and 'γδ T cell', get files of their own and a 400-character name fits a file system."""
    slug = re.sub(r"[^A-Za-z0-9_.+-]+", "_", name)[:48].strip("._-") or "name"
    return f"{slug}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def describe_os_error(error: OSError) -> str:
    """One line: which file could not be written or read, why, and what to do."""
    where = f" {error.filename}" if error.filename else ""
    advice = {
        28: "free some space (or point results_dir at a larger disk) and rerun",
        13: "fix the folder's permissions (or point results_dir elsewhere) and rerun",
        30: "the file system is read-only; point results_dir at a writable folder and rerun",
        122: "the disk quota is exhausted; free some space and rerun",
    }.get(error.errno, "fix the cause and rerun")
    verb = "cannot write" if error.errno in (28, 30, 122) else "cannot access"
    return f"{verb}{where}: {error.strerror or error}; {advice}"
