"""The runner on a real GPU: peaks, paper-width throughput, one Baron Mouse fold-job at the paper's
protocol, and the default config on cuda:0. Prints each figure and keeps them in --out (JSON).

    python3 bench/gpu.py --out gpu.json --cpu-summary results/pbmc68k_reduced/summary.csv
    python3 bench/gpu.py --parts peak throughput fold:fp32 fold:bf16

peak        n×n×n matmul, fp32 (TF32 off, as the runner trains), TF32 and bf16: GFLOP/s
throughput  full-batch SimCLR epochs at the paper's width (14 878 → 4096-4096-4096-2048 → 512-128)
            on a Baron Mouse training fold's worth of cells, --precision, against those peaks
fold:P[:S]  baron_mouse/simclr-noise/fold-0 of configs/paper.py (3000 epochs, validation every 50,
            the paper's SVM grid) in precision P with evaluation.solver S (default "auto": the
            device solver on a GPU; "libsvm" for the CPU path; "device" forces it anywhere), in
            this process on cuda:0: wall, training and validation-wait seconds, the scoring
            seconds of one validation step, GPU memory (peak allocated and reserved, the
            device's own reading, and the runner's estimate of each: estimate.job_needs), GPU
            utilisation sampled every 0.2 s, the job's mean MCC; after `throughput`, also the
            training seconds with scoring overlapped against the same epochs alone. --epochs,
            --data, --encoder and --head change the protocol (a shortened run, or a CPU check
            of the script at tiny sizes)
default     `python3 runner.py` (config.py, devices="auto") with 1 and with 2 workers per device:
            wall time, where the jobs ran, and the summary against a CPU run's (--cpu-summary)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.sampler import Sampler  # noqa: E402
from bench.training import BARON, epoch_flops, matmul_peak, seconds_per_epoch  # noqa: E402
from gsrcl.api import load_config  # noqa: E402
from gsrcl.config.settings import Compute  # noqa: E402
from gsrcl.data.dataset import DatasetCache  # noqa: E402
from gsrcl.runner import dispatch, estimate, jobs, pipeline  # noqa: E402
from gsrcl.runner.calibrate import Timing  # noqa: E402
from gsrcl.runner.run_folder import RunFolder  # noqa: E402
from gsrcl.runner.schedule import CUDA_CONTEXT_BYTES, Machine  # noqa: E402

DEVICE = "cuda:0"  # --device cpu runs the same code on the CPU, to check the script (no peaks)


def part_peak(figures: dict) -> None:
    peaks = {}
    for name, dtype, tf32 in (
        ("fp32", torch.float32, False),
        ("tf32", torch.float32, True),
        ("bf16", torch.bfloat16, False),
    ):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        peaks[name] = matmul_peak(dtype, 8192, 10, DEVICE)
    torch.backends.cuda.matmul.allow_tf32 = False
    figures["peak_gflops"] = peaks
    print("matmul peak, 8192³:", ", ".join(f"{k} {v / 1e3:.0f} TFLOP/s" for k, v in peaks.items()))


def fold_cells(fraction: float = 0.64) -> torch.Tensor:
    """log1p counts of as many Baron Mouse cells as one training fold holds (0.8 × 0.8)."""
    import anndata as ad

    counts = ad.read_h5ad(BARON).X
    rows = np.random.default_rng(0).permutation(counts.shape[0])[: int(fraction * counts.shape[0])]
    x = counts[np.sort(rows)].toarray() if hasattr(counts, "toarray") else counts[np.sort(rows)]
    return torch.from_numpy(np.log1p(x).astype(np.float32)).to(DEVICE)


def part_throughput(figures: dict, precisions: list[str]) -> None:
    x = fold_cells()
    flops = epoch_flops(x.shape[1], 2 * len(x))
    print(f"one epoch, {len(x)} cells × {x.shape[1]} genes (2 views): {flops / 1e9:.0f} GFLOP")
    figures["throughput"] = {"cells": len(x), "genes": x.shape[1], "gflop_per_epoch": flops / 1e9}
    for precision in precisions:
        seconds = seconds_per_epoch(x, precision, 50)
        rate = flops / seconds / 1e9
        peak = figures.get("peak_gflops", {}).get(precision)
        share = f", {rate / peak:.0%} of the {precision} matmul peak" if peak else ""
        print(f"  {precision}: {seconds * 1e3:.1f} ms/epoch, {rate / 1e3:.1f} TFLOP/s{share}")
        figures["throughput"][precision] = {"ms_per_epoch": seconds * 1e3, "gflops": rate}


def gpu_sample() -> tuple[float, float] | None:
    """GPU utilisation (%) and memory in use (GiB), through torch's NVML calls."""
    if not DEVICE.startswith("cuda"):
        return None
    return torch.cuda.utilization(DEVICE), torch.cuda.device_memory_used(DEVICE) / 2**30


def gpu_summary(samples: list[tuple[float, float]]) -> dict:
    util = np.array([s[0] for s in samples] or [0.0])
    return {
        "utilisation_mean_pct": float(util.mean()),
        "busy_share": float((util > 0).mean()),
        "device_memory_used_gib_max": max((s[1] for s in samples), default=0.0),
        "samples": len(samples),
    }


class ScoringSeconds(logging.Handler):
    """The seconds of each validation step's scoring, from the trainer's own log line."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        if str(record.msg).startswith("validation step at epoch"):
            self.seconds.append(float(record.args[2]))


@dataclasses.dataclass(frozen=True)
class Protocol:
    """What a fold part changes of configs/paper.py (None: the paper's)."""

    epochs: int | None = None
    data: Path = BARON
    encoder: tuple[int, ...] | None = None
    head: tuple[int, ...] | None = None


def memory_estimate(experiment, folds, job: jobs.Job, cells: int, genes: int) -> dict:
    """The runner's estimate of the job's GPU memory (estimate.job_needs): what it allocates,
    what the caching allocator holds for it, and that plus a process's CUDA context."""
    fold_set = folds[job.dataset]
    shape = estimate.Shape(cells, genes, len(fold_set.scored_tasks), len(fold_set.train(0)))
    gpu = Machine(cores=1, host_bytes=2**40, gpus={"cuda:0": 2**40})
    needs = estimate.job_needs(experiment, job, shape, Timing(), gpu)
    return {
        "estimate_allocated_gib": needs.device_bytes / estimate.ALLOCATOR_SLACK / 2**30,
        "estimate_reserved_gib": needs.device_bytes / 2**30,
        "estimate_in_use_gib": (needs.device_bytes + CUDA_CONTEXT_BYTES) / 2**30,
    }


def part_fold(figures: dict, precision: str, protocol: Protocol, solver: str = "auto") -> None:
    experiment = load_config(ROOT / "configs" / "paper.py")
    noise = [m for m in experiment.methods if m.name == "simclr-noise"]
    widths = {"encoder": protocol.encoder, "head": protocol.head}
    noise = [dataclasses.replace(m, **{k: v for k, v in widths.items() if v}) for m in noise]
    contrastive = dataclasses.replace(experiment.contrastive, precision=precision)
    evaluation = dataclasses.replace(experiment.evaluation, solver=solver)
    epochs = protocol.epochs
    if epochs is not None:
        contrastive = dataclasses.replace(contrastive, epochs={"simclr": epochs, "supcon": epochs})
    experiment = dataclasses.replace(
        experiment,
        datasets=(dataclasses.replace(experiment.datasets[0], path=str(protocol.data)),),
        methods=tuple(noise),
        contrastive=contrastive,
        evaluation=evaluation,
        compute=Compute(devices="auto"),
        results_dir=tempfile.mkdtemp(prefix="gsrcl-gpu-"),
    )
    run, datasets = RunFolder.of(experiment), DatasetCache()
    folds = pipeline.prepare(experiment, run, datasets, lambda _: None)
    job = jobs.Job("baron_mouse", "simclr-noise", 0)
    scoring = ScoringSeconds()
    logging.getLogger("gsrcl").addHandler(scoring)
    logging.getLogger("gsrcl").setLevel(logging.INFO)
    on_gpu = DEVICE.startswith("cuda")
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(DEVICE)
    with Sampler(gpu_sample, every=0.2) as sampler:
        outcome = dispatch.execute(job, experiment, run, DEVICE, datasets)
    logging.getLogger("gsrcl").removeHandler(scoring)
    name = f"fold_{precision}" + ("" if solver == "auto" else f"_{solver}")
    if outcome.status != "done":
        print(f"fold-job {precision}, solver {solver}: {outcome.status}: {outcome.error}")
        figures[name] = {"error": outcome.error}
        return
    metrics = json.loads((run.job(job).path / "metrics.json").read_text())
    seconds = metrics["seconds"]
    epochs = experiment.contrastive.epochs["simclr"]
    mcc = float(np.mean([row["mcc"] for row in metrics["rows"]]))
    cells, genes = datasets.get(experiment.datasets[0]).shape
    result = {
        "wall_s": outcome.seconds,
        **{f"{k}_s": v for k, v in seconds.items()},
        "epochs": epochs,
        "epochs_per_s": epochs / seconds["training"],
        "scoring_s_per_validation_step": float(np.median(scoring.seconds)),
        "validation_steps": len(scoring.seconds),
        "max_memory_allocated_gib": torch.cuda.max_memory_allocated(DEVICE) / 2**30
        if on_gpu
        else 0.0,
        "max_memory_reserved_gib": torch.cuda.max_memory_reserved(DEVICE) / 2**30
        if on_gpu
        else 0.0,
        **memory_estimate(experiment, folds, job, cells, genes),
        **gpu_summary(sampler.samples),
        "mean_mcc": mcc,
        "tasks": len(metrics["rows"]),
        "dataset_cells": cells,
        "genes": genes,
        "solvers": metrics["solvers"],
    }
    alone = figures.get("throughput", {}).get(precision, {}).get("ms_per_epoch")
    if alone:  # the same epochs without scoring beside them
        result["training_over_alone"] = seconds["training"] / (epochs * alone / 1e3)
    figures[name] = result
    overlap = result.get("training_over_alone")
    print(
        f"baron_mouse/simclr-noise/fold-0, paper protocol, {precision}, solver "
        f"{metrics['solvers']}: "
        + (f"training {overlap:.2f}× the same epochs alone; " if overlap else "")
        + f"{outcome.seconds:.0f} s wall, training {seconds['training']:.0f} s "
        f"({result['epochs_per_s']:.0f} epochs/s), waiting on validation "
        f"{seconds['validation_wait']:.0f} s; one validation step's scoring "
        f"{result['scoring_s_per_validation_step']:.1f} s × {len(scoring.seconds)}; "
        f"GPU memory peak {result['max_memory_allocated_gib']:.2f} GiB allocated, "
        f"{result['max_memory_reserved_gib']:.2f} reserved, "
        f"{result['device_memory_used_gib_max']:.2f} in use on the device (estimated "
        f"{result['estimate_allocated_gib']:.2f}, {result['estimate_reserved_gib']:.2f}, "
        f"{result['estimate_in_use_gib']:.2f}); GPU busy "
        f"{result['busy_share']:.0%} of samples, mean utilisation "
        f"{result['utilisation_mean_pct']:.0f} %; mean MCC {mcc:.4f} over {len(metrics['rows'])}"
    )


def part_default(figures: dict, cpu_summary: Path | None) -> None:
    summaries = []
    for workers in (1, 2):
        results = tempfile.mkdtemp(prefix="gsrcl-default-")
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(ROOT / "runner.py"), "--set", f"results_dir={results!r}"]
            + ["--set", f"compute.workers_per_device={workers}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        run = RunFolder(Path(results) / "pbmc68k_reduced")
        entry = {"exit": done.returncode, "wall_s": wall}
        if done.returncode == 0:
            devices = run.read_manifest()["device"].value_counts().to_dict()
            entry["devices"] = {str(k): int(v) for k, v in devices.items()}
            summaries.append(run.read_summary())
            entry.update(_compare(summaries[-1], cpu_summary))
            if len(summaries) == 2:
                entry["summary_equals_1_per_device"] = bool(summaries[0].equals(summaries[1]))
        else:
            entry["tail"] = (done.stdout + done.stderr)[-3000:]
        figures[f"default_{workers}_per_device"] = entry
        print(f"python3 runner.py, {workers} worker(s) per device: {json.dumps(entry)}")


def _compare(summary: pd.DataFrame, cpu_summary: Path | None) -> dict:
    """How far this run's mean scores are from the CPU run's, per method."""
    if cpu_summary is None or not cpu_summary.exists():
        return {}
    cpu = pd.read_csv(cpu_summary)
    keys = ["dataset", "task", "method"]
    both = summary.merge(cpu, on=keys, suffixes=("", "_cpu"))
    diff = (both["mcc_mean"] - both["mcc_mean_cpu"]).abs()
    by_method = both.assign(diff=diff).groupby("method")["diff"].max().round(4).to_dict()
    return {
        "rows_compared": len(both),
        "mcc_identical_rows": int((diff == 0).sum()),
        "max_abs_mcc_diff_by_method": by_method,
        "mean_mcc_gpu_by_method": both.groupby("method")["mcc_mean"].mean().round(4).to_dict(),
        "mean_mcc_cpu_by_method": both.groupby("method")["mcc_mean_cpu"].mean().round(4).to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--parts", nargs="+", default=["peak", "throughput", "fold:fp32", "default", "fold:bf16"]
    )
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--cpu-summary", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("gpu.json"))
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--epochs", type=int, default=None, help="fold: instead of the paper's")
    parser.add_argument("--data", type=Path, default=BARON, help="fold: Baron Mouse's file")
    parser.add_argument("--encoder", type=int, nargs="+", help="fold: instead of the paper's")
    parser.add_argument("--head", type=int, nargs="+", help="fold: instead of the paper's")
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA GPU (or --device cpu to check the script)")
    name = torch.cuda.get_device_name(DEVICE) if DEVICE.startswith("cuda") else "cpu"
    figures = {"gpu": name, "torch": torch.__version__, "cuda": torch.version.cuda}
    print(f"{name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    protocol = Protocol(
        args.epochs,
        args.data,
        tuple(args.encoder) if args.encoder else None,
        tuple(args.head) if args.head else None,
    )
    steps = {
        "peak": lambda: part_peak(figures),
        "throughput": lambda: part_throughput(figures, args.precision),
        "default": lambda: part_default(figures, args.cpu_summary),
    }
    for part in args.parts:
        if part.startswith("fold:"):  # fold:P[:S]
            precision, _, solver = part.removeprefix("fold:").partition(":")
            part_fold(figures, precision, protocol, solver or "auto")
        else:
            steps[part]()
        args.out.write_text(json.dumps(figures, indent=1))  # each part kept as it ends


if __name__ == "__main__":
    main()
