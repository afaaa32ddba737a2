"""How long a reference takes: `gsrcl reference --method best --batch batch`, beside CellTypist.

    python3 bench/reference.py              # both cases (about 25 minutes on 2 CPU cores)
    python3 bench/reference.py human       # cases whose name starts so (the page keeps the
                                           # other cases' last figures)

Cases (`../shared/data`, each with its batch column):
- human: the three-donor Baron human file (1836 cells × 20 125 genes, 14 types, 3 donors);
- mouse: Baron Mouse (1886 cells × 14 878 genes, 13 types, 2 mice).

Each runs the command a user types, from an empty results folder, as a process of its own: its
wall time split into the estimate made before the jobs, the jobs and the export (from the lines
the command prints), and the peak memory of its process tree (the runner and its workers,
sampled every 0.2 s). CellTypist 1.7.1's `train` on the same cells (normalised to 10 000 per cell
and logged, as it expects; 2 jobs) is timed in the venv `bench/crossbatch.py` makes for it, with
its defaults and with `feature_selection=True`. Writes docs/reference.md.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.crossbatch import celltypist_venv  # noqa: E402
from bench.sampler import Sampler  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
FOLDER = ROOT / "results" / "reference-bench"
PAGE = ROOT / "docs" / "reference.md"
CASES = {"human": "baron_human_3donors.h5ad", "mouse": "baron_mouse.h5ad"}
TARGETS = {"total_min": 10.0, "export_min": 1.0, "peak_gb": 8.0}  # issue 39, on 2 cores


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and every process below it (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                parents[int(entry.name)] = int(fields[1])
            except (OSError, IndexError):
                continue
    tree, grew = {root}, True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= below
        grew = bool(below)
    total = 0
    for pid in tree:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmRSS:\s+(\d+) kB", status)
        total += int(found.group(1)) * 1024 if found else 0
    return total


def run_reference(name: str, data: Path) -> dict:
    """The user's command from an empty results folder: seconds per phase and peak memory."""
    folder = FOLDER / name
    subprocess.run(["rm", "-rf", str(folder)], check=True)
    folder.mkdir(parents=True)
    # -u: each line arrives as it is printed, for the phases' times
    command = [
        sys.executable, "-u", "-m", "gsrcl", "reference", "--data", str(data), "--labels",
        "cell_type", "--batch", "batch", "--method", "best",
        "--out", str(folder / "model"), "--results", str(folder / "results"),
    ]  # fmt: skip
    start = time.perf_counter()
    seen: dict[str, float] = {}  # a phase's marker line → seconds from the start
    with open(folder / "log.txt", "w") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        with (
            Sampler(lambda: tree_rss(process.pid), every=0.2) as rss,
            Sampler(lambda: os.getloadavg()[0], every=5.0) as load,
        ):
            for line in process.stdout:
                log.write(line)
                for marker in PHASE_MARKERS:
                    if re.match(marker, line):
                        seen[marker] = time.perf_counter() - start  # the last one of its kind
            process.wait()
    total = time.perf_counter() - start
    text = (folder / "log.txt").read_text()
    if process.returncode != 0:
        raise SystemExit(f"{name}: gsrcl reference failed; see {folder / 'log.txt'}")
    chosen = re.search(r"export: best = (\S+)", text).group(1)
    manifest = json.loads((folder / "model" / "manifest.json").read_text())
    held_out = manifest["unassigned"]["held_out"]
    estimated, last_job, report, export = (seen[m] for m in PHASE_MARKERS)
    return {
        "total": total,
        "before_jobs": estimated,  # reading the data, the plan and the estimate's timings
        "jobs": last_job - estimated,
        "report": report - last_job,  # the summary and the report
        "export": export - report,
        "export_estimate": _minutes_or_seconds(
            re.search(r"the export took .*; estimated ([\d.]+) (min|s)", text)
        ),
        "peak_gb": max(rss.samples, default=0) / 1e9,
        "load": sum(load.samples) / max(1, len(load.samples)),  # 2 = both cores busy
        "best": chosen,
        "held_out": f"{held_out['accuracy']:.3f} / {held_out['macro_f1']:.3f}",
    }


# the lines that end each phase: the estimate, the last job, the report, the export
PHASE_MARKERS = (r"estimate: ~", r"\[\d+/\d+\] ", r"report: ", r"export: \S+ done in")


def _minutes_or_seconds(found: re.Match | None) -> float:
    if found is None:
        return 0.0
    return float(found.group(1)) * (60 if found.group(2) == "min" else 1)


CELLTYPIST_TIMING = """
import sys, time, json
import anndata as ad, celltypist, numpy as np, scanpy as sc
cells = ad.read_h5ad(sys.argv[1])
cells.obs_names_make_unique()
sc.pp.normalize_total(cells, target_sum=1e4)
sc.pp.log1p(cells)
seconds = {}
for setting, options in (("defaults", {}), ("feature_selection", {"feature_selection": True})):
    np.random.seed(0)
    start = time.perf_counter()
    celltypist.train(cells, "cell_type", n_jobs=2, **options)
    seconds[setting] = time.perf_counter() - start
print(json.dumps(seconds))
"""


def celltypist_seconds(data: Path) -> dict | None:
    """CellTypist's training time on the same cells, or None where it cannot be installed."""
    python = celltypist_venv()
    if python is None:
        return None
    done = subprocess.run(
        [str(python), "-c", CELLTYPIST_TIMING, str(data)],
        capture_output=True, text=True, check=True, env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def page(results: dict[str, dict]) -> str:
    lines = [
        "# How long a reference takes",
        "",
        "`python3 bench/reference.py` (2 CPU cores): `gsrcl reference --method best --batch "
        "batch` from an empty results folder, as a user runs it, beside CellTypist 1.7.1's "
        "`train` on the same cells. Targets (issue 39): the whole command ≤ "
        f"{TARGETS['total_min']:.0f} min on the three-donor file, its export ≤ "
        f"{TARGETS['export_min']:.0f} min, peak memory ≤ {TARGETS['peak_gb']:.0f} GB.",
        "",
        "| case | whole | reading and estimate | jobs | summary and report | export | peak "
        "memory | load | best (held-out accuracy / macro-F1) | CellTypist train (defaults / "
        "feature selection) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        typist = r.get("celltypist")
        typist_text = (
            f"{typist['defaults']:.1f} s / {typist['feature_selection']:.1f} s"
            if typist
            else "not installed"
        )
        lines.append(
            f"| {name} | {r['total'] / 60:.1f} min | {r['before_jobs']:.0f} s | "
            f"{r['jobs'] / 60:.1f} min | {r['report']:.0f} s | {r['export']:.0f} s | "
            f"{r['peak_gb']:.2f} GB | "
            f"{r['load']:.1f} | {r['best']} ({r['held_out']}) | {typist_text} |"
        )
    lines += [
        "",
        "Reading and estimate: from the command's start to its estimate line (the data read and "
        "checked, then each method timed briefly, as `--check` does); "
        "the jobs are the cross-validation (SimCLR 100 epochs and the baselines, 5 "
        "folds); the export judges every method on each donor held out from precomputed "
        "kernels, reusing the settings the CV chose, and fits only the winner on every cell. "
        "Load: the machine's mean 1-minute load average during the command (2 = its two cores "
        "busy; more means other work shared them and the times are longer than alone).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    wanted = sys.argv[1:]
    results = {}
    for name, file in CASES.items():
        if wanted and not any(name.startswith(w) for w in wanted):
            continue
        print(f"{name}: gsrcl reference on {file} ...", flush=True)
        results[name] = run_reference(name, DATA / file)
        results[name]["celltypist"] = celltypist_seconds(DATA / file)
        print(json.dumps(results[name], indent=1), flush=True)
    known = FOLDER / "results.json"  # a case run alone keeps the other cases' last figures
    earlier = json.loads(known.read_text()) if known.exists() else {}
    results = {
        name: results.get(name) or earlier[name] for name in CASES if name in {**earlier, **results}
    }
    known.write_text(json.dumps(results, indent=1))
    text = page(results)
    print(text)
    PAGE.write_text(text)
    print(f"written to {PAGE}")


if __name__ == "__main__":
    main()
