"""Training performance at the paper's encoder width (765 → 4096-4096-4096-2048, head 512-128).

    python3 bench/training.py                      # all parts
    python3 bench/training.py --part throughput e2e scaling --epochs 100 --precision fp32 bf16

Always: the machine's measured matmul peak, fp32 and bf16 (4096² matrices). Parts:
throughput  full-batch SimCLR epochs on one pbmc68k_reduced fold (448 cells, 896 views):
            GFLOP/s from the layer shapes, and the ratio to the measured peak, fp32 and bf16
e2e         `python3 runner.py` on all 5 folds × 10 tasks of pbmc68k_reduced (SimCLR + noise at the
            paper's width, --epochs epochs, validation every 50) and on Baron Mouse
            (--baron-epochs), one CPU worker: wall time, peak memory of a process, bytes written,
            the share of wall time that is not training (validation waits, start-up, data,
            saving, report), and the mean MCC (to compare bf16 with fp32)
scaling     seconds per epoch for 1k-8k cells (5k genes) and 1k-15k genes (2k cells), resampled
            from Baron Mouse
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gsrcl.config.presets import PAPER  # noqa: E402
from gsrcl.model.augment import gaussian_noise  # noqa: E402
from gsrcl.model.encoder import ContrastiveModel  # noqa: E402
from gsrcl.model.losses import nt_xent  # noqa: E402
from gsrcl.runner.run_folder import RunFolder  # noqa: E402

WIDTH = PAPER.methods[0].encoder
HEAD = PAPER.methods[0].head
BARON = ROOT.parent / "shared" / "data" / "baron_mouse.h5ad"


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so a wall-clock timer measures it (CUDA is async)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(dtype: torch.dtype, n: int = 4096, repeats: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of an n×n×n product, after one warm-up."""
    a, b = (torch.randn(n, n, dtype=dtype, device=device) for _ in range(2))
    a @ b
    synchronize(a.device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(a.device)
    return repeats * 2 * n**3 / (time.perf_counter() - start) / 1e9


def epoch_flops(n_genes: int, rows: int) -> float:
    """Forward 2·rows·in·out per layer, backward twice that (the first layer needs no input
    gradient), plus the rows × rows similarity matrix of the loss."""
    sizes = [n_genes, *WIDTH, *HEAD]
    flops = 0.0
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        flops += 2 * rows * n_in * n_out * (2 if i == 0 else 3)
    return flops + 3 * 2 * rows * rows * HEAD[-1]


def seconds_per_epoch(x: torch.Tensor, precision: str, epochs: int, compile_model=False) -> float:
    """Full-batch SimCLR epochs at the paper's width on x's device."""
    torch.manual_seed(0)
    model = ContrastiveModel(x.shape[1], WIDTH, HEAD, batchnorm=False, init_std=0.02).to(x.device)
    step = torch.compile(model) if compile_model else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-6, fused=True)
    generator = torch.Generator(device=x.device).manual_seed(0)

    def epoch() -> None:
        autocast = torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
        with autocast:
            z = step(
                torch.cat([gaussian_noise(x, 1.0, generator), gaussian_noise(x, 1.0, generator)])
            )
        loss = nt_xent(*z.float().chunk(2), 0.07)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    epoch()  # warm-up (and compilation)
    synchronize(x.device)
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    synchronize(x.device)
    return (time.perf_counter() - start) / epochs


def pbmc_fold_cells() -> torch.Tensor:
    import scanpy as sc

    x = sc.datasets.pbmc68k_reduced().raw.X
    x = np.asarray(x.todense() if hasattr(x, "todense") else x, dtype=np.float32)
    return torch.from_numpy(x[np.random.default_rng(0).permutation(len(x))[:448]])


def part_peak() -> dict:
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(
        f"matmul peak on {torch.get_num_threads()} threads: fp32 {peaks['fp32']:.0f} GFLOP/s, "
        f"bf16 {peaks['bf16']:.0f} GFLOP/s"
    )
    return peaks


def part_throughput(peaks: dict, epochs: int) -> None:
    x = pbmc_fold_cells()
    flops = epoch_flops(x.shape[1], 2 * len(x))
    print(f"\none epoch, paper width, {len(x)} cells × {x.shape[1]} genes: {flops / 1e9:.0f} GFLOP")
    for precision, compile_model in (("fp32", False), ("bf16", False), ("fp32", True)):
        seconds = seconds_per_epoch(x, precision, max(3, epochs // 20), compile_model)
        rate = flops / seconds / 1e9
        label = precision + (" + torch.compile" if compile_model else "")
        print(
            f"  {label:22s} {seconds:6.2f} s/epoch  {rate:6.0f} GFLOP/s  "
            f"{rate / peaks[precision]:5.0%} of the {precision} matmul peak"
        )


CONFIG = """
from gsrcl.config.presets import PAPER, STRONG_EVALUATION
from gsrcl.config.settings import *
EXPERIMENT = Experiment(
    name="bench", results_dir={results!r},
    datasets=({dataset},),
    methods=(Method(loss="simclr", augmentation="noise"),),
    contrastive=Contrastive(epochs={epochs}, validate_every=50, precision={precision!r}),
    evaluation=Evaluation(classifier=STRONG_EVALUATION.classifier, baselines=()),
    compute=Compute(devices="cpu", cpu_workers=1),
)
"""
PBMC = (
    'Dataset(name="pbmc68k_reduced", path="scanpy:pbmc68k_reduced", labels="bulk_labels", '
    'values="log", use_raw=True)'
)


def run_config(dataset: str, epochs: int, precision: str) -> None:
    """The runner end to end in a subprocess: wall time, worker peak memory, bytes written."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder) / "bench_config.py"
        results = Path(folder) / "results"
        config.write_text(
            textwrap.dedent(
                CONFIG.format(
                    results=str(results), dataset=dataset, epochs=epochs, precision=precision
                )
            )
        )
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(ROOT / "runner.py"), "--config", str(config)],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stdout[-2000:], done.stderr[-2000:])
            return
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        files = {(p.stat().st_dev, p.stat().st_ino): p for p in results.rglob("*") if p.is_file()}
        written = sum(p.stat().st_size for p in files.values())  # a hard-linked file counts once
        seconds = _job_seconds(results)
        summary = RunFolder(results / "bench").read_summary()
        print(
            f"  {precision}, {epochs} epochs: {wall / 60:.1f} min wall, peak memory of a "
            f"process {peak_mib:.0f} MiB, {written / 2**20:.0f} MiB written\n"
            f"    not training: {1 - seconds['training'] / wall:.0%} of wall time "
            f"(validation waits {seconds['validation_wait'] / wall:.0%}, the rest: start-up, "
            f"data, saving, report); {1 - seconds['training'] / seconds['total']:.0%} of job time\n"
            f"    mean MCC over {len(summary)} tasks {summary['mcc_mean'].mean():.4f} "
            "(bf16 is worth using when this stays within 0.01 of fp32's)"
        )


def _job_seconds(results: Path) -> dict[str, float]:
    """Seconds summed over the jobs: total, training, waiting on validation."""
    summed = {"total": 0.0, "training": 0.0, "validation_wait": 0.0}
    for seconds in RunFolder(results / "bench").job_seconds():
        for part in summed:
            summed[part] += seconds.get(part, 0.0)
    return summed


def part_e2e(epochs: int, baron_epochs: int | None, precisions: list[str]) -> None:
    print("\nend to end, pbmc68k_reduced, SimCLR at the paper's width, 5 folds × 10 tasks:")
    for precision in precisions:
        run_config(PBMC, epochs, precision)
    if baron_epochs is not None and BARON.exists():
        print("\nend to end, Baron Mouse, SimCLR at the paper's width, 5 folds × 13 tasks:")
        baron = f'Dataset(name="baron_mouse", path={str(BARON)!r}, labels="cell_type")'
        for precision in precisions:
            run_config(baron, baron_epochs, precision)


def part_scaling() -> None:
    import anndata as ad

    if not BARON.exists():
        print("\nscaling: skipped, Baron Mouse not found")
        return
    counts = ad.read_h5ad(BARON).X
    rng = np.random.default_rng(0)
    genes_by_variance = np.argsort(-np.asarray(counts.power(2).mean(axis=0)).ravel())

    def sample(cells: int, genes: int) -> torch.Tensor:
        rows = rng.choice(counts.shape[0], cells, replace=cells > counts.shape[0])
        x = counts[rows][:, genes_by_variance[:genes]].toarray()
        return torch.from_numpy(np.log1p(x).astype(np.float32))

    print("\nscaling (fp32, full batch, seconds per epoch):")
    for cells, genes in [
        (1000, 5000),
        (2000, 5000),
        (4000, 5000),
        (8000, 5000),
        (2000, 1000),
        (2000, 14878),
    ]:
        x = sample(cells, genes)
        seconds = seconds_per_epoch(x, "fp32", 1)
        rate = epoch_flops(genes, 2 * cells) / seconds / 1e9
        print(f"  {cells:5d} cells × {genes:5d} genes: {seconds:6.2f} s/epoch, {rate:4.0f} GFLOP/s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", nargs="+", default=["throughput", "e2e", "scaling"])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--baron-epochs", type=int, default=10)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--no-baron", action="store_true", help="e2e on pbmc68k_reduced only")
    args = parser.parse_args()
    peaks = part_peak()
    if "throughput" in args.part:
        part_throughput(peaks, args.epochs)
    if "e2e" in args.part:
        part_e2e(args.epochs, None if args.no_baron else args.baron_epochs, args.precision)
    if "scaling" in args.part:
        part_scaling()


if __name__ == "__main__":
    main()
