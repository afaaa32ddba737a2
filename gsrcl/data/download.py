"""Registered datasets (`collection`) fetched on first use into a cache folder, checked and
unpacked once, then handed to the readers as local files.

The cache is `$GSRCL_DATA_DIR`, else pooch's cache folder for this tool (`~/.cache/gsrcl-runner`
on Linux). A file is downloaded with pooch, which keeps it only when its checksum matches the
registry's (a corrupt or truncated download is deleted). What arrived of an interrupted download
stays in `<file>.part` and the next attempt asks only for the rest (an HTTP range request; a
server that ignores it sends the whole file again). The archive's members a dataset needs are
unpacked beside it, each written under a temporary name and renamed, and a marker written last
says the dataset is complete: later reads (every worker's) touch neither the network nor the
archive. One process at a time fetches into a source's folder (a lock); the others wait.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pooch

from gsrcl.data.collection import Entry, Remote, Source
from gsrcl.errors import UserError
from gsrcl.files import atomic_write, write_text

CACHE_ENV = "GSRCL_DATA_DIR"
CHUNK = 2**20
TIMEOUT = 60  # seconds without a byte before a download counts as stalled

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Files:
    """Where a registered dataset's files are (or will be) in the cache."""

    matrix: Path
    labels: Path
    tasks: dict[str, Path]  # the paper's task file of each cell type
    marker: Path  # written last: the dataset is complete


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or pooch.os_cache("gsrcl-runner"))


def url(remote: Remote) -> str:
    base = os.environ.get(remote.source.env) or remote.source.url
    return base.rstrip("/") + "/" + quote(remote.name) + remote.source.suffix


def files(entry: Entry) -> Files:
    unpacked = _folder(entry.archive.source) / Path(entry.archive.name).stem
    return Files(
        matrix=unpacked / entry.matrix,
        labels=unpacked / entry.labels,
        tasks={task.cell_type: _local(task.file) for task in entry.tasks},
        marker=unpacked / f".{entry.name}.complete",
    )


def is_fetched(entry: Entry) -> bool:
    return files(entry).marker.exists()


def fetch(entry: Entry) -> Files:
    """The dataset's local files, downloading, checking and unpacking what is missing."""
    where = files(entry)
    if where.marker.exists():
        return where
    with _locked(_folder(entry.archive.source)):
        if where.marker.exists():  # another process fetched it while this one waited
            return where
        archive = _download(entry.archive)
        for member, target in ((entry.matrix, where.matrix), (entry.labels, where.labels)):
            _unpack(archive, member, target)
        for task in entry.tasks:
            _download(task.file)
        write_text(where.marker, f"{where.matrix}\n{where.labels}\n")
    log.info("%s: unpacked into %s", entry.name, where.matrix.parent)
    return where


def describe(entries: list[Entry]) -> list[str]:
    """What fetching `entries` will download (for --check): each file once, with its size."""
    archives = list(dict.fromkeys(entry.archive for entry in entries))
    tasks = list(dict.fromkeys(task.file for entry in entries for task in entry.tasks))
    total = sum(remote.size or 0 for remote in archives + tasks)
    what = ", ".join(f"{a.name} ({_size(a.size or 0)})" for a in archives)
    if tasks:
        what += f", {len(tasks)} task files of the paper"
    return [
        f"download on first use: {what}; {_size(total)} in all, into {cache_dir()} "
        f"(set {CACHE_ENV} to choose the folder)"
    ]


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _folder(source: Source) -> Path:
    return cache_dir() / source.folder


def _local(remote: Remote) -> Path:
    return _folder(remote.source) / remote.name


@contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process that is downloading into %s", folder)
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _download(remote: Remote) -> Path:
    """The file in the cache, downloaded and checked if it is not there (or does not match)."""
    target, address = _local(remote), url(remote)
    part = target.with_name(target.name + ".part")
    if not target.exists():
        log.info("downloading %s (%s) from %s", remote.name, _size(remote.size or 0), address)
    try:
        with _quiet_pooch():
            path = pooch.retrieve(
                address,
                known_hash=remote.checksum,
                fname=target.name,
                path=target.parent,
                downloader=Resumable(part, remote.size, progress=sys.stderr.isatty()),
            )
    except ValueError as error:  # pooch deleted the file that does not match
        part.unlink(missing_ok=True)
        raise UserError(
            f"{remote.name} (from {address}) was refused: {error}. Nothing of it was kept; run "
            f"again to download it again (if it keeps failing, the file changed upstream: "
            f"compare {remote.checksum})"
        ) from None
    except OSError as error:  # requests' errors are OSErrors: refused, reset, timed out, 404
        arrived = part.stat().st_size if part.exists() else 0
        kept = f"{arrived} bytes arrived and are kept in {part}" if arrived else "nothing arrived"
        raise UserError(
            f"could not download {remote.name} from {address} ({type(error).__name__}: "
            f"{error}); {kept}: run again to resume, or set {remote.source.env} to a mirror"
        ) from None
    if remote.checksum is None:
        log.warning(
            "%s (from %s) was NOT verified: no checksum is recorded for it; its SHA-256 is %s "
            "(record it in gsrcl/data/collection.py)",
            remote.name,
            address,
            pooch.file_hash(path),
        )
    return Path(path)


@contextmanager
def _quiet_pooch() -> Iterator[None]:
    """pooch's own log lines speak of its API (known_hash=...); this module says what happened."""
    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class Resumable:
    """A pooch downloader that streams into `part`, asking only for the bytes it lacks, then
    moves the whole file to where pooch checks it. A transfer that stops early raises with the
    part kept; a complete transfer of the wrong size is refused with the part removed."""

    def __init__(self, part: Path, size: int | None, progress: bool = False) -> None:
        self.part, self.size, self.progress = part, size, progress

    def __call__(self, url: str, output_file: str, pooch_object: object) -> None:
        if self.size is not None and self._have() > self.size:
            self.part.unlink()  # not the beginning of this file
        have = self._have()
        if self.size is None or have < self.size:
            self._fetch(url, have)
        got = self._have()
        if self.size is not None and got != self.size:
            self.part.unlink()
            raise ValueError(f"{got} bytes arrived where {self.size} were expected (truncated)")
        shutil.move(self.part, output_file)

    def _fetch(self, url: str, have: int) -> None:
        import requests  # pooch's own HTTP client

        headers = {"Range": f"bytes={have}-"} if have else {}
        with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            if response.status_code == 416:  # the server's file is shorter than the part
                self.part.unlink()
                return self._fetch(url, 0)
            response.raise_for_status()
            resumed = response.status_code == 206
            if have:
                said = "resuming at byte %d" if resumed else "the server ignored resuming at %d"
                log.info("%s: " + said, url, have)
            self._stream(response, "ab" if resumed else "wb", have if resumed else 0)

    def _have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def _stream(self, response, mode: str, start: int) -> None:
        from tqdm import tqdm

        bar = tqdm(
            total=self.size, initial=start, unit="B", unit_scale=True, disable=not self.progress
        )
        self.part.parent.mkdir(parents=True, exist_ok=True)
        with open(self.part, mode) as out, bar:
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))


def _unpack(archive: Path, member: str, target: Path) -> None:
    """One member of the archive written to `target` (a temporary name, then renamed)."""
    try:
        with zipfile.ZipFile(archive) as zipped:
            name = _member(zipped, member, archive)

            def copy(tmp: Path) -> None:
                with zipped.open(name) as data, open(tmp, "wb") as out:
                    shutil.copyfileobj(data, out, CHUNK)  # zipfile checks the member's CRC

            atomic_write(target, copy)
    except zipfile.BadZipFile as error:
        raise UserError(
            f"{archive} is damaged ({error}) although its checksum matched; delete it and run again"
        ) from None


def _member(zipped: zipfile.ZipFile, member: str, archive: Path) -> str:
    """The member's name in the archive, which may put a top folder above the registry's path."""
    names = zipped.namelist()
    found = [name for name in names if name == member or name.endswith("/" + member)]
    if not found:
        raise UserError(
            f"{archive} has no member {member}: the registry (gsrcl/data/collection.py) does "
            f"not match this archive's layout (it holds e.g. {names[:3]})"
        )
    return found[0]
