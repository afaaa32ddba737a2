"""A local stand-in for Zenodo and GitHub: the collection's archive and the paper's task files,
generated in their real layout (names, folders, CSV shapes) with small made-up data, served over
HTTP on 127.0.0.1 with range requests, and faults on demand (a cut connection, changed bytes)."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np

from gsrcl.data import collection

TYPES = ["CD4+ T cell", "Cytotoxic T cell", "Natural killer cell", "B cell", "CD14+ monocyte"]
PBMC = collection.DATASETS["pbmc_10xv2"]
BARON = collection.DATASETS["baron_mouse"]


@dataclass
class Served:
    """What the server holds and what it was asked for."""

    root: Path
    url: str = ""
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    cut_after: dict[str, int] = field(default_factory=dict)  # path: bytes sent, then cut, once

    def put(self, name: str, data: bytes) -> None:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class _Handler(BaseHTTPRequestHandler):
    served: Served

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        name = unquote(urlsplit(self.path).path).lstrip("/")
        wanted = self.headers.get("Range")
        self.served.requests.append((name, wanted))
        path = self.served.root / name
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted else 0
        if start >= len(data) and wanted:
            self.send_error(416)
            return
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        cut = self.served.cut_after.pop(name, None)
        self.wfile.write(data[start:cut] if cut else data[start:])  # HTTP/1.0: then it closes

    def log_message(self, *args) -> None:
        pass


def serve(root: Path) -> tuple[Served, ThreadingHTTPServer]:
    served = Served(root)
    handler = type("Handler", (_Handler,), {"served": served})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    served.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return served, server


# ---- the files, in the collection's layout ----


def counts(labels: list[str], genes: int, seed: int) -> np.ndarray:
    """Counts whose mean profile differs by type, so classifiers have something to learn."""
    rng = np.random.default_rng(seed)
    kinds = sorted(set(labels))
    means = rng.gamma(0.5, 2.0, size=(len(kinds), genes))
    return rng.poisson(means[[kinds.index(label) for label in labels]])


def matrix_csv(cells: list[str], genes: list[str], x: np.ndarray) -> bytes:
    """A cells × genes CSV as R's write.csv makes it: quoted names, an empty first header."""
    lines = [",".join(['""', *(f'"{g}"' for g in genes)])]
    lines += [",".join([f'"{c}"', *map(str, row)]) for c, row in zip(cells, x, strict=True)]
    return ("\n".join(lines) + "\n").encode()


def labels_csv(labels: list[str]) -> bytes:
    return ('"x"\n' + "".join(f'"{label}"\n' for label in labels)).encode()


def task_file(labels: list[str], cell_type: str) -> bytes:
    """The paper's one-row 0/1 file, with the line end its files have."""
    return (",".join("1" if label == cell_type else "0" for label in labels) + "\r\r\n").encode()


@dataclass
class Collection:
    """The fixture's archive bytes, the PbmcBench labels and the paper's task files."""

    archive: bytes
    labels: list[str]
    tasks: dict[str, bytes]


def make_collection(cells: int = 60, genes: int = 30) -> Collection:
    labels = [TYPES[i % len(TYPES)] for i in range(cells)]
    ids = [f"pbmc1_10X_v2_{i:04d}" for i in range(cells)]
    names = [f"GENE{j}" for j in range(genes)]
    mouse = [f"type{i % 3}" for i in range(cells)]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(PBMC.matrix, matrix_csv(ids, names, counts(labels, genes, 0)))
        archive.writestr(PBMC.labels, labels_csv(labels))
        mouse_ids = [f"mouse{i}" for i in range(cells)]
        archive.writestr(BARON.matrix, matrix_csv(mouse_ids, names, counts(mouse, genes, 1)))
        archive.writestr(BARON.labels, labels_csv(mouse))
    tasks = {task.cell_type: task_file(labels, task.cell_type) for task in PBMC.tasks}
    return Collection(buffer.getvalue(), labels, tasks)


def md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registered(fixture: Collection, archive_checksum: str | None = "md5") -> dict:
    """The registry's entries with the fixture's sizes and checksums in place of the real ones
    (names, members and URLs unchanged): what a test sets into collection.DATASETS."""
    archive = replace(
        collection.BENCHMARK,
        size=len(fixture.archive),
        checksum=md5(fixture.archive) if archive_checksum else None,
    )
    tasks = tuple(
        replace(
            task,
            file=replace(
                task.file,
                size=len(fixture.tasks[task.cell_type]),
                checksum=sha256(fixture.tasks[task.cell_type]),
            ),
            cells=fixture.labels.count(task.cell_type),
        )
        for task in PBMC.tasks
    )
    return {
        "pbmc_10xv2": replace(PBMC, archive=archive, tasks=tasks),
        "baron_mouse": replace(BARON, archive=archive),
    }


def publish(served: Served, fixture: Collection, archive: bytes | None = None) -> None:
    """Put the archive (or other bytes under its name) and the task files where the registry's
    URLs, pointed at the server, look for them."""
    served.put(
        f"zenodo/{collection.BENCHMARK.name}", fixture.archive if archive is None else archive
    )
    for task in PBMC.tasks:
        served.put(f"tasks/{task.file.name}", fixture.tasks[task.cell_type])
