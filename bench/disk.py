"""The disk a run keeps: the paper's protocol on Baron Mouse, and what float16 storage changes.

    python3 bench/disk.py            # about 25 min on 2 CPU cores; prints the figures

1. Disk. `configs/paper.py` (the paper's widths: encoder 14 878 → 4096-4096-4096-2048, SimCLR
   and SupCon with Gaussian noise, masking at 500/1000/3000/5000 genes; 5 folds; 13 cell types)
   with the storage defaults (keep_encoders="chosen", float16), run for 2 epochs with a
   validation step at each: file sizes do not depend on epochs or cells, so the run reads a
   stratified subsample of Baron Mouse (at most 40 cells a type, all 13 types scored). Printed:
   the bytes the results folder holds (hard links counted once), its encoders, the worst case
   (`--check`'s figure: every task choosing its own snapshot), what keep_encoders="all" would
   keep, and the peak seen during the run (sampled).
2. Precision. A CPU-sized reference (`presets.cpu_reference`: SimCLR, encoder 512-256, 100
   epochs) trained on mouse 1 and stored as float32, exported, labels mouse 2; the same model
   with its encoders' weights round-tripped through the float16 storage labels it again.
   Printed: the share of cells with the same label and the largest probability change.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import anndata as ad
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import gsrcl  # noqa: E402
from bench.sampler import Sampler  # noqa: E402
from gsrcl.config.configfile import load_experiment  # noqa: E402
from gsrcl.config.presets import cpu_reference  # noqa: E402
from gsrcl.config.settings import Dataset, Evaluation, Storage  # noqa: E402
from gsrcl.model.checkpoints import stored  # noqa: E402
from gsrcl.reference.export import export_model  # noqa: E402
from gsrcl.runner import estimate  # noqa: E402
from gsrcl.runner.pipeline import devices, execute_experiment  # noqa: E402
from gsrcl.runner.run_folder import RunFolder  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"
FOLDER = ROOT / "results" / "disk-bench"
PER_TYPE = 40
MOUSE_1 = slice(0, 822)


def on_disk(folder: Path) -> int:
    """Bytes of the files under `folder`, each inode once (tasks' hard links share one)."""
    seen, total = set(), 0
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def subsample(path: Path) -> Path:
    full = ad.read_h5ad(DATA)
    full.obs_names_make_unique()
    rng = np.random.default_rng(0)
    labels = full.obs["cell_type"].astype(str).to_numpy()
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(labels == t))[:PER_TYPE] for t in sorted(set(labels))]
    )
    full[np.sort(keep)].copy().write_h5ad(path)
    return path


def disk_part() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    data = FOLDER / "baron_subsample.h5ad"
    if not data.exists():
        subsample(data)
    paper = load_experiment(ROOT / "configs" / "paper.py")
    experiment = replace(
        paper,
        name="paper-disk",
        datasets=(replace(paper.datasets[0], path=str(data)),),
        contrastive=replace(paper.contrastive, epochs={"simclr": 2, "supcon": 2}, validate_every=1),
        results_dir=str(FOLDER),
    )
    run = RunFolder.of(experiment)
    start = time.perf_counter()
    with Sampler(lambda: on_disk(run.path) if run.path.exists() else None, every=3.0) as sampler:
        result = execute_experiment(experiment, "resume", log=print)
    peak = max(sampler.samples + [on_disk(run.path)])
    minutes = (time.perf_counter() - start) / 60
    adata = ad.read_h5ad(data)
    tasks = adata.obs["cell_type"].nunique()
    shape = estimate.Shape(adata.n_obs, adata.n_vars, tasks, train=0)  # files: genes, tasks
    worst = estimate.disk(experiment, {"baron_mouse": shape})
    slots = min(estimate.this_machine(devices(experiment)).cores, 35)
    encoders = list(run.path.glob("jobs/*/*/*/encoder-*.pt"))
    inodes = {p.stat().st_ino: p.stat().st_blocks * 512 for p in encoders}
    print(f"\n== disk: configs/paper.py on Baron Mouse (status {result.status}, {minutes:.1f} min)")
    print(f"results folder: {on_disk(run.path) / 1e9:.2f} GB")
    print(
        f"encoders kept: {len(encoders)} names, {len(inodes)} files, "
        f"{sum(inodes.values()) / 1e9:.2f} GB"
    )
    print(f"worst case (every task its own snapshot, --check): {worst.kept / 1e9:.2f} GB")
    print(f"keep_encoders='all' would keep: {worst.keep_all / 1e9:.2f} GB of encoders")
    print(
        f"peak seen during the run: {peak / 1e9:.2f} GB "
        f"(--check's bound: {(worst.kept + slots * worst.per_running_job) / 1e9:.2f} GB)"
    )


def precision_part() -> None:
    full = ad.read_h5ad(DATA)
    full.obs_names_make_unique()
    reference_path = FOLDER / "mouse1.h5ad"
    full[MOUSE_1].copy().write_h5ad(reference_path)
    query = full[MOUSE_1.stop :].copy()
    dataset = Dataset(name="mouse1", path=str(reference_path), labels="cell_type")
    experiment = replace(
        cpu_reference(dataset, str(FOLDER)),
        evaluation=Evaluation(
            classifier=cpu_reference(dataset, "").evaluation.classifier, baselines=()
        ),
        storage=Storage(encoder_precision="float32"),
    )
    assert execute_experiment(experiment, "resume", log=print).status == 0
    with RunFolder.of(experiment).lock():
        folder = export_model(experiment, method="simclr-noise", out=FOLDER / "model-float32")
    model = gsrcl.ReferenceModel.load(folder)
    full_precision = gsrcl.annotate(query, model).table
    rounded = set()
    for cell_type in model.types:
        if id(cell_type.encoder) not in rounded:
            rounded.add(id(cell_type.encoder))
            state = cell_type.encoder.state_dict()
            cell_type.encoder.load_state_dict(stored(state, "float16"))
    half = gsrcl.annotate(query, model).table
    same = (full_precision["predicted"] == half["predicted"]).mean()
    columns = [c for c in half if c.startswith("p_")]
    change = np.abs(full_precision[columns].to_numpy() - half[columns].to_numpy()).max()
    print("\n== precision: float16 storage of a CPU-protocol reference (mouse 1 → mouse 2)")
    print(
        f"same label for {same:.4%} of {len(half)} cells; largest probability change {change:.2e}"
    )


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    parts = sys.argv[1:] or ["disk", "precision"]
    if "disk" in parts:
        disk_part()
    if "precision" in parts:
        precision_part()


if __name__ == "__main__":
    main()
