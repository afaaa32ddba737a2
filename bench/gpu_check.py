"""The GPU path's check in one call on a lent GPU machine (one H100 or H200, 16 cores, no network):
at most 9 minutes, every figure written under $OUT (the device tool sets it; else ./gpu-check-out).

    bash bench/gpu_check.sh                          # there (docs/gpu.md: wheels, data, the call)
    bash bench/gpu_check.sh --steps default paper    # a later call: the steps the first left
    bash bench/gpu_check.sh --cpu                    # here: the same steps at tiny sizes

Steps, in this order (a step's priority), each in a process of its own with its own time cap: a
step that runs over is stopped (SIGTERM, then SIGKILL) and recorded as capped, and the next one
starts; a step is skipped when the --budget left is below its minimum.

environment  what is importable; what is missing is installed from wheels/ (pip --no-index
             --find-links wheels/ --no-deps --target SITE, put on PYTHONPATH); the data carried in
             gpu-data/ is put where the configs read it (../shared/data); versions, GPU, driver
cuda-tests   python3 -m pytest -q -m cuda
scoring      bench/scoring.py: one Baron Mouse validation step at the paper's protocol with libsvm
             (1 and 2 threads) and the device solver, on this device
fold-device  bench/gpu.py: the paper-width epoch alone (throughput), then the Baron Mouse SimCLR
             fold-job at the paper's protocol in fp32 and bf16 with the device solver (its
             training against the same epochs alone, its GPU memory against the runner's
             estimate)
default      bench/schedule.py config.py: the default config with the scheduler's packing (its
             estimate, wall time, jobs' errors), against its 2-core CPU time (docs/scheduling.md)
fold-libsvm  the same fold-job with libsvm in fp32 and bf16, shortened to LIBSVM_EPOCHS epochs:
             its per-step scoring and per-epoch figures carry over to the paper's 3000
paper        runner.py --config configs/paper.py (Baron Mouse) for the time left, into
             gpu-check-work/paper/: the runner resumes finished jobs, so a later call on the
             same machine continues it

nvidia-smi samples GPU utilisation and memory every 0.2 s throughout (nvidia-smi.csv);
summary.json holds each step's status, seconds, figures and its GPU busy share; log.txt every
step's output. --cpu runs every step on the CPU at tiny sizes (Baron Mouse's five largest types,
a tenth of their cells; three pbmc68k_reduced tasks; 64-32 encoders, a few epochs, two folds, two
inner folds, one baseline) to check the script.

Only the standard library is imported before the environment step: it may have to install the
rest first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # gsrcl, for the paper's progress (imported once installed)
WORK = ROOT / "gpu-check-work"  # ignored: subsample, fold figures, the paper run's results
WHEELS = ROOT / "wheels"  # ignored: the wheels of what the machine lacks (docs/gpu.md)
CARRIED_DATA = ROOT / "gpu-data"  # ignored: the data files, carried to the machine
DATA = ROOT.parent / "shared" / "data"  # where the configs and benches read them
BARON = DATA / "baron_mouse.h5ad"
SITE = Path("/tmp/gsrcl-site")  # where missing packages are installed
OPTIONAL = {"loompy"}  # requirements.txt's packages the check does not need (.loom input)
LIBSVM_EPOCHS = 600  # 13 validation steps of the paper's 61
GRACE_SECONDS = 15  # between SIGTERM (the runner keeps its finished jobs) and SIGKILL
# the default config on the 2-core development machine: docs/scheduling.md, bench/schedule.py
CPU_REFERENCE = {"jobs_s": 4.6 * 60, "estimate_s": 4.8 * 60, "source": "docs/scheduling.md"}
TINY_WIDTHS = ["--encoder", "64", "32", "--head", "32", "16"]
TINY_EPOCHS = 4
TINY_TYPES = 5  # --cpu: Baron Mouse's largest types, as tasks


@dataclass(frozen=True)
class Step:
    """One step: its command (given the mode), its cap and the least time worth starting it."""

    name: str
    command: Callable[[Mode], list[str]]
    gpu_cap: float
    cpu_cap: float
    least: float = 30.0


@dataclass(frozen=True)
class Mode:
    cpu: bool
    device: str  # "cuda:0" or "cpu"
    baron: Path  # the Baron Mouse file the steps read (a subsample with --cpu)


def python(*args: str) -> list[str]:
    return [sys.executable, *args]


def scoring(mode: Mode) -> list[str]:
    repeats = "1" if mode.cpu else "2"
    return python(
        "bench/scoring.py",
        "--device",
        mode.device,
        "--no-agreement",
        "--repeats",
        repeats,
        "--data",
        str(mode.baron),
    )


def fold(parts: list[str], name: str, epochs: int | None) -> Callable[[Mode], list[str]]:
    def command(mode: Mode) -> list[str]:
        argv = python("bench/gpu.py", "--device", mode.device, "--data", str(mode.baron))
        argv += ["--out", str(WORK / f"{name}.json"), "--parts"]
        if mode.cpu:  # no throughput part: it times 50 epochs at the paper's width
            return argv + [p for p in parts if p.startswith("fold:")] + tiny_fold()
        return argv + parts + (["--epochs", str(epochs)] if epochs else [])

    return command


def tiny_fold() -> list[str]:
    return ["--epochs", str(TINY_EPOCHS), *TINY_WIDTHS]


def default(mode: Mode) -> list[str]:
    return python("bench/schedule.py", str(WORK / "default_tiny.py") if mode.cpu else "config.py")


def paper(mode: Mode) -> list[str]:
    config, results = paper_config(mode)
    return python("runner.py", "--config", str(config), "--set", f"results_dir={str(results)!r}")


def paper_config(mode: Mode) -> tuple[Path, Path]:
    """The paper's config and its results folder (with --cpu: a tiny version of it)."""
    if not mode.cpu:
        return ROOT / "configs" / "paper.py", WORK / "paper"
    return WORK / "paper_tiny.py", WORK / "paper-tiny"


STEPS = [
    Step("cuda-tests", lambda mode: python("-m", "pytest", "-q", "-m", "cuda"), 150, 90),
    Step("scoring", scoring, 90, 120),
    Step(
        "fold-device",
        fold(["throughput", "fold:fp32:device", "fold:bf16:device"], "fold-device", None),
        260,
        150,
        60,
    ),
    Step("default", default, 120, 90, 60),
    Step(
        "fold-libsvm",
        fold(["fold:fp32:libsvm", "fold:bf16:libsvm"], "fold-libsvm", LIBSVM_EPOCHS),
        110,
        90,
        45,
    ),
    Step("paper", paper, 10_000, 45),  # the rest of the budget (--cpu: 45 s, to show it)
]


# ---- the environment: data, missing packages, versions ----


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names() -> list[str]:
    """requirements.txt's packages (less OPTIONAL) and pytest, as requirement strings."""
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    wanted = [line.split("#")[0].strip() for line in lines]
    wanted = [w for w in wanted if w and not w.startswith("-")]
    return [w for w in wanted if canonical(re.split(r"[=<>!~; \[]", w)[0]) not in OPTIONAL] + [
        "pytest"
    ]


def wheel_named(name: str) -> Path | None:
    for wheel in sorted(WHEELS.glob("*.whl")):
        if canonical(wheel.name.split("-")[0]) == name:
            return wheel
    return None


def wheel_requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return [
        line[len("Requires-Dist:") :].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def missing_packages(reinstall: set[str]) -> tuple[dict[str, Path], list[str]]:
    """What the requirements need, with their dependencies, that is not installed: the wheels
    in wheels/ that provide it, and what no wheel provides. `reinstall`: names to take from the
    wheels even if installed (to check the carried wheels)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    todo, seen = [Requirement(r) for r in requirement_names()], set()
    wheels, absent = {}, []
    while todo:
        requirement = todo.pop()
        name = canonical(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            if name in reinstall:
                raise metadata.PackageNotFoundError(name)
            requires = metadata.distribution(name).requires or []
        except metadata.PackageNotFoundError:
            wheel = wheel_named(name)
            if wheel is None:
                absent.append(str(requirement))
                continue
            wheels[name], requires = wheel, wheel_requires(wheel)
        todo += [Requirement(r) for r in requires]
    return wheels, absent


def use_site() -> None:
    """Packages installed into SITE (by this call or an earlier one on this machine) importable
    here and in every step's process."""
    if str(SITE) not in sys.path:
        sys.path.insert(0, str(SITE))
    paths = [str(SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))


def install(wheels: dict[str, Path], log) -> dict:
    if not wheels:
        return {"installed": [], "pip_exit": None}
    names = [f"{w.name.split('-')[0]}=={w.name.split('-')[1]}" for w in wheels.values()]
    argv = python(
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        str(WHEELS),
        "--no-deps",
        "--no-compile",
        "--no-cache-dir",
        "--target",
        str(SITE),
        *names,
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    log.write(f"$ {' '.join(argv)}\n{done.stdout}{done.stderr}\n")
    import importlib

    importlib.invalidate_caches()
    return {"installed": names, "pip_exit": done.returncode}


def carry_data() -> list[str]:
    """The data files carried in gpu-data/ put where the configs read them, if not there."""
    placed = []
    for path in sorted(CARRIED_DATA.glob("*.h5ad")):
        target = DATA / path.name
        if not target.exists():
            DATA.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            placed.append(str(target))
    return placed


VERSIONS = """
import json, platform, torch, sklearn, scanpy, anndata, numpy, scipy, pandas
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__,
    "torch_cuda": torch.version.cuda, "cuda_available": cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
    "scikit-learn": sklearn.__version__, "scanpy": scanpy.__version__,
    "anndata": anndata.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__,
    "pandas": pandas.__version__, "cores": len(__import__("os").sched_getaffinity(0)),
}))
"""


def environment(reinstall: set[str], log) -> dict:
    use_site()
    info: dict = {"data_placed": carry_data(), "baron_present": BARON.exists()}
    wheels, absent = missing_packages(reinstall)
    info["missing_without_wheel"] = absent
    info.update(install(wheels, log))
    done = subprocess.run(python("-c", VERSIONS), capture_output=True, text=True, timeout=90)
    log.write(done.stdout + done.stderr)
    info["versions"] = json.loads(done.stdout) if done.returncode == 0 else done.stderr[-2000:]
    if shutil.which("nvidia-smi"):
        query = "--query-gpu=name,memory.total,driver_version"
        smi = subprocess.run(
            ["nvidia-smi", query, "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        info["nvidia_smi"] = smi.stdout.strip()
    return info


def tiny_baron() -> Path:
    """A subsample of Baron Mouse: ~10 % of its TINY_TYPES largest types' cells, all genes."""
    import anndata as ad
    import numpy as np

    path = WORK / "baron_tiny.h5ad"
    if path.exists():
        return path
    adata = ad.read_h5ad(BARON)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    types, sizes = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(0)
    keep = []
    for label in types[np.argsort(-sizes)][:TINY_TYPES]:
        rows = np.flatnonzero(labels == label)
        keep += list(rng.choice(rows, max(8, len(rows) // 10), replace=False))
    adata[np.sort(keep)].copy().write_h5ad(path)
    return path


TINY_CONFIG = '''"""{source} at tiny sizes, for bench/gpu_check.py --cpu (written by it)."""
from dataclasses import replace

from gsrcl.config.configfile import load_experiment

_base = load_experiment({source!r})
EXPERIMENT = replace(
    _base,
    datasets=(replace(_base.datasets[0], {dataset}),),
    methods=tuple(replace(m, encoder=(64, 32), head=(32, 16)) for m in _base.methods),
    contrastive=replace(_base.contrastive, epochs={{"simclr": 2, "supcon": 2}}),
    split=replace(_base.split, folds=2),
    evaluation=replace(_base.evaluation, inner_folds=2, baselines=_base.evaluation.baselines[:1]),
)
'''


def mode_for(cpu: bool) -> Mode:
    """The steps' device and data; with --cpu, the tiny data and configs written first."""
    if not cpu:
        return Mode(False, "cuda:0", BARON)
    baron = tiny_baron()
    tiny = {
        "paper_tiny.py": ("configs/paper.py", f"path={str(baron)!r}"),
        "default_tiny.py": ("config.py", "cell_types=('CD19+ B', 'CD34+', 'Dendritic')"),
    }
    for name, (source, dataset) in tiny.items():
        text = TINY_CONFIG.format(source=str(ROOT / source), dataset=dataset)
        (WORK / name).write_text(text)
    return Mode(True, "cpu", baron)


# ---- running a step under its cap ----


def run_capped(argv: list[str], cap: float, log) -> tuple[str, int | None, list[str]]:
    """Run `argv` in the repository, its output into the log as it comes; past `cap` seconds
    its whole process group is stopped. (status, exit code, output lines)."""
    process = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,  # its own process group: the cap stops its workers too
    )
    lines: list[str] = []

    def read() -> None:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            log.write(line)
            log.flush()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = process.wait(timeout=cap)
        status = "done" if code == 0 else "failed"
    except subprocess.TimeoutExpired:
        code, status = _stop(process), "capped"
    try:  # whatever of the step outlived it (a worker) must not run into the next step
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    reader.join(timeout=10)
    return status, code, lines


def _stop(process: subprocess.Popen) -> int:
    """SIGTERM to the step's processes (the runner keeps finished jobs), SIGKILL after a grace."""
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
            return process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            break
    return process.wait()


# ---- figures of each step ----


def figures(name: str, mode: Mode, lines: list[str]) -> dict:
    """What a step measured: its figures file or its printed lines."""
    if name.startswith("fold"):
        path = WORK / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else {}
    if name == "cuda-tests":
        counts = re.compile(r"\d+ (passed|failed|skipped|error)")
        return {"result": next((x for x in reversed(lines) if counts.search(x)), "")}
    if name == "default":
        found = [x for x in lines if x.startswith(("== ", "run estimate", "jobs'", "CPU busy"))]
        return {"lines": found, "cpu_2_cores_reference": CPU_REFERENCE}
    if name == "paper":
        return paper_progress(mode)
    return {"lines": lines[-25:]}


def paper_progress(mode: Mode) -> dict:
    """How many of the paper config's jobs are done (resumed by a later call)."""
    from collections import Counter

    from gsrcl.config.configfile import load_experiment
    from gsrcl.runner import jobs, retention
    from gsrcl.runner.run_folder import RunFolder

    config, results = paper_config(mode)
    experiment = load_experiment(config, [f"results_dir={str(results)!r}"])
    planned = jobs.plan(experiment)
    states = retention.job_states(experiment, RunFolder.of(experiment), planned)
    done = Counter(state.status for state in states.values())
    return {"jobs": len(planned), "by_status": dict(done), "results": str(results)}


class GpuSamples:
    """nvidia-smi's utilisation (%) and memory in use (MiB) every 0.2 s, into a CSV."""

    def __init__(self, path: Path) -> None:
        self.path, self.process = path, None
        if shutil.which("nvidia-smi"):
            query = "--query-gpu=timestamp,utilization.gpu,memory.used"
            self.process = subprocess.Popen(
                ["nvidia-smi", query, "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=path.open("w"),
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def between(self, start: float, end: float) -> dict:
        """Busy share (samples above 0 %), mean utilisation and peak memory over a span."""
        if self.process is None:
            return {"nvidia_smi": "not on this machine"}
        samples = []
        for row in self.path.read_text().splitlines():
            stamp, util, memory = (field.strip() for field in row.split(","))
            try:
                at = datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((at, float(util), float(memory)))
            except ValueError:
                continue
        inside = [s for s in samples if start <= s[0] <= end]
        if not inside:
            return {"samples": 0}
        return {
            "samples": len(inside),
            "busy_share": sum(s[1] > 0 for s in inside) / len(inside),
            "utilisation_mean_pct": sum(s[1] for s in inside) / len(inside),
            "memory_used_mib_max": max(s[2] for s in inside),
        }


# ---- the call ----


def main() -> None:
    args = parse_args()
    start = time.monotonic()
    deadline = start + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    WORK.mkdir(exist_ok=True)
    summary: dict = {"mode": "cpu" if args.cpu else "gpu", "budget_s": args.budget, "steps": {}}
    with (args.out / "log.txt").open("a") as log:
        summary["started"] = datetime.now().isoformat(timespec="seconds")
        summary["environment"] = environment(set(map(canonical, args.reinstall)), log)
        write(args.out, summary)
        print(f"environment: {json.dumps(summary['environment'])}", flush=True)
        versions = summary["environment"]["versions"]
        if not isinstance(versions, dict):
            sys.exit("the packages do not import: see summary.json (environment) and log.txt")
        if not args.cpu and not versions["cuda_available"]:
            sys.exit("no CUDA torch here: see summary.json (environment); --cpu checks the script")
        mode = mode_for(args.cpu)
        samples = GpuSamples(args.out / "nvidia-smi.csv")
        try:
            for step in STEPS:
                if step.name in args.steps:
                    summary["steps"][step.name] = run_step(step, mode, deadline, samples, log)
                    write(args.out, summary)
        finally:
            samples.stop()
    summary["seconds"] = time.monotonic() - start
    write(args.out, summary)
    print(f"{summary['seconds']:.0f} s in all; figures in {args.out / 'summary.json'}")


def run_step(step: Step, mode: Mode, deadline: float, samples: GpuSamples, log) -> dict:
    left = deadline - time.monotonic()
    if left < step.least:
        print(f"{step.name}: skipped ({left:.0f} s left, needs {step.least:.0f})", flush=True)
        return {"status": "skipped", "seconds_left": left}
    cap = min(step.cpu_cap if mode.cpu else step.gpu_cap, left)
    argv = step.command(mode)
    (WORK / f"{step.name}.json").unlink(missing_ok=True)  # a figures file of an earlier call
    log.write(f"\n==== {step.name} (cap {cap:.0f} s): {' '.join(argv)}\n")
    log.flush()
    began, wall = time.time(), time.monotonic()
    status, code, lines = run_capped(argv, cap, log)
    seconds = time.monotonic() - wall
    result = {"status": status, "exit": code, "seconds": seconds, "cap_s": cap}
    result["gpu"] = samples.between(began, time.time())
    try:
        result["figures"] = figures(step.name, mode, lines)
    except Exception as error:  # a step's figures must not cost the others
        result["figures"] = {"error": f"{type(error).__name__}: {error}"}
    if status != "done":
        result["tail"] = lines[-30:]
    print(f"{step.name}: {status} in {seconds:.0f} s (cap {cap:.0f} s)", flush=True)
    return result


def write(out: Path, summary: dict) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu", action="store_true", help="every step on the CPU, tiny sizes")
    parser.add_argument(
        "--steps", nargs="+", default=[s.name for s in STEPS], choices=[s.name for s in STEPS]
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds in all (520; 360)")
    default_out = Path(os.environ.get("OUT") or ROOT / "gpu-check-out")
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--reinstall", nargs="*", default=[], help="take these from wheels/")
    args = parser.parse_args()
    args.budget = args.budget or (360.0 if args.cpu else 520.0)
    return args


if __name__ == "__main__":
    main()
