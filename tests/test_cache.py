import json

import numpy as np
import pytest

from ssl_cluster_bench.cache import CacheKey, FeatureCache


def _key(**kw):
    return CacheKey(**{"backbone": "bb", "dataset": "ds", "split": "train", "weights": "w", "transform": "t", **kw})


def test_put_get_roundtrip_and_manifest(tmp_path):
    cache = FeatureCache(tmp_path)
    feats = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    labels = np.arange(100) % 3
    entry = cache.put(_key(), feats, labels)
    got = cache.get(_key())
    assert got is not None and got.path == entry.path
    assert isinstance(got.features, np.memmap) and got.features.dtype == np.float16
    np.testing.assert_allclose(got.features, feats.astype(np.float16))
    np.testing.assert_array_equal(got.labels, labels)
    m = json.loads((entry.path / "manifest.json").read_text())
    assert m["count"] == 100 and m["feature_dim"] == 8 and m["key"]["backbone"] == "bb"
    assert m["checksum"].startswith("sha256:") and got.verify()
    assert cache.get(_key(weights="other")) is None


def test_put_rejects_bad_input_and_leaves_nothing(tmp_path):
    cache = FeatureCache(tmp_path)
    with pytest.raises(ValueError, match="NaN"):
        cache.put(_key(), np.array([[1.0, np.nan]] * 3), [0, 1, 2])
    with pytest.raises(ValueError, match="lengths must match"):
        cache.put(_key(), np.ones((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="empty"):
        cache.put(_key(), np.ones((0, 2)), [])
    with pytest.raises(ValueError, match="float16"):
        cache.put(_key(), np.full((2, 2), 1e6), [0, 1])
    assert cache.entries() == []
    assert [p.name for p in tmp_path.iterdir()] == []


def test_entry_without_manifest_is_not_complete(tmp_path):
    cache = FeatureCache(tmp_path)
    entry = cache.put(_key(), np.ones((4, 2)), [0, 1, 0, 1])
    (entry.path / "manifest.json").unlink()
    assert cache.get(_key()) is None


def test_chunk_writer_resume_and_finalize(tmp_path):
    cache = FeatureCache(tmp_path)
    w = cache.writer(_key(), n_items=10, chunk_size=4)
    assert w.n_chunks == 3 and list(w.chunk_range(2)) == [8, 9]
    w.write_chunk(0, np.ones((4, 3)), [0, 1, 2, 3], [0, 1, 2, 3])
    w.write_chunk(2, np.full((1, 3), 3.0), [9], [9], skipped_ids=["img8.jpg"])
    # a new writer (a re-run after a kill) sees the finished chunks
    w2 = cache.writer(_key(), n_items=10, chunk_size=4)
    assert w2.done_chunks() == {0, 2}
    with pytest.raises(RuntimeError, match="not written"):
        w2.finalize()
    w2.write_chunk(1, np.full((4, 3), 2.0), [4, 5, 6, 7], [4, 5, 6, 7])
    entry = w2.finalize()
    assert entry.count == 9 and entry.manifest["skipped"] == {"count": 1, "ids": ["img8.jpg"]}
    np.testing.assert_array_equal(entry.indices, [0, 1, 2, 3, 4, 5, 6, 7, 9])
    np.testing.assert_array_equal(entry.features[:, 0], [1, 1, 1, 1, 2, 2, 2, 2, 3])
    assert not w2.dir.exists()


def test_atomic_commit_leaves_no_partial_entry_on_crash(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    import ssl_cluster_bench.cache as cache_mod

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "_checksum", boom)
    with pytest.raises(KeyboardInterrupt):
        cache.put(_key(), np.ones((5, 2)), np.zeros(5))
    assert cache.get(_key()) is None
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # lock files only (empty, kept on purpose)
    assert all(p.stat().st_size == 0 for p in (tmp_path / ".locks").iterdir())


def test_iter_batches_streams_float32(tmp_path):
    cache = FeatureCache(tmp_path)
    feats = np.arange(30, dtype=np.float32).reshape(10, 3)
    entry = cache.put(_key(), feats, np.zeros(10))
    blocks = list(entry.iter_batches(4))
    assert [b.shape[0] for b in blocks] == [4, 4, 2] and blocks[0].dtype == np.float32
    np.testing.assert_array_equal(np.concatenate(blocks), feats)


def test_default_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("SSCB_CACHE_DIR", str(tmp_path / "c"))
    assert FeatureCache().root == tmp_path / "c"
