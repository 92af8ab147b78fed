import numpy as np
import pytest

from ssl_cluster_bench.leaderboard import COLUMNS, aggregate, append_rows, check_writable, read_leaderboard, to_markdown


def _rows(backbone="a", accs=(0.5, 0.7)):
    return [{"backbone": backbone, "dataset": "digits", "split": "all", "method": "kmeans", "n_clusters": 10,
             "seed": s, "acc": a, "nmi": a / 2, "ami": a / 3, "ari": a / 4} for s, a in enumerate(accs)]


def test_append_never_rewrites_existing_rows(tmp_path):
    path = tmp_path / "r" / "lb.csv"
    assert append_rows(path, _rows("a")) == 2
    before = path.read_bytes()
    append_rows(path, _rows("b", (0.9,)))
    after = path.read_bytes()
    assert after.startswith(before)
    df = read_leaderboard(path)
    assert list(df.columns) == COLUMNS and len(df) == 3


def test_failed_append_keeps_file(tmp_path):
    path = tmp_path / "lb.csv"
    append_rows(path, _rows())
    before = path.read_bytes()
    with pytest.raises(ValueError, match="unknown columns"):
        append_rows(path, [{"backbone": "x", "bogus": 1}])
    with pytest.raises(ValueError, match="required"):
        append_rows(path, [{"backbone": "x"}])
    assert path.read_bytes() == before


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        append_rows(blocker / "lb.csv", _rows())


def test_aggregate_mean_std_from_rows(tmp_path):
    path = tmp_path / "lb.csv"
    append_rows(path, _rows("a", (0.5, 0.7)) + _rows("b", (0.8, 0.8, 0.8)))
    agg = aggregate(read_leaderboard(path))
    a = agg[agg.backbone == "a"].iloc[0]
    assert a.acc_mean == pytest.approx(0.6) and a.acc_std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert a.n_seeds == 2
    assert list(agg.backbone) == ["b", "a"]  # best first
    md = to_markdown(agg)
    assert "60.0 ± 14.1" in md and "| b " in md


def test_check_writable_makes_no_file_or_folder(tmp_path):
    check_writable(tmp_path / "new" / "sub" / "lb.csv")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "lb.csv.lock").write_text("")
    check_writable(tmp_path / "lb.csv")  # an existing lock file is opened, not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lb.csv.lock"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        check_writable(blocker / "sub" / "lb.csv")
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir()) == ["file", "lb.csv.lock"]


def test_refused_run_leaves_nothing_beside_a_new_results_path(tmp_path, capsys):
    from ssl_cluster_bench.cli import main

    results = tmp_path / "typo" / "lb.csv"
    assert main(["-q", "run", "--backbones", "pixels", "--dataset", str(tmp_path / "no-such-images"),
                 "--cache-dir", str(tmp_path / "cache"), "--results", str(results)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no-such-images" in err
    assert not (tmp_path / "typo").exists()
