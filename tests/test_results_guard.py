"""The results file (leaderboard CSV) is guarded: rows go only to a whole leaderboard this tool wrote, through a
symlink to its target, never into a read-only file, never next to a torn row, and once per run id when identical
runs race (issue 19)."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import ssl_cluster_bench as sscb
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import (COLUMNS, OLDER_COLUMNS, LeaderboardFileError, append_rows, lock_path,
                                           read_leaderboard)
from ssl_cluster_bench.predictions import load_predictions

REPO = Path(__file__).resolve().parents[1]
# The smallest real run: raw pixels of the embedded digits, k-means at k = 10, one seed.
FAST = ["--backbones", "pixels", "--methods", "kmeans", "--seeds", "1", "--overcluster", "1"]


def _sscb(*args, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ssl_cluster_bench", "-q", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


@pytest.fixture
def digits_cache(tmp_path):
    """A feature cache holding the digits' raw pixels as imported features ("pix" on "dg"): runs then only cluster."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    sscb.import_features(features.astype("float32"), labels, backbone="pix", dataset="dg", cache=tmp_path / "cache")
    return tmp_path / "cache"


def _rows(seeds=(0, 1, 2), backbone="a"):
    return [{"backbone": backbone, "dataset": "digits", "split": "all", "method": "kmeans", "n_clusters": 10,
             "seed": s, "acc": 0.5 + s / 10, "nmi": 0.77, "run_id": f"{s:016x}",
             "timestamp": "2026-12-06T12:00:00+0000"} for s in seeds]


def _aged(path: Path) -> os.stat_result:
    """Set the file's times in the past, so that any write (even within the same second) shows in st_mtime_ns."""
    os.utime(path, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return path.stat()


def _same_file(path: Path, before: os.stat_result, data: bytes) -> None:
    after = path.stat()
    assert path.read_bytes() == data
    assert (after.st_ino, after.st_mtime_ns, after.st_mode) == (before.st_ino, before.st_mtime_ns, before.st_mode)


def test_a_foreign_csv_is_refused_by_sscb_run_and_left_byte_identical(tmp_path):
    notes = tmp_path / "notes.csv"
    data = b"id,agent\n007,bond\n"
    notes.write_bytes(data)
    before = _aged(notes)
    proc = _sscb("run", *FAST, "--cache-dir", str(tmp_path / "cache"), "--results", str(notes), cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(notes) in lines[0] and "not a leaderboard written by sscb" in lines[0]
    assert "another results file" in lines[0] and "left unchanged" in lines[0]
    _same_file(notes, before, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.csv"]  # no lock, table or predictions beside it
    with pytest.raises(LeaderboardFileError, match="not a leaderboard"):
        append_rows(notes, _rows())
    _same_file(notes, before, data)


def test_older_leaderboard_headers_are_widened_and_any_other_header_refused(tmp_path):
    # Every column set an earlier version wrote is still appended to (the header widened to today's columns) ...
    for i, columns in enumerate(OLDER_COLUMNS):
        path = tmp_path / f"old{i}.csv"
        row = {c: "" for c in columns} | {"backbone": "old", "dataset": "digits", "method": "kmeans",
                                         "n_clusters": "10", "seed": "0", "acc": "0.5"}
        path.write_text(",".join(columns) + "\n" + ",".join(row[c] for c in columns) + "\n")
        assert append_rows(path, _rows((1,))) == 1
        board = read_leaderboard(path)
        assert list(board.columns) == COLUMNS and list(board["backbone"]) == ["old", "a"]
    # ... but a header one column away from a leaderboard's (another tool's export of it) is not.
    near = tmp_path / "near.csv"
    data = (",".join(c if c != "acc" else "accuracy" for c in COLUMNS) + "\n").encode()
    near.write_bytes(data)
    before = _aged(near)
    with pytest.raises(LeaderboardFileError, match="not a leaderboard"):
        append_rows(near, _rows())
    _same_file(near, before, data)
    # an empty file becomes a leaderboard
    empty = tmp_path / "empty.csv"
    empty.touch()
    assert append_rows(empty, _rows()) == 3 and len(read_leaderboard(empty)) == 3


def test_a_symlinked_leaderboard_gets_the_rows_in_its_target_and_stays_a_link(tmp_path, digits_cache):
    shared, work = tmp_path / "shared", tmp_path / "work"
    shared.mkdir()
    work.mkdir()
    target, link = shared / "lb.csv", work / "lb.csv"
    append_rows(target, _rows((7,), backbone="earlier"))
    link.symlink_to(os.path.relpath(target, work))
    protocol = {"seeds": 1, "overcluster": [1.0]}
    first = sscb.run(["pix"], "dg", results=link, cache=digits_cache, protocol=protocol, progress=False)
    assert first.attrs["new_rows"] == 1
    assert link.is_symlink() and os.readlink(link) == os.path.relpath(target, work)
    board = read_leaderboard(target)
    assert list(board["backbone"]) == ["earlier", "pix"]
    # the lock and the assignments belong to the target; beside the link only the markdown table it asked for
    assert lock_path(link) == Path(os.path.realpath(target)).with_name("lb.csv.lock") and lock_path(link).is_file()
    assert sorted(p.name for p in work.iterdir()) == ["lb.csv", "lb.md"]
    assert load_predictions(target, first["run_id"].iloc[0]).shape == (1797,)
    again = sscb.run(["pix"], "dg", results=link, cache=digits_cache, protocol=protocol, progress=False)
    assert again.attrs["new_rows"] == 0 and len(read_leaderboard(link)) == 2 and link.is_symlink()


def test_a_read_only_leaderboard_is_refused_and_a_writable_one_keeps_its_mode(tmp_path, capsys):
    # The tests run as root, which may write a 0444 file anyway: the mode bits themselves must stop the tool.
    path = tmp_path / "lb.csv"
    append_rows(path, _rows())
    path.chmod(0o444)
    data, before = path.read_bytes(), _aged(path)
    with pytest.raises(PermissionError, match=r"read-only \(mode 0444\).*chmod u\+w"):
        append_rows(path, _rows((5,)))
    _same_file(path, before, data)
    assert main(["-q", "run", *FAST, "--cache-dir", str(tmp_path / "cache"), "--results", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "read-only" in err[0] and str(path) in err[0]
    _same_file(path, before, data)
    assert not (tmp_path / "predictions").exists()

    path.chmod(0o640)  # a writable file is replaced (atomically) with the same permissions
    assert append_rows(path, _rows((5,))) == 1
    assert path.stat().st_mode & 0o7777 == 0o640 and len(read_leaderboard(path)) == 4


def _leaderboard(path: Path) -> tuple[bytes, list[bytes]]:
    append_rows(path, _rows())
    data = path.read_bytes()
    return data, data.split(b"\n")[:-1]  # header + 3 rows (lines 1-4)


def test_a_torn_row_is_refused_on_read_and_on_append_with_its_line_number(tmp_path, capsys):
    path = tmp_path / "lb.csv"
    whole, lines = _leaderboard(path)
    # The last row cut inside its nmi value ("0.77" -> "0.7"), as by a full disk: 21 of the 37 fields.
    nmi = COLUMNS.index("nmi")
    fields = lines[3].split(b",")
    torn = b"\n".join(lines[:3]) + b"\n" + b",".join(fields[:nmi] + [fields[nmi][:3]])
    path.write_bytes(torn)
    before = _aged(path)
    with pytest.raises(LeaderboardFileError,
                       match=rf"line 4 has {nmi + 1} of the {len(COLUMNS)} fields.*copy or delete line 4"):
        read_leaderboard(path)
    with pytest.raises(LeaderboardFileError, match="line 4"):
        append_rows(path, _rows((5,)))
    _same_file(path, before, torn)
    assert main(["leaderboard", str(path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "line 4" in err[0] and str(path) in err[0]
    assert main(["-q", "run", *FAST, "--cache-dir", str(tmp_path / "cache"), "--results", str(path)]) == 1
    assert "line 4" in capsys.readouterr().err
    _same_file(path, before, torn)

    # Cut inside the last field (the timestamp): every field is there, but the row is not whole.
    path.write_bytes(whole[:-10])
    with pytest.raises(LeaderboardFileError, match="line 4 ends in the middle of its timestamp"):
        read_leaderboard(path)
    # A torn row in the middle (a later append added whole rows after it).
    path.write_bytes(b"\n".join(lines[:2] + [lines[2][:40]] + lines[3:]) + b"\n")
    with pytest.raises(LeaderboardFileError, match="line 3 has"):
        read_leaderboard(path)
    with pytest.raises(LeaderboardFileError, match="line 3 has"):
        append_rows(path, _rows((5,)))

    # Only the final newline missing, the last row whole: accepted, and the next append completes the line.
    path.write_bytes(whole[:-1])
    assert list(read_leaderboard(path)["seed"]) == [0, 1, 2]
    assert append_rows(path, _rows((5,))) == 1
    assert path.read_bytes().startswith(whole) and list(read_leaderboard(path)["seed"]) == [0, 1, 2, 5]


def test_run_ids_are_read_as_text_even_when_they_look_like_numbers(tmp_path):
    # 16 hex digits can read as a float ("123e4...") or an integer; the done set and the assignment files need the text
    path = tmp_path / "lb.csv"
    append_rows(path, [dict(_rows((0,))[0], run_id="123e456789012345")])
    assert list(read_leaderboard(path)["run_id"]) == ["123e456789012345"]


def _lock_waiters(lock: Path, pids) -> set:
    """Pids of ``pids`` blocked in flock on ``lock`` (from /proc/locks: "N: -> FLOCK ADVISORY WRITE pid dev:ino")."""
    ino = f":{lock.stat().st_ino}"
    waiting = set()
    for line in Path("/proc/locks").read_text().splitlines():
        f = line.split()
        if len(f) > 6 and f[1] == "->" and f[6].endswith(ino) and int(f[5]) in pids:
            waiting.add(int(f[5]))
    return waiting


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux /proc/locks to see both runs waiting")
def test_two_identical_runs_started_together_store_each_run_once(tmp_path, digits_cache):
    results = tmp_path / "lb.csv"
    run = ["run", "--backbones", "pix", "--dataset", "dg", "--methods", "kmeans", "--seeds", "2", "--overcluster",
           "1", "--cache-dir", str(digits_cache), "--results", str(results)]
    # Hold the leaderboard's lock while both start: each computes its first row and waits to append it, so the
    # two surely overlap on the same run id.
    lock_file = lock_path(results)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        procs = [_sscb(*run, cwd=tmp_path), _sscb(*run, cwd=tmp_path)]
        pids = {p.pid for p in procs}
        deadline = time.monotonic() + 150
        while _lock_waiters(lock_file, pids) != pids:
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                fcntl.flock(held, fcntl.LOCK_UN)
                outs = [p.communicate(timeout=60) for p in procs]
                pytest.fail(f"the two runs did not both wait on the leaderboard lock: {outs}")
            time.sleep(0.05)
        fcntl.flock(held, fcntl.LOCK_UN)
    outs = [p.communicate(timeout=150) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    board = read_leaderboard(results)
    assert board["run_id"].is_unique and sorted(board["seed"]) == [0, 1]
    for run_id in board["run_id"]:
        assert load_predictions(results, run_id).shape == (1797,)
    # between them the two runs appended the two rows: each says how many it added
    appended = [int(out.split(" rows appended")[0].split()[-1]) for out, _ in outs]
    assert sum(appended) == 2, outs


def test_reading_a_foreign_or_header_cut_csv_is_one_clear_error(tmp_path, capsys):
    foreign = tmp_path / "notes.csv"
    foreign.write_text("id,agent\n007,bond\n")
    with pytest.raises(LeaderboardFileError, match="not a leaderboard written by sscb"):
        read_leaderboard(foreign)
    board = tmp_path / "board.csv"
    append_rows(board, _rows())
    cut = tmp_path / "cut.csv"
    cut.write_bytes(board.read_bytes()[:150])  # inside the header line: no row survives
    assert b"\n" not in cut.read_bytes()
    with pytest.raises(LeaderboardFileError, match="ends inside its header line"):
        read_leaderboard(cut)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert main(["leaderboard", str(empty)]) == 1
    assert "holds no rows yet" in capsys.readouterr().err


def test_rows_of_one_configuration_on_different_data_are_never_averaged(tmp_path):
    from ssl_cluster_bench.leaderboard import aggregate, to_markdown

    board = tmp_path / "board.csv"
    old = [{**r, "cache_key": "b--imgs--all--aaaaaaaaaaaa", "acc": 0.9} for r in _rows()]
    # a run id names its cache entry, so runs on the new data have their own
    new = [{**r, "cache_key": "b--imgs--all--bbbbbbbbbbbb", "acc": 0.5, "run_id": "b" + r["run_id"][1:]}
           for r in _rows()]
    append_rows(board, old + new)
    agg = aggregate(read_leaderboard(board))
    assert sorted(agg["acc_mean"]) == pytest.approx([0.5, 0.9])  # two configurations, not one 0.7 ± 0.22
    assert list(agg["acc_std"]) == pytest.approx([0.0, 0.0])
    table = to_markdown(agg)
    assert "cache entry" in table and "aaaaaaaaaaaa" in table and "bbbbbbbbbbbb" in table
    # one entry per configuration: no extra column
    assert "cache entry" not in to_markdown(aggregate(read_leaderboard(board).iloc[:3]))


def test_a_run_stored_twice_counts_once_in_the_mean_and_std(tmp_path):
    """A committed leaderboard re-run on a fresh clone (no assignments there) stores each run id again: the
    repeat is the same run, not another seed, so the std must be that of the distinct runs."""
    from ssl_cluster_bench.leaderboard import aggregate

    board = tmp_path / "board.csv"
    rows = _rows(seeds=(0, 1, 2))  # acc 0.5, 0.6, 0.7: std 0.1
    append_rows(board, rows)
    append_rows(board, [{**r, "acc": r["acc"] + 0.001} for r in rows])  # the re-run, written last
    agg = aggregate(read_leaderboard(board))
    assert len(agg) == 1 and agg.loc[0, "n_seeds"] == 3
    assert agg.loc[0, "acc_mean"] == pytest.approx(0.601)  # the last copy of each run
    assert agg.loc[0, "acc_std"] == pytest.approx(0.1)  # over 6 rows with duplicates it would be 0.089
