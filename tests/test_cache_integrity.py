"""The feature cache follows the data and deletes only what it made; a stopped extraction leaves no temporary.

Real image files, real entries, real signals: rewritten images under the same names and a second folder with the
same names get their own entries, bytes changed under a restored mtime are caught by --verify-content, ordinary
folders are never listed as entries nor removed, a `sscb extract` process sent SIGTERM mid-chunk keeps its
finished chunks and removes its temporary file, and temporaries of dead processes are swept by the next run.
"""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import ssl_cluster_bench.cache as cache_mod
from ssl_cluster_bench.cache import OWNER, CacheKey, FeatureCache
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.extraction import dataset_fingerprint, extract_features

from fakes import tiny_backbone, write_image_tree

REPO = Path(__file__).resolve().parents[1]


def _bmp_tree(root: Path, seed: int) -> Path:
    """3 classes × 4 random 20×24 BMPs: uncompressed, so new pixels keep the file size exactly."""
    rng = np.random.default_rng(seed)
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(4):
            Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(root / f"class{c}" / f"{i}.bmp")
    return root


def _extract(tree, cache, bb):
    ds = get_dataset("imagefolder", tree, transform=bb.transform)  # indexed anew, as a new command would
    bb.model.seen = 0
    return extract_features(bb, ds, cache, batch_size=8, chunk_size=8, progress=False)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.name == "ssl_cluster_bench.extraction"]


def _temporaries(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or ".trash" in p.name)


# -- 1. the cache follows the data --------------------------------------------------------------------------
def test_rewritten_images_under_the_same_names_are_extracted_again(tmp_path, caplog):
    tree, cache, bb = _bmp_tree(tmp_path / "images", seed=0), FeatureCache(tmp_path / "c"), tiny_backbone()
    old = _extract(tree, cache, bb)
    old_features = np.array(old.features)
    _bmp_tree(tree, seed=1)  # re-exported data: every image rewritten under its old name, same sizes
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.extraction"):
        new = _extract(tree, cache, bb)
    assert bb.model.seen == 12 and new.path != old.path  # extracted again, into a new entry
    assert np.abs(np.asarray(new.features, np.float32) - old_features).max() > 0.1  # not the old features
    [warning] = _warnings(caplog)
    assert old.name in warning and "changed since it was made" in warning and "--remove" in warning


def test_unchanged_data_reuses_its_entry(tmp_path):
    tree, cache, bb = _bmp_tree(tmp_path / "images", seed=0), FeatureCache(tmp_path / "c"), tiny_backbone()
    first = _extract(tree, cache, bb)
    assert bb.model.seen == 12
    again = _extract(tree, cache, bb)
    assert again.path == first.path and bb.model.seen == 0  # nothing extracted again
    assert again.manifest["data_source"] == {"format": 2, "root": str(tree.resolve()), "fingerprint": "stat"}


def test_two_folders_with_the_same_names_get_two_entries(tmp_path):
    a = _bmp_tree(tmp_path / "projA" / "images", seed=0)
    b = _bmp_tree(tmp_path / "projB" / "images", seed=1)
    for src, dst in zip(sorted(a.rglob("*.bmp")), sorted(b.rglob("*.bmp"))):
        st = src.stat()
        os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))  # same names, sizes and times: only the root differs
    cache, bb = FeatureCache(tmp_path / "c"), tiny_backbone()
    ea, eb = _extract(a, cache, bb), _extract(b, cache, bb)
    assert bb.model.seen == 12 and ea.path != eb.path
    assert ea.key.dataset == eb.key.dataset == "images"
    assert np.abs(np.asarray(ea.features, np.float32) - np.asarray(eb.features, np.float32)).max() > 0.1
    assert len(cache.entries()) == 2


def test_verify_content_catches_new_bytes_under_a_restored_mtime(tmp_path, capsys):
    tree = _bmp_tree(tmp_path / "images", seed=0)
    cache_dir = tmp_path / "c"

    def extract(*flags) -> Path:
        assert main(["-q", "extract", "--backbone", "pixels", "--dataset", "imagefolder", "--data-root", str(tree),
                     "--cache-dir", str(cache_dir), *flags]) == 0
        return Path(capsys.readouterr().out.splitlines()[0])  # the entry's folder

    by_stat = extract()
    by_content = extract("--verify-content")
    assert by_content != by_stat
    target = tree / "class1" / "2.bmp"
    st = target.stat()
    Image.fromarray(np.zeros((20, 24, 3), np.uint8)).save(target)  # other pixels, same size ...
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime (a `cp -p` of other bytes)
    assert target.stat().st_size == st.st_size
    again_by_stat = extract()
    assert again_by_stat == by_stat  # what sizes and times cannot see: the documented reason for the flag
    again_by_content = extract("--verify-content")
    assert again_by_content not in (by_content, by_stat)
    before, after = (np.asarray(np.load(p / "features.npy"), np.float32) for p in (by_content, again_by_content))
    changed = np.flatnonzero(np.abs(after - before).max(axis=1) > 0)
    ids = np.load(by_content / "indices.npy")
    ds = get_dataset("imagefolder", tree)
    assert [ds.sample_id(int(ids[i])) for i in changed] == ["class1/2.bmp"]  # exactly the rewritten image
    assert after[changed[0]].max() == 0


def test_an_entry_of_an_older_fingerprint_is_not_reused_and_the_log_says_why(tmp_path, caplog):
    tree, cache, bb = _bmp_tree(tmp_path / "images", seed=0), FeatureCache(tmp_path / "c"), tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    # what an older sscb stored: the same backbone, dataset and split under a names-and-labels-only fingerprint
    legacy = cache.put(CacheKey(backbone=bb.card.id, dataset=ds.name, split=ds.split, weights=bb.weights_id,
                                transform=bb.transform_id, data="0123456789abcdef"),
                       np.zeros((12, 512)), ds.targets)
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.extraction"):
        entry = _extract(tree, cache, bb)
    assert entry.path != legacy.path and bb.model.seen == 12
    [warning] = _warnings(caplog)
    assert legacy.name in warning and "older sscb" in warning


def test_array_datasets_follow_their_data_files(tmp_path):
    from test_mnist import _make

    for folder in ("a", "b"):
        _make(tmp_path / folder, gz=False)
    fa = get_dataset("mnist", tmp_path / "a", "test")
    fb = get_dataset("mnist", tmp_path / "b", "test")
    assert dataset_fingerprint(fa) != dataset_fingerprint(fb)  # same bytes and names, another folder
    before = dataset_fingerprint(fa)
    images = tmp_path / "a" / "t10k-images-idx3-ubyte"
    st = images.stat()
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert dataset_fingerprint(fa) != before
    os.utime(images, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert dataset_fingerprint(fa) == before


# -- 2. deletion only of what sscb made ---------------------------------------------------------------------
def _ordinary_folder(root: Path) -> dict:
    (root / "photos").mkdir(parents=True)
    (root / "photos" / "holiday.jpg").write_bytes(b"not ours")
    (root / "webapp").mkdir()
    (root / "webapp" / "manifest.json").write_text('{"name": "my app"}')  # a manifest that is not sscb's
    (root / "drafts.partial").mkdir()
    (root / "notes.txt").write_text("mine")
    return _snapshot(root)


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in root.rglob("*")}


def test_cache_on_an_ordinary_folder_says_so_and_removes_nothing(tmp_path, capsys):
    folder = tmp_path / "home"
    before = _ordinary_folder(folder)
    assert main(["cache", "--cache-dir", str(folder)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert f"{folder} is not a feature cache" in err and "--cache-dir" in err
    for name in ("photos", "webapp", "drafts", "drafts.partial"):
        assert main(["cache", "--cache-dir", str(folder), "--remove", name]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "refusing to delete" in err and "nothing was deleted" in err
    assert _snapshot(folder) == before  # not a byte touched, no lock folder made
    (tmp_path / "empty").mkdir()
    for nothing in ("empty", "missing"):
        assert main(["cache", "--cache-dir", str(tmp_path / nothing)]) == 0
        assert capsys.readouterr().out == f"no entries under {tmp_path / nothing}\n"


def test_entries_beside_other_files_are_listed_and_removable_the_rest_stays(tmp_path, capsys):
    folder = tmp_path / "shared"
    before = _ordinary_folder(folder)
    cache = FeatureCache(folder)
    entry = cache.put(CacheKey(backbone="bb", dataset="ds"), np.ones((5, 3)), np.zeros(5))
    old = cache.put(CacheKey(backbone="bb", dataset="old"), np.ones((5, 3)), np.zeros(5))
    (old.path / OWNER).unlink()  # an entry written before the marker existed: its manifest still proves it
    assert main(["cache", "--cache-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{entry.name}  ok" in out and f"{old.name}  " in out and "incomplete" not in out
    assert not [line for line in out.splitlines() if line.startswith(("photos", "webapp", "drafts", "notes"))]
    assert "4 other file(s)/folder(s)" in out and "never removed" in out
    for e in (entry, old):
        assert main(["cache", "--cache-dir", str(folder), "--remove", e.name]) == 0
    assert cache.entries() == []
    after = _snapshot(folder)
    assert {k: v for k, v in after.items() if not k.startswith(".locks")} == before


# -- 3. signals and what dead processes leave ---------------------------------------------------------------
_PAUSE_IN_CHUNK_1 = textwrap.dedent("""
    import sys, time
    import numpy as np
    real = np.savez

    def savez(file, **arrays):  # chunk 1's temporary file is written and not yet renamed: wait there
        real(file, **arrays)
        if ".chunk-000001." in getattr(file, "name", ""):
            print("in chunk 1", flush=True)
            time.sleep(120)

    np.savez = savez
    from ssl_cluster_bench.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def _extract_args(tree, cache_dir):
    return ["-q", "extract", "--backbone", "pixels", "--dataset", "imagefolder", "--data-root", str(tree),
            "--cache-dir", str(cache_dir), "--chunk-size", "4", "--batch-size", "4", "--workers", "0"]


def _resumed(tree, cache_dir, caplog) -> str:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ssl_cluster_bench.extraction"):
        assert main(_extract_args(tree, cache_dir)) == 0
    return next(r.getMessage() for r in caplog.records if r.getMessage().startswith("extracted "))


def test_sigterm_mid_extraction_keeps_chunks_removes_temporaries_and_resumes(tmp_path, caplog):
    tree, cache_dir = write_image_tree(tmp_path), tmp_path / "c"  # 22 positions: 6 chunks of 4
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    job = subprocess.Popen([sys.executable, "-c", _PAUSE_IN_CHUNK_1, *_extract_args(tree, cache_dir)], cwd=REPO,
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert job.stdout.readline().strip() == "in chunk 1"
        [partial] = cache_dir.glob("*.partial")
        assert [p.name.split(".")[1] for p in partial.glob("chunks-of-4/.chunk-*.tmp")] == ["chunk-000001"]
        job.send_signal(signal.SIGTERM)  # what a scheduler sends at the time limit
        out, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 128 + signal.SIGTERM
    last = err.strip().splitlines()[-1]  # (above it: the dataset indexing bar, which -q does not silence)
    assert last.startswith("sscb extract: stopped by SIGTERM:") and "re-run" in last and "Traceback" not in err
    assert _temporaries(cache_dir) == []
    assert sorted(p.name for p in partial.glob("chunks-of-4/chunk-*.npz")) == ["chunk-000000.npz"]
    assert _resumed(tree, cache_dir, caplog).startswith("extracted 5 chunk(s), 18 images")
    [entry] = FeatureCache(cache_dir).entries()
    assert entry.count == 21 and not partial.exists()


def test_sighup_in_process_is_taken_like_ctrl_c_and_the_handlers_are_restored(tmp_path, caplog, monkeypatch,
                                                                              capsys):
    tree, cache_dir = write_image_tree(tmp_path), tmp_path / "c"
    real = np.savez

    def savez(file, **arrays):
        real(file, **arrays)
        if ".chunk-000002." in getattr(file, "name", ""):
            os.kill(os.getpid(), signal.SIGHUP)  # a real signal to this process, mid-write of chunk 2
            time.sleep(5)  # (interrupted by the handler at once)

    # Without main's handler this one would only take note (and the default one would end pytest itself).
    seen = []
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: seen.append(signum))
    try:
        monkeypatch.setattr(np, "savez", savez)
        started = time.monotonic()
        rc = main(_extract_args(tree, cache_dir))
        restored = signal.getsignal(signal.SIGHUP)
    finally:
        guard = signal.signal(signal.SIGHUP, previous)
    assert rc == 128 + signal.SIGHUP and seen == [] and time.monotonic() - started < 5
    assert "stopped by SIGHUP" in capsys.readouterr().err
    assert restored is guard  # main put back the handler it found
    assert _temporaries(cache_dir) == []
    monkeypatch.setattr(np, "savez", real)
    assert _resumed(tree, cache_dir, caplog).startswith("extracted 4 chunk(s)")


def _dead_pid() -> int:
    job = subprocess.Popen([sys.executable, "-c", "pass"])
    job.wait()
    return job.pid


def test_temporaries_of_dead_processes_are_swept_by_the_next_run(tmp_path, capsys):
    tree, cache_dir = write_image_tree(tmp_path), tmp_path / "c"
    cache, host, dead = FeatureCache(cache_dir), cache_mod._host(), _dead_pid()
    with cache.writer(CacheKey(backbone="bb", dataset="ds"), n_items=10, chunk_size=4) as w:
        w.write_chunk(0, np.ones((4, 3)), [0, 1, 2, 3], [0, 1, 2, 3])
    chunks = w.chunks_dir
    old = time.time() - 3 * 86400
    files = {
        "dead": chunks / f".chunk-000001.{dead}@{host}.abcd1234.tmp",
        "alive": chunks / f".chunk-000002.{os.getpid()}@{host}.abcd1234.tmp",
        "other host, recent": chunks / f".chunk-000003.{dead}@elsewhere.abcd1234.tmp",
        "other host, old": chunks / f".chunk-000004.{dead}@elsewhere.abcd1234.tmp",
    }
    for path in files.values():
        path.write_bytes(b"half a chunk")
    os.utime(files["other host, old"], (old, old))
    dead_dir = cache_dir / f".bb--ds--all--0123456789ab.tmp-{dead}@{host}.abcd1234"
    dead_dir.mkdir()
    (dead_dir / "features.npy").write_bytes(b"half an entry")
    (dead_dir / OWNER).write_text(json.dumps({"made_by": "ssl_cluster_bench"}))
    not_ours = cache_dir / f".mine.tmp-{dead}@{host}.abcd1234"  # the same kind of name, no marker: not sscb's
    not_ours.mkdir()
    (not_ours / "keep.txt").write_text("mine")

    assert main(_extract_args(tree, cache_dir)) == 0  # the next run, of another entry
    left = {name for name, path in files.items() if path.exists()}
    assert left == {"alive", "other host, recent"}
    assert not dead_dir.exists() and (not_ours / "keep.txt").read_text() == "mine"
    assert not list(cache_dir.glob(".trash*"))
    assert sorted(p.name for p in chunks.glob("chunk-*.npz")) == ["chunk-000000.npz"]  # kept for a resume
