"""Memory and time of `gsrcl annotate` on a million-cell query, on this machine.

    python3 bench/annotate_scale.py [--cells 100000 1000000] [--method simclr-noise]
                                    [--folder /tmp/annot] [--keep]

Each query tiles Baron Mouse's 1886 cells (CSR, float32 counts) to --cells cells, every copy's
counts thinned by a binomial(0.8) draw so no two cells are equal. It is written PIECE cells at a
time (the first piece by anndata's writer with a 64-bit indptr, the others appended with
`anndata.io.sparse_dataset(...).append`, obs last with `anndata.io.write_elem`): the whole is
never in memory. The reference is made with the tool itself on Baron Mouse, small: a narrow
SimCLR (128-64, 10 epochs) beside the class-balanced logistic regression, 2 folds, then `export`
of --method (kept in --folder and reused by later runs; the default is GsRCL's own kind of model:
baseline-logreg's embedding, the reference's principal components, sent umap-learn's spectral
layout crawling on these near-copies, over 17 min for 20 000 cells). Each query is labelled by
`gsrcl annotate` as a process of its own, as a user runs it (the UMAP figure included), while its
resident memory is sampled every 0.5 s (bench/sampler.py); the peak is the kernel's (wait4's
ru_maxrss), the curve the samples'. Prints the figures and writes docs/annotate-scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.reference import tree_rss  # noqa: E402
from bench.sampler import Sampler  # noqa: E402
from gsrcl.config.presets import LOGISTIC, svm  # noqa: E402
from gsrcl.config.settings import (  # noqa: E402
    Contrastive,
    Dataset,
    Evaluation,
    Experiment,
    Method,
    Split,
)
from gsrcl.reference.annotation import LARGE_QUERY, UMAP_CELLS  # noqa: E402
from gsrcl.reference.export import export_model  # noqa: E402
from gsrcl.runner.pipeline import run_experiment  # noqa: E402

BARON = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"
PAGE = ROOT / "docs" / "annotate-scale.md"
PIECE = 20_000  # cells made and written at a time
TARGET_GB = 4.0  # the bound on the annotate process's resident memory


def tiled_query(cells: int, path: Path) -> None:
    """Baron Mouse's cells tiled to `cells`, each copy thinned (binomial 0.8), written a piece at
    a time."""
    from anndata.io import sparse_dataset, write_elem

    reference = ad.read_h5ad(BARON)
    counts = sp.csr_matrix(reference.X, dtype=np.float32)
    rng = np.random.default_rng(0)
    matrix = None
    for start in range(0, cells, PIECE):
        stop = min(start + PIECE, cells)
        block = counts[np.arange(start, stop) % reference.n_obs]
        block.data = rng.binomial(block.data.astype(np.int64), 0.8).astype(np.float32)
        block.eliminate_zeros()
        if matrix is None:
            block.indptr = block.indptr.astype(np.int64)  # a million cells pass 2^31 values
            first = ad.AnnData(block, var=pd.DataFrame(index=reference.var_names))
            first.obs_names = _names(start, stop)
            first.write_h5ad(path)
            file = h5py.File(path, "r+")
            matrix = sparse_dataset(file["X"])
        else:
            matrix.append(block)
    write_elem(file, "obs", pd.DataFrame(index=_names(0, cells)))
    file.close()


def _names(start: int, stop: int) -> list[str]:
    return [f"query-{i}" for i in range(start, stop)]


def reference_model(folder: Path, method: str) -> Path:
    """The small Baron Mouse reference, trained once and exported as `method`."""
    model = folder / f"model-{method}"
    if (model / "manifest.json").exists():
        return model
    experiment = Experiment(
        name="annotate-scale",
        datasets=(Dataset(name="baron_mouse", path=str(BARON), labels="cell_type"),),
        methods=(Method(loss="simclr", augmentation="noise", encoder=(128, 64), head=(64, 32)),),
        contrastive=Contrastive(epochs=10, validate_every=5, lr=1e-3),
        split=Split(folds=2),
        evaluation=Evaluation(classifier=svm(), baselines=(LOGISTIC,), inner_folds=3),
        results_dir=str(folder / "results"),
    ).validate()
    start = time.perf_counter()
    assert run_experiment(experiment, log=lambda line: None) == 0
    export_model(experiment, method=method, out=model, log=lambda line: None)
    print(f"reference: {method}, trained and exported in {time.perf_counter() - start:.0f} s")
    return model


def annotate(model: Path, query: Path, out: Path) -> dict:
    """`gsrcl annotate` as a process of its own: wall and CPU time, peak and sampled resident
    memory, the seconds at which each line came."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-u", "-m", "gsrcl", "annotate", "--model", str(model)]
    command += ["--query", str(query), "--out", str(out)]
    start = time.perf_counter()
    lines = []
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    with Sampler(lambda: (time.perf_counter() - start, tree_rss(process.pid)), every=0.5) as rss:
        for line in process.stdout:
            lines.append((time.perf_counter() - start, line.rstrip()))
            print(f"  {lines[-1][0]:7.1f} s  {line.rstrip()}", flush=True)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if process.returncode != 0:
        raise SystemExit(f"gsrcl annotate failed ({process.returncode}) on {query}")
    return {
        "wall": wall,
        "peak_gb": usage.ru_maxrss * 1024 / 1e9,  # kB
        "cpu": usage.ru_utime + usage.ru_stime,  # its own seconds on a core, whatever the load
        "samples": [(t, b) for t, b in rss.samples if b > 0],
        "lines": lines,
        "outputs": {p.name: p.stat().st_size for p in sorted(out.iterdir())},
    }


def curve(samples: list[tuple[float, int]], points: int = 10) -> list[tuple[float, float]]:
    """The sampled resident memory at `points` evenly spaced moments: (seconds, GB)."""
    if not samples:
        return []
    times = np.array([t for t, _ in samples])
    sizes = np.array([b for _, b in samples])
    moments = np.linspace(times[0], times[-1], points)
    return [(float(t), float(sizes[np.searchsorted(times, t, side="left")]) / 1e9) for t in moments]


def page(results: dict, method: str) -> str:
    lines = [
        "# Labelling a million cells",
        "",
        f"`python3 bench/annotate_scale.py` ({time.strftime('%Y-%m-%d')}): `gsrcl annotate` on "
        "queries made by tiling Baron Mouse's 1886 cells (CSR float32 counts, each copy thinned "
        "by a binomial(0.8) draw), against a small Baron Mouse reference made with the tool "
        f"itself (`{method}`, from a 2-fold run of a 128-64 SimCLR + noise, 10 epochs, beside "
        "the class-balanced logistic regression), run as a user runs it (with the UMAP figure), "
        "as a process of its own, niced and pinned to one core of a 2-core machine another "
        "engineer was timing benchmarks on (load: the mean 1-minute load average during the "
        "command; 2 = both cores busy, more means the times are longer than alone). Target: at "
        f"most {TARGET_GB:.0f} GB resident.",
        "",
        "| cells | query file | wall | CPU | cells / CPU s | load | peak resident memory | "
        "target met | outputs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cells, r in results.items():
        outputs = ", ".join(f"{n} {s / 1e6:.0f} MB" for n, s in r["outputs"].items())
        lines.append(
            f"| {int(cells):,} | {r['query_gb']:.1f} GB | {r['wall'] / 60:.1f} min | "
            f"{r['cpu'] / 60:.1f} min | {int(cells) / r['cpu']:.0f} | {r['load']:.1f} | "
            f"{r['peak_gb']:.2f} GB | "
            f"{'yes' if r['peak_gb'] <= TARGET_GB else 'no'} | {outputs} |"
        )
    largest, r = max(results.items(), key=lambda item: int(item[0]))
    lines += [
        "",
        f"Past {LARGE_QUERY:,} cells the outputs are compact (`gsrcl/reference/annotation.py`): "
        "predictions.csv as ever, labels.h5ad with the labels and the embedding but not the "
        f"expression, and a UMAP of a random {UMAP_CELLS:,} cells; the query is read a chunk "
        "(2048 cells) at a time and the embedding written to disk chunk by chunk.",
        "",
        f"Resident memory of the {int(largest):,}-cell run over its wall time (sampled):",
        "",
        "| seconds | GB |",
        "|---|---|",
        *[f"| {t:.0f} | {gb:.2f} |" for t, gb in r["curve"]],
        "",
        "Lines the command printed, with the second each came:",
        "",
        "```",
        *[f"{t:7.1f} s  {text}" for t, text in r["lines"]],
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cells", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--method", default="simclr-noise", help="the method exported")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/annot"))
    parser.add_argument("--keep", action="store_true", help="keep the query files")
    args = parser.parse_args()
    if not BARON.exists():
        sys.exit(f"{BARON} not found: the benchmark needs the shared data folder")
    args.folder.mkdir(parents=True, exist_ok=True)
    model = reference_model(args.folder, args.method)
    results = {}
    for cells in args.cells:
        query = args.folder / f"query-{cells}.h5ad"
        if not query.exists():
            start = time.perf_counter()
            tiled_query(cells, query)
            print(f"query: {cells} cells written in {time.perf_counter() - start:.0f} s")
        print(f"gsrcl annotate on {cells} cells ...", flush=True)
        with Sampler(lambda: os.getloadavg()[0], every=5.0) as load:
            r = annotate(model, query, args.folder / f"out-{cells}")
        r["load"] = sum(load.samples) / max(1, len(load.samples))  # 2 = both cores busy
        r["query_gb"] = query.stat().st_size / 1e9
        r["curve"] = curve(r.pop("samples"))
        results[str(cells)] = r
        print(json.dumps({k: v for k, v in r.items() if k != "lines"}, indent=1), flush=True)
        if not args.keep:
            query.unlink()
    known = args.folder / "results.json"  # a size run alone keeps the other sizes' last figures
    earlier = json.loads(known.read_text()) if known.exists() else {}
    results = dict(sorted({**earlier, **results}.items(), key=lambda item: int(item[0])))
    known.write_text(json.dumps(results, indent=1))
    text = page(results, args.method)
    print(text)
    PAGE.write_text(text)
    print(f"written to {PAGE}")


if __name__ == "__main__":
    main()
