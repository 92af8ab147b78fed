"""A feature cache that is safe to share: jobs racing on one entry (real processes), damaged entries detected
before use (flipped byte, truncation, missing file, garbled manifest, killed run), and a full disk during
extraction or a leaderboard append (injected ENOSPC at the write calls, plus a real small tmpfs where the
machine lets a user namespace mount one)."""
import builtins
import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import ssl_cluster_bench.cache as cache_mod
import ssl_cluster_bench.safeio as safeio_mod
from ssl_cluster_bench.cache import CacheIntegrityError, CacheKey, FeatureCache
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.errors import message_for
from ssl_cluster_bench.extraction import extract_features
from ssl_cluster_bench.leaderboard import append_rows

from fakes import tiny_backbone, write_image_tree


def _key(**kw):
    return CacheKey(**{"backbone": "bb", "dataset": "ds", "split": "train", "weights": "w", "transform": "t", **kw})


@pytest.fixture()
def tree(tmp_path):
    return write_image_tree(tmp_path)


def _direct(bb, ds):
    with torch.inference_mode():
        return np.stack([bb.model.inner(img[None]).numpy()[0] for img, _, _ in (ds[i] for i in range(len(ds)))
                         if img is not None])


def _leftovers(root: Path) -> list[str]:
    """Temporary files or folders anywhere under the cache (none may survive a finished or failed write)."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".tmp" in p.name or p.name.startswith(".trash"))


# -- 1. concurrent jobs on one entry ----------------------------------------------------------------------
def _racer(barrier, tree, cache_dir, out, idx):
    torch.set_num_threads(1)
    bb = tiny_backbone(delay=0.05)
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    barrier.wait()
    entry = extract_features(bb, ds, FeatureCache(cache_dir), batch_size=2, chunk_size=4, device="cpu",
                             progress=False)
    Path(out, f"job{idx}").write_text(f"{bb.model.seen} {entry.path}")


def test_jobs_racing_on_one_entry_all_succeed_and_share_the_chunks(tree, tmp_path):
    """Three separate processes ask for the same missing entry at the same moment (the reported failure:
    FileNotFoundError on `.partial/.chunk-…tmp.npz` for all but one)."""
    out, cache_dir = tmp_path / "out", tmp_path / "cache"
    out.mkdir()
    # Fresh processes forked from one server that imported torch once (3 cold imports cost minutes on 2 cores).
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "timm", "ssl_cluster_bench.extraction", __name__])
    barrier = ctx.Barrier(3)
    jobs = [ctx.Process(target=_racer, args=(barrier, tree, cache_dir, out, i)) for i in range(3)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=300)
    assert [job.exitcode for job in jobs] == [0, 0, 0]
    results = [(out / f"job{i}").read_text().split() for i in range(3)]
    seen = [int(r[0]) for r in results]
    # every readable image went through a model exactly once across the three jobs: no chunk was recomputed
    assert sum(seen) == 21, seen
    assert len({r[1] for r in results}) == 1
    cache = FeatureCache(cache_dir)
    assert [e.path.name for e in cache.entries()] == [Path(results[0][1]).name]
    assert [s.state for s in cache.status()] == ["ok"]  # no partial folder, no temporary left
    assert _leftovers(cache_dir) == []
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    entry = cache.entries()[0]
    np.testing.assert_allclose(entry.features, _direct(bb, ds).astype(np.float16), rtol=2e-3, atol=2e-3)
    assert entry.verify()


_HOLD_CLAIM = """
import sys, time
from ssl_cluster_bench.cache import CacheKey, FeatureCache
w = FeatureCache(sys.argv[1]).writer(CacheKey("bb", "ds", "train", "w", "t"), n_items=10, chunk_size=4)
lock = w.claim(1)
print("claimed" if lock is not None else "refused", flush=True)
time.sleep(600)
"""


def test_a_claim_dies_with_its_job(tmp_path):
    """A chunk held by a live job is not handed out; once that job is killed (-9) the chunk is free again,
    and `sscb cache` reports the extraction as running, then as abandoned."""
    cache = FeatureCache(tmp_path)
    job = subprocess.Popen([sys.executable, "-c", _HOLD_CLAIM, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                           cwd=Path(__file__).resolve().parents[1])
    try:
        assert job.stdout.readline().strip() == "claimed"
        with cache.writer(_key(), n_items=10, chunk_size=4) as w:
            assert w.claim(1) is None  # computed by the other job
            mine = w.claim(0)
            assert mine is not None and w.claim(0) is None  # a claim excludes even this process's next ask
            mine.release()
        [partial] = cache.status()
        assert partial.state == "partial" and "running" in partial.describe()
        with pytest.raises(RuntimeError, match="running right now"):
            cache.remove(partial.name)
    finally:
        job.kill()
        job.wait()
    with cache.writer(_key(), n_items=10, chunk_size=4) as w:
        lock = w.claim(1)
        assert lock is not None
        lock.release()
    [partial] = cache.status()
    assert "no process is working on it" in partial.describe("cli") and "--remove" in partial.describe("cli")


# -- 2. integrity -------------------------------------------------------------------------------------------
def _flip_byte(path: Path, offset: int) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # as `rsync -t` / `cp -p` would: mtime unchanged


def test_flipped_byte_is_an_error_before_any_use(tmp_path, capsys):
    feats = np.random.default_rng(0).normal(size=(60, 8)).astype(np.float32)
    assert main(["import-features", "--features", str(_npy(tmp_path / "f.npy", feats)), "--labels",
                 str(_npy(tmp_path / "l.npy", np.arange(60) % 3)), "--backbone", "mine", "--dataset", "toy",
                 "--cache-dir", str(tmp_path / "c")]) == 0
    [entry] = FeatureCache(tmp_path / "c").entries()
    _flip_byte(entry.path / "features.npy", 200)
    results = tmp_path / "res" / "lb.csv"
    capsys.readouterr()
    assert main(["-q", "run", "--backbones", "mine", "--dataset", "toy", "--cache-dir", str(tmp_path / "c"),
                 "--seeds", "1", "--results", str(results)]) == 1
    err = capsys.readouterr().err
    assert f"{entry.path.name} is damaged" in err and "sha256" in err
    assert f"sscb cache --remove {entry.path.name}" in err
    assert "Traceback" not in err and not results.exists()  # nothing was clustered, no row appended
    with pytest.raises(CacheIntegrityError, match="does not match the sha256"):
        FeatureCache(tmp_path / "c").get(entry.key)
    assert main(["cache", "--verify", "--cache-dir", str(tmp_path / "c")]) == 1
    assert "damaged" in capsys.readouterr().out
    assert main(["cache", "--remove", entry.path.name, "--cache-dir", str(tmp_path / "c")]) == 0
    assert FeatureCache(tmp_path / "c").entries() == []


def _npy(path, array):
    np.save(path, array)
    return path


def test_verified_stamp_skips_the_hash_until_a_file_changes(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    entry = cache.put(_key(), np.ones((50, 4)), np.zeros(50))
    assert json.loads((entry.path / ".verified.json").read_text())["checksum"] == entry.manifest["checksum"]
    calls = []
    real = cache_mod._checksum
    monkeypatch.setattr(cache_mod, "_checksum", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert cache.get(_key()).labels.shape == (50,) and calls == []  # stamped at commit: no hash on open
    os.utime(entry.path / "labels.npy")  # any write through the filesystem moves mtime/ctime
    assert cache.get(_key()).count == 50 and calls == [1]  # hashed again, still intact, stamp refreshed
    assert cache.get(_key()).count == 50 and calls == [1]
    assert cache.get(_key()).verify() and calls == [1, 1]  # verify() / --verify always re-hash


@pytest.mark.parametrize("damage, message", [
    ("truncate", "features.npy is truncated"),
    ("labels", "labels.npy is missing"),
    ("manifest", "manifest.json cannot be read"),
    ("header", "features.npy is not a readable .npy file"),
])
def test_damaged_entries_are_messages_not_tracebacks(tmp_path, capsys, damage, message):
    cache = FeatureCache(tmp_path)
    entry = cache.put(_key(), np.ones((50, 4)), np.zeros(50))
    cache.put(_key(dataset="other"), np.ones((5, 4)), np.zeros(5))
    if damage == "truncate":
        with open(entry.path / "features.npy", "r+b") as f:
            f.truncate(300)
    elif damage == "labels":
        (entry.path / "labels.npy").unlink()
    elif damage == "manifest":
        (entry.path / "manifest.json").write_text('{"key": {"backbone": "bb", ')
    else:
        (entry.path / "features.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CacheIntegrityError, match=message) as info:
        cache.get(_key())
    # the fix is spelled for the interface in use: Python for str(), sscb flags on the command line
    assert f"FeatureCache(cache_dir).remove('{entry.path.name}')" in str(info.value)
    assert f"`sscb cache --remove {entry.path.name}`" in message_for(info.value, "cli")
    assert [e.key.dataset for e in cache.entries()] == (["other"] if damage == "manifest" else ["ds", "other"])
    capsys.readouterr()
    assert main(["cache", "--cache-dir", str(tmp_path)]) == 0  # the listing shows it, it does not crash
    out = capsys.readouterr().out
    assert f"{entry.path.name}  damaged" in out and message in out
    assert main(["cache", "--verify", "--cache-dir", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "1 entry verified, 1 damaged" in captured.err and "Traceback" not in captured.err + captured.out


def test_partial_folder_of_a_killed_run_is_listed_and_resumable(tmp_path, capsys):
    cache = FeatureCache(tmp_path)
    w = cache.writer(_key(), n_items=10, chunk_size=4)
    w.write_chunk(0, np.ones((4, 3)), [0, 1, 2, 3], [0, 1, 2, 3])
    w.close()  # the job died
    assert main(["cache", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "partial" in out and "1/3 chunks done" in out and "re-run the same extraction" in out
    assert main(["cache", "--verify", "--cache-dir", str(tmp_path)]) == 0  # resumable, not damaged
    with cache.writer(_key(), n_items=10, chunk_size=4) as w2:
        assert w2.done_chunks() == {0}
        w2.write_chunk(1, np.full((4, 3), 2.0), [4, 5, 6, 7], [4, 5, 6, 7])
        w2.write_chunk(2, np.full((2, 3), 3.0), [8, 9], [8, 9])
        entry = w2.finalize()
    np.testing.assert_array_equal(entry.features[:, 0], [1, 1, 1, 1, 2, 2, 2, 2, 3, 3])
    assert [s.state for s in cache.status()] == ["ok"]


# -- 3. full disk -------------------------------------------------------------------------------------------
class _FullDisk:
    """Stand-in for ``open`` in one module: the ``nth`` file opened for writing whose name contains ``match``
    takes ``room`` bytes, then every write to any file fails with ENOSPC, as on a disk that just filled up."""

    def __init__(self, match: str, nth: int = 1, room: int = 100):
        self.match, self.nth, self.room, self.full, self.opened = match, nth, room, False, 0

    def __call__(self, file, mode="r", *args, **kwargs):
        f = builtins.open(file, mode, *args, **kwargs)
        if not any(c in mode for c in "wax+"):
            return f
        if self.match in str(file):
            self.opened += 1
        return _Filling(f, self, budget=self.room if self.opened == self.nth and self.match in str(file) else None)


class _Filling:
    def __init__(self, f, disk, budget):
        self._f, self._disk, self._budget = f, disk, budget

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else memoryview(data).nbytes
        if self._budget is not None and not self._disk.full and n > self._budget:
            if self._budget:
                self._f.write(memoryview(data).cast("B")[:self._budget] if not isinstance(data, str)
                              else data[:self._budget])
                self._f.flush()  # the first bytes reach the file: a half-written chunk on disk
            self._disk.full = True
        if self._disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        if self._budget is not None:
            self._budget -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def test_disk_full_mid_chunk_keeps_finished_chunks_and_resumes(tree, tmp_path, monkeypatch):
    bb = tiny_backbone()
    ds = get_dataset("imagefolder", tree, transform=bb.transform)
    cache = FeatureCache(tmp_path / "c")
    disk = _FullDisk(match=".chunk-", nth=3, room=500)  # chunk 2 of 0..5 fails half-way
    monkeypatch.setattr(safeio_mod, "open", disk, raising=False)  # chunks are written by safeio.atomic_write
    with pytest.raises(OSError, match="disk is full") as info:
        extract_features(bb, ds, cache, batch_size=2, chunk_size=4, progress=False)
    assert info.value.errno == errno.ENOSPC
    assert "chunk 2" in str(info.value) and "2 finished chunk(s) of 6 are kept" in str(info.value)
    monkeypatch.setattr(safeio_mod, "open", builtins.open, raising=False)
    partial = next((tmp_path / "c").glob("*.partial")) / "chunks-of-4"
    assert sorted(p.name for p in partial.glob("chunk-*.npz")) == ["chunk-000000.npz", "chunk-000001.npz"]
    for p in partial.glob("chunk-*.npz"):
        with np.load(p) as z:
            assert z["features"].shape == (4, 512)  # finished chunks are whole
    assert _leftovers(tmp_path / "c") == [] and cache.entries() == []
    bb.model.seen = 0
    entry = extract_features(bb, ds, cache, batch_size=2, chunk_size=4, progress=False)
    assert bb.model.seen == 22 - 8 - 1  # only chunks 2..5 (14 positions, one of them the broken file)
    np.testing.assert_allclose(entry.features, _direct(bb, ds).astype(np.float16), rtol=2e-3, atol=2e-3)


def test_disk_full_while_assembling_keeps_every_chunk(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    w = cache.writer(_key(), n_items=10, chunk_size=4)
    for i, rows in enumerate((range(0, 4), range(4, 8), range(8, 10))):
        w.write_chunk(i, np.full((len(rows), 3), float(i)), list(rows), list(rows))
    monkeypatch.setattr(cache_mod, "open", _FullDisk(match="features.npy", room=150), raising=False)
    with pytest.raises(OSError, match="disk is full.*All 3 finished chunks are kept"):
        w.finalize()
    monkeypatch.setattr(cache_mod, "open", builtins.open, raising=False)
    assert cache.entries() == [] and w.done_chunks() == {0, 1, 2} and _leftovers(tmp_path) == []
    entry = w.finalize()
    np.testing.assert_array_equal(entry.features[:, 0], [0, 0, 0, 0, 1, 1, 1, 1, 2, 2])
    monkeypatch.setattr(cache_mod, "open", _FullDisk(match="features.npy", room=1000), raising=False)
    with pytest.raises(OSError, match="disk is full.*Nothing was stored"):
        cache.put(_key(dataset="big"), np.ones((600, 8)), np.zeros(600))
    assert [e.key.dataset for e in cache.entries()] == ["ds"] and _leftovers(tmp_path) == []


def test_disk_full_mid_append_leaves_the_leaderboard_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "lb.csv"
    row = {"backbone": "a", "dataset": "d", "method": "kmeans", "n_clusters": 3, "seed": 0, "acc": 0.5}
    append_rows(path, [row])
    before = path.read_bytes()
    monkeypatch.setattr(safeio_mod, "open", _FullDisk(match=".tmp", room=len(before) // 2), raising=False)
    with pytest.raises(OSError, match="disk is full") as info:
        append_rows(path, [dict(row, seed=s) for s in range(1, 20)])
    assert info.value.errno == errno.ENOSPC and "lb.csv is unchanged" in str(info.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.csv", "lb.csv.lock"]


_ON_A_FULL_TMPFS = textwrap.dedent("""
    import errno, sys
    import numpy as np
    from pathlib import Path
    from ssl_cluster_bench.cache import CacheKey, FeatureCache
    from ssl_cluster_bench.leaderboard import append_rows

    root = Path(sys.argv[1])
    cache = FeatureCache(root / "cache")
    w = cache.writer(CacheKey("bb", "ds"), n_items=4000, chunk_size=100)
    try:
        for i in range(w.n_chunks):
            w.write_chunk(i, np.random.default_rng(i).normal(size=(100, 256)), np.zeros(100), np.arange(100))
        sys.exit("the tmpfs never filled up")
    except OSError as e:
        assert e.errno == errno.ENOSPC and "disk is full" in str(e), e
        print("chunk:", e)
    done = w.done_chunks()
    assert done == set(range(len(done))) and 0 < len(done) < w.n_chunks, done
    for p in w.chunks_dir.glob("chunk-*.npz"):
        with np.load(p) as z:
            assert z["features"].shape == (100, 256)
    assert not [p for p in root.rglob("*") if ".tmp" in p.name], list(root.rglob("*"))
    lb = root / "lb.csv"
    before = lb.read_bytes()
    try:
        append_rows(lb, [{"backbone": "a" * 2000, "dataset": "d", "method": "kmeans", "n_clusters": 3,
                          "seed": s, "acc": 0.5} for s in range(400)])
        sys.exit("append_rows succeeded on a full disk")
    except OSError as e:
        assert e.errno == errno.ENOSPC and "unchanged" in str(e), e
        print("append:", e)
    assert lb.read_bytes() == before and not list(root.glob(".lb.csv*"))
    print("OK")
""")


def test_real_full_tmpfs(tmp_path):
    """The same on a real 1 MiB tmpfs, mounted in a user namespace (skipped where that is not allowed)."""
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-Urm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {mnt}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {probe.stderr.strip()}")
    script = tmp_path / "full.py"
    script.write_text(_ON_A_FULL_TMPFS)
    setup = (f"mount -t tmpfs -o size=1m tmpfs {mnt} && "
             f"{sys.executable} -c \"from ssl_cluster_bench.leaderboard import append_rows; "
             f"append_rows('{mnt}/lb.csv', [dict(backbone='x', dataset='d', method='kmeans', n_clusters=3, "
             f"seed=0, acc=0.5)])\" && {sys.executable} {script} {mnt}")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(["unshare", "-Urm", "sh", "-c", setup], capture_output=True, text=True, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, timeout=240)
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stdout + done.stderr
    assert "Traceback" not in done.stderr
