"""The package version, and the versions of what a leaderboard row's numbers depend on.

Entry points:
    __version__                 this package's version (also ``ssl_cluster_bench.__version__``)
    software_versions() -> str  "sscb=0.1.0;python=3.11.2;numpy=...;...", the ``versions`` column of a row

A module of its own so that every module can name the version without importing the package ``__init__``
(which imports them back).
"""
from __future__ import annotations

import platform

__all__ = ["__version__", "software_versions"]

__version__ = "0.1.0"


def software_versions() -> str:
    import importlib.metadata as md

    parts = [f"sscb={__version__}", f"python={platform.python_version()}"]
    for pkg, name in (("numpy", "numpy"), ("scikit-learn", "sklearn"), ("faiss-cpu", "faiss"),
                      ("faiss-gpu", "faiss"), ("torch", "torch"), ("timm", "timm")):
        try:
            parts.append(f"{name}={md.version(pkg)}")
        except md.PackageNotFoundError:
            pass
    return ";".join(parts)
