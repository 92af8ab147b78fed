"""--device / $SSCB_DEVICE for the clustering stage: faiss k-means and neighbour mining fall back to the CPU with
one log line when faiss has no GPU; "cpu" keeps them there without a word; a bad value is one clear error."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from ssl_cluster_bench import cluster
from ssl_cluster_bench.cluster import KMeans, compute_device, faiss_use_gpu
from ssl_cluster_bench.heads import mine_neighbors

X = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)
X[:200] += 5


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    monkeypatch.setattr(cluster, "_said_cpu", [])


@pytest.mark.skipif(cluster.faiss_gpu_available(), reason="faiss sees a GPU here: nothing falls back")
def test_cuda_without_a_faiss_gpu_falls_back_to_the_cpu_once(monkeypatch, caplog):
    monkeypatch.setenv("SSCB_DEVICE", "cuda")
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.cluster"):
        a = KMeans(2, random_state=0).fit(X)
        KMeans(2, random_state=1).fit(X)
        mine_neighbors(X, 5, verbose=False)
    said = [r.getMessage() for r in caplog.records if "runs on the CPU" in r.getMessage()]
    assert len(said) == 1 and "faiss-cpu" in said[0] and "[gpu]" in said[0]
    assert sorted(np.bincount(a.labels_)) == [200, 200]


def test_cpu_is_silent_and_wins_over_auto(monkeypatch, caplog):
    monkeypatch.setenv("SSCB_DEVICE", "cpu")
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.cluster"):
        assert faiss_use_gpu("auto") is False
        KMeans(2).fit(X)
    assert not caplog.records
    assert compute_device("cuda") == "cuda"  # an explicit device wins over the environment


def test_a_bad_device_names_the_variable(monkeypatch):
    monkeypatch.setenv("SSCB_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"got 'gpu' \(from \$SSCB_DEVICE\)"):
        KMeans(2).fit(X)
