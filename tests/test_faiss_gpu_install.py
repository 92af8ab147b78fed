"""The `gpu` extra's faiss-gpu wheel in a fresh venv: it installs, k-means falls back to the CPU with one log line
where no GPU is visible, and an environment holding both faiss-cpu and faiss-gpu is refused in one line.

Slow (a fresh venv and ~790 MB of wheels: faiss-gpu 135 MB, nvidia-cublas-cu12 581 MB, curand and the CUDA
runtime), so skipped unless SSCB_SLOW_TESTS=1; run it once where the packaging changes:
    SSCB_SLOW_TESTS=1 python3 -m pytest -q tests/test_faiss_gpu_install.py
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.environ.get("SSCB_SLOW_TESTS") != "1",
                                reason="fresh venv + ~790 MB of faiss-gpu wheels: set SSCB_SLOW_TESTS=1")

CLUSTER = Path(__file__).resolve().parents[1] / "ssl_cluster_bench" / "cluster.py"

# cluster.py needs only numpy, tqdm and faiss: load it by path, so the venv needs no torch
CHECK = textwrap.dedent(f"""
    import importlib.util, logging, os, sys
    import numpy as np
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = importlib.util.spec_from_file_location("cluster", {str(CLUSTER)!r})
    cluster = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cluster)
    faiss = cluster.import_faiss()
    print("gpu build", hasattr(faiss, "StandardGpuResources"), "gpus", faiss.get_num_gpus())
    os.environ["SSCB_DEVICE"] = "cuda"
    X = np.random.default_rng(0).normal(size=(600, 16)).astype("float32")
    X[:300] += 4
    for seed in (0, 1):  # two fits: the fall-back is said once
        km = cluster.KMeans(2, random_state=seed).fit(X)
    print("sizes", sorted(np.bincount(km.labels_).tolist()))
""")


def _venv(path: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    return path / "bin" / "python"


def _pip(python: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                          timeout=1200)


def test_faiss_gpu_wheel_installs_and_kmeans_falls_back_to_the_cpu(tmp_path):
    python = _venv(tmp_path / "venv")
    done = _pip(python, "faiss-gpu==1.15.1", "tqdm")
    assert done.returncode == 0, done.stderr[-2000:]
    run = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "gpu build True gpus 0" in run.stdout and "sizes [300, 300]" in run.stdout
    said = [ln for ln in run.stderr.splitlines() if "runs on the CPU" in ln]
    assert len(said) == 1 and "sees no GPU" in said[0], run.stderr

    # both distributions: pip installs faiss-cpu over faiss-gpu's files without a word; sscb refuses in one line
    done = _pip(python, "faiss-cpu==1.15.1")
    assert done.returncode == 0, done.stderr[-2000:]
    run = subprocess.run([str(python), "-c", CHECK], capture_output=True, text=True, timeout=300)
    assert run.returncode == 1
    assert "both faiss-cpu 1.15.1 and faiss-gpu 1.15.1 are installed" in run.stderr.strip().splitlines()[-1]
