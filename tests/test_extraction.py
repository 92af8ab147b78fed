"""Extraction engine: features equal a direct forward pass, corrupt files are skipped and counted,
a run killed between chunks resumes without recomputing finished chunks, torchrun ranks share the work."""
import os
import socket

import numpy as np
import pytest
import torch

from ssl_cluster_bench.cache import ChunkWriter, FeatureCache
from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.extraction import extract_features

from fakes import tiny_backbone, write_image_tree


@pytest.fixture()
def tree(tmp_path):
    return write_image_tree(tmp_path)


def _direct(bb, ds):
    feats, labels = [], []
    for i in range(len(ds)):
        img, label, _ = ds[i]
        if img is None:
            continue
        with torch.inference_mode():
            feats.append(bb.model.inner(img[None]).numpy()[0])
        labels.append(label)
    return np.stack(feats), np.array(labels)


def test_features_equal_direct_forward_and_corrupt_file_counted(tree, tmp_path):
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    entry = extract_features(bb, ds, FeatureCache(tmp_path / "c"), batch_size=4, chunk_size=8, progress=False)
    ref, ref_labels = _direct(bb, ds)
    assert entry.features.shape == (21, 512) and entry.features.dtype == np.float16
    np.testing.assert_allclose(entry.features, ref.astype(np.float16), rtol=2e-3, atol=2e-3)
    np.testing.assert_array_equal(entry.labels, ref_labels)
    assert entry.manifest["skipped"]["count"] == 1
    assert entry.manifest["skipped"]["ids"][0].endswith("broken.jpg")
    assert len(entry.indices) == 21 and len(set(entry.indices)) == 21
    # a second call is a cache hit: the model is not run again
    bb.model.seen = 0
    again = extract_features(bb, ds, FeatureCache(tmp_path / "c"), batch_size=4, chunk_size=8, progress=False)
    assert again.path == entry.path and bb.model.seen == 0


def test_resume_after_kill_recomputes_nothing_finished(tree, tmp_path, monkeypatch):
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    cache = FeatureCache(tmp_path / "c")
    real_write = ChunkWriter.write_chunk
    calls = {"n": 0}

    def dying_write(self, i, *a, **k):
        if calls["n"] == 2:
            raise KeyboardInterrupt("simulated kill between chunks")
        calls["n"] += 1
        return real_write(self, i, *a, **k)

    monkeypatch.setattr(ChunkWriter, "write_chunk", dying_write)
    with pytest.raises(KeyboardInterrupt):
        extract_features(bb, ds, cache, batch_size=4, chunk_size=8, progress=False)
    monkeypatch.setattr(ChunkWriter, "write_chunk", real_write)
    assert cache.entries() == []  # nothing looks complete
    bb.model.seen = 0
    entry = extract_features(bb, ds, cache, batch_size=4, chunk_size=8, progress=False)
    # 22 positions in chunks of 8: chunks 0 and 1 (16 positions, one of them the corrupt file) were kept
    assert bb.model.seen == 22 - 16
    ref, _ = _direct(bb, ds)
    np.testing.assert_allclose(entry.features, ref.astype(np.float16), rtol=2e-3, atol=2e-3)


def test_augmented_views_are_seeded_and_shaped(tree, tmp_path):
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    cache = FeatureCache(tmp_path / "c")
    views = extract_features(bb, ds, cache, batch_size=8, chunk_size=8, views=2, progress=False)
    assert views.features.shape == (2, 21, 512)
    plain = extract_features(bb, ds, cache, batch_size=8, chunk_size=8, progress=False)
    assert views.path != plain.path
    v = np.asarray(views.features, dtype=np.float32)
    assert not np.allclose(v[0], v[1])  # two different augmentations
    assert not np.allclose(v[0], np.asarray(plain.features, dtype=np.float32))
    first = v.copy()
    import shutil

    shutil.rmtree(views.path)
    again = extract_features(bb, ds, cache, batch_size=4, chunk_size=16, views=2, progress=False)
    np.testing.assert_array_equal(np.asarray(again.features, dtype=np.float32), first)  # same seeds, same views


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, world, port, tree, cache_dir, out):
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    entry = extract_features(bb, ds, FeatureCache(cache_dir), batch_size=4, chunk_size=4, device="cpu",
                             progress=False)
    with open(os.path.join(out, f"rank{rank}"), "w") as f:
        f.write(f"{bb.model.seen} {entry.path}")
    torch.distributed.destroy_process_group()


def test_torchrun_style_two_ranks_share_chunks(tree, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    torch.multiprocessing.spawn(_rank_main, args=(2, _free_port(), tree, tmp_path / "c", str(out)), nprocs=2)
    seen = [int((out / f"rank{r}").read_text().split()[0]) for r in range(2)]
    assert sum(seen) == 21 and min(seen) > 0  # every readable image exactly once across ranks, no duplicates
    paths = {(out / f"rank{r}").read_text().split()[1] for r in range(2)}
    assert len(paths) == 1
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    entry = FeatureCache(tmp_path / "c").entries()[0]
    ref, _ = _direct(bb, ds)
    np.testing.assert_allclose(entry.features, ref.astype(np.float16), rtol=2e-3, atol=2e-3)
