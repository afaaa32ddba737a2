"""Ctrl-C and SIGTERM stop every command within 5 s, in every phase, with one line and the
README's exit status (130 / 143), finished work kept.

Each phase runs in a subprocess on pbmc68k_reduced (three types); the signal is sent once a line
of the phase is out. Where the phase is short on such data, its libsvm fits wait while a pause
file exists (`tests.helpers.pause_libsvm`, on the fit threads, as a long fit would), so the phase
is still under way when the signal lands.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import anndata as ad
import pytest

from gsrcl.config.configfile import load_experiment
from gsrcl.reference.export import export_model
from gsrcl.runner.pipeline import run_experiment
from tests.helpers import ROOT

PROMPT_SECONDS = 5.0
LINES = {
    signal.SIGINT: (130, "interrupted (Ctrl-C): finished jobs are kept; rerun to continue"),
    signal.SIGTERM: (143, "stopped (SIGTERM): finished jobs are kept; rerun to continue"),
}

CONFIG = """
import os
from pathlib import Path
from gsrcl.config.settings import Classifier, Compute, Evaluation
from tests.conftest import tiny_experiment
from tests.helpers import pause_libsvm
if os.environ.get("PAUSE_LIBSVM"):
    pause_libsvm(os.environ["PAUSE_LIBSVM"])
svm = Classifier(name="svm", grid={{"C": [1, 10]}})
base = tiny_experiment(Path({root!r}))
EXPERIMENT = tiny_experiment(
    Path({root!r}),
    methods={methods},
    evaluation=Evaluation(classifier=svm, baselines=(svm,), inner_folds=3),
    compute=Compute(devices="cpu", threads=2),  # fits on threads, as on a larger machine
    contrastive=base.contrastive.__class__(epochs=5000, validate_every=2500, lr=1e-3),
)
"""


class Command:
    """A gsrcl command in a subprocess, its output read as it comes."""

    def __init__(self, args: list[str], pause: Path | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, "PAUSE_LIBSVM": str(pause or "")},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    def wait_for(self, text: str, seconds: float = 180) -> None:
        deadline = time.time() + seconds
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, f"ended before {text!r}:\n{self.output()}"
            assert time.time() < deadline, f"no {text!r} in {seconds} s:\n{self.output()}"
            time.sleep(0.05)

    def wait_for_file(self, path: Path, seconds: float = 180) -> None:
        deadline = time.time() + seconds
        while not path.exists():
            assert self.process.poll() is None, f"ended before {path} was made:\n{self.output()}"
            assert time.time() < deadline, f"no {path} in {seconds} s:\n{self.output()}"
            time.sleep(0.05)

    def stop_with(self, signum: int) -> float:
        """Send `signum`; the seconds until the process ended (it is killed after 30)."""
        start = time.time()
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        seconds = time.time() - start
        self.reader.join(timeout=5)
        return seconds

    def output(self) -> str:
        return "".join(self.lines)


def assert_stopped(command: Command, signum: int, seconds: float) -> None:
    status, line = LINES[signum]
    output = command.output()
    assert seconds < PROMPT_SECONDS, f"took {seconds:.1f} s to stop:\n{output}"
    assert command.process.returncode == status, output
    assert output.count(line) == 1 and "Traceback" not in output, output


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> dict:
    """A finished baseline run and its SVM's model."""
    root = tmp_path_factory.mktemp("stopping")
    pause = root / "pause"
    config = root / "baselines.py"
    config.write_text(CONFIG.format(root=str(root), methods="()"))
    experiment = load_experiment(config, [])
    assert run_experiment(experiment, log=lambda _: None) == 0
    model = export_model(experiment, method="baseline-svm", out=root / "model", log=lambda _: None)
    return {"root": root, "config": config, "pause": pause, "model": model}


@pytest.fixture
def paused(finished_run):
    """The commands' libsvm fits wait until the test ends (an abandoned fit too)."""
    pause = finished_run["pause"]
    pause.touch()
    yield {**finished_run, "reached": Path(f"{pause}.reached")}
    pause.unlink(missing_ok=True)
    Path(f"{pause}.reached").unlink(missing_ok=True)


def test_sigterm_while_the_check_times_a_baseline(paused):
    check = Command(["runner.py", "--check", "--config", str(paused["config"])], paused["pause"])
    check.wait_for("estimate: timing pbmc68k_reduced/baseline")
    check.wait_for_file(paused["reached"])  # inside its fits
    assert_stopped(check, signal.SIGTERM, check.stop_with(signal.SIGTERM))


def test_ctrl_c_while_a_job_trains(finished_run, tmp_path):
    config = tmp_path / "training.py"
    methods = "base.methods[:1]"
    config.write_text(CONFIG.format(root=str(tmp_path), methods=methods))
    run = Command(["runner.py", "--config", str(config)])
    log = tmp_path / "results" / "tiny" / "logs" / "worker-0.log"
    run.wait_for("estimate: ~")
    deadline = time.time() + 120
    while "start pbmc68k_reduced/simclr-noise" not in (log.read_text() if log.exists() else ""):
        assert time.time() < deadline and run.process.poll() is None, run.output()
        time.sleep(0.05)
    assert_stopped(run, signal.SIGINT, run.stop_with(signal.SIGINT))
    assert not (tmp_path / "results" / "tiny" / ".lock").read_text()  # released


def test_sigterm_while_export_refits(paused):
    export = Command(
        [
            "-m",
            "gsrcl",
            "export",
            "--config",
            str(paused["config"]),
            "--method",
            "baseline-svm",
            "--out",
            str(paused["root"] / "paused-model"),
        ],
        paused["pause"],
    )
    export.wait_for("export: pbmc68k_reduced, candidate 1/1 baseline-svm")
    export.wait_for_file(paused["reached"])  # inside its calibration's fits
    assert_stopped(export, signal.SIGTERM, export.stop_with(signal.SIGTERM))
    assert not (paused["root"] / "paused-model").exists()
    assert (paused["model"] / "manifest.json").exists()  # the finished model is kept
    assert not list(paused["root"].glob(".export.*"))  # its scratch folder is removed


def test_ctrl_c_while_annotate_labels(finished_run, tmp_path):
    import scanpy as sc

    cells = sc.datasets.pbmc68k_reduced().raw.to_adata()
    query = ad.concat([cells] * 6, index_unique="-")  # enough cells for a long UMAP
    query.write_h5ad(tmp_path / "query.h5ad")
    annotate = Command(
        [
            "-m",
            "gsrcl",
            "annotate",
            "--model",
            str(finished_run["model"]),
            "--query",
            str(tmp_path / "query.h5ad"),
            "--out",
            str(tmp_path / "labelled"),
        ]
    )
    annotate.wait_for(f"query: {query.n_obs} cells")
    assert_stopped(annotate, signal.SIGINT, annotate.stop_with(signal.SIGINT))


def test_a_command_inside_a_native_call_that_never_returns_still_stops():
    """The watchdog's case: the main thread is in C code that restarts its call on a signal
    (SA_RESTART), so no Python handler ever runs until it returns."""
    script = textwrap.dedent(
        """
            import ctypes, os, signal, sys
            from gsrcl import cli

            def stuck():
                libc = ctypes.CDLL(None, use_errno=True)
                for signum in (signal.SIGINT, signal.SIGTERM):
                    libc.siginterrupt(signum, 0)  # SA_RESTART: read() never returns
                read, _ = os.pipe()
                print("inside the native call", flush=True)
                libc.read(read, ctypes.create_string_buffer(1), 1)
                return 0

            sys.exit(cli.guarded(stuck))
            """
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        stuck = Command(["-c", script])
        stuck.wait_for("inside the native call")
        assert_stopped(stuck, signum, stuck.stop_with(signum))
