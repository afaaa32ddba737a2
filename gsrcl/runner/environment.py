"""The software a result was made with, saved beside every result and every exported model."""

from __future__ import annotations

import platform
from importlib import metadata

PACKAGES = ("torch", "scikit-learn", "scanpy", "anndata", "numpy", "pandas", "scipy", "skops")


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions
