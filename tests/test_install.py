"""`pip install .` gives an importable package and a `gsrcl` command, away from the checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pip_install_gives_the_gsrcl_command_and_the_api(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "gsrcl", source / "gsrcl", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    # the dependencies come from this environment (nothing big to download); pip builds the
    # package with setuptools in an isolated build environment, as a user's pip would
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run([*pip, str(source)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    version = subprocess.run(
        [str(venv / "bin" / "gsrcl"), "--version"], cwd=elsewhere, capture_output=True, text=True
    )
    assert version.returncode == 0 and version.stdout.strip() == "gsrcl 0.2.0"
    api = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import gsrcl; print(gsrcl.__file__, gsrcl.run)"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
    )
    assert api.returncode == 0, api.stderr
    assert str(venv) in api.stdout and "function run" in api.stdout


def test_the_package_lists_its_api_and_version_without_loading_it():
    import subprocess
    import sys

    code = (
        "import sys, gsrcl; names = dir(gsrcl); "
        "assert 'annotate' in names and 'ReferenceModel' in names and 'run' in names, names; "
        "assert 'torch' not in sys.modules; "
        "from gsrcl.cli import version; assert gsrcl.__version__ == version(); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.strip() == "ok", done.stderr
