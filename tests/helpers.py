"""A test-only estimator that fails once, in whichever worker first claims its trigger file."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

from gsrcl.config.settings import Classifier


class FailsOnce(LogisticRegression):
    """LogisticRegression whose first prediction, in any process, raises or kills its process."""

    def __init__(self, trigger: str = "", how: str = "raise", C: float = 1.0, max_iter: int = 200):
        super().__init__(C=C, max_iter=max_iter)
        self.trigger, self.how = trigger, how

    def predict_proba(self, X):  # called on the test fold, outside the grid search
        if self.trigger and _claim(self.trigger):
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if self.how == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device", "/x/y")
            raise ValueError("injected failure")
        return super().predict_proba(X)


class PausedSVC(SVC):
    """scikit-learn's SVC whose fits wait while the file `PausedSVC.pause` exists, as a long
    libsvm fit does (sleeping releases the GIL, as libsvm does); a waiting fit touches
    `<pause>.reached`."""

    pause = ""

    def fit(self, X, y, sample_weight=None):
        if self.pause and os.path.exists(self.pause):
            Path(self.pause + ".reached").touch()
        while self.pause and os.path.exists(self.pause):
            time.sleep(0.05)
        return super().fit(X, y, sample_weight)


def pause_libsvm(path: str) -> None:
    """In this process, every fit of the RBF SVC's grid search (libsvm, on the fit threads)
    waits while `path` exists."""
    from gsrcl.evaluate import kernel_svm

    PausedSVC.pause = path
    kernel_svm.SVC = PausedSVC


def _claim(path: str) -> bool:
    try:
        os.rename(path, path + ".claimed")  # atomic: exactly one process wins
    except FileNotFoundError:
        return False
    return True


def failing_baseline(folder: Path, how: str) -> Classifier:
    """A multi-class baseline whose first test-fold prediction, in any job, fails `how`."""
    trigger = folder / "trigger"
    trigger.touch()
    return Classifier(
        name="fails",
        estimator="tests.helpers.FailsOnce",
        params={"trigger": str(trigger), "how": how},
        grid={"C": [1.0]},
        multiclass=True,
    )


ROOT = Path(__file__).resolve().parents[1]
RUNNER = [sys.executable, str(ROOT / "runner.py"), "--config"]


def kill_runner_when(config: Path, done: Callable[[], bool], seconds: float = 300) -> None:
    """Start `runner.py --config config`, SIGKILL it as soon as `done()` holds (its workers
    follow it within a second), and wait until it is gone."""
    runner = subprocess.Popen(
        [*RUNNER, str(config)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + seconds
    while not done() and time.time() < deadline:
        time.sleep(0.05)
    runner.send_signal(signal.SIGKILL)
    runner.wait()


def run_runner(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*RUNNER, str(config)], cwd=ROOT, capture_output=True, text=True)
