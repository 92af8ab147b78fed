"""End-to-end: feature import -> cache -> PCA -> k-means -> metrics -> leaderboard, via API and CLI."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

import ssl_cluster_bench as sscb
from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import COLUMNS, read_leaderboard


@pytest.fixture()
def digits_npy(tmp_path):
    X, y = load_digits(return_X_y=True)
    np.save(tmp_path / "X.npy", X.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "X.npy", tmp_path / "y.npy"


def test_import_then_cluster_entry_rows(tmp_path, digits_npy):
    entry = sscb.import_features(*digits_npy, backbone="pix", dataset="digits-npy", cache=tmp_path / "c")
    again = sscb.import_features(*digits_npy, backbone="pix", dataset="digits-npy", cache=tmp_path / "c")
    assert again.path == entry.path  # same features -> cache hit
    df = sscb.cluster_entry(entry, seeds=range(3), overcluster=(1.0, 2.0), progress=False)
    assert len(df) == 6 and set(df.n_clusters) == {10, 20}
    assert set(df.columns) <= set(COLUMNS)
    k10 = df[df.n_clusters == 10]
    assert 0.65 < k10.acc.mean() < 0.9
    # overclustering with many-to-one ACC can only help on digits
    assert df[df.n_clusters == 20].acc.mean() > k10.acc.mean()
    assert (df.pca_dim == 64).all()  # 64-d pixels: PCA 256 is capped to the input dim


def test_run_on_imported_features_appends_and_writes_markdown(tmp_path, digits_npy):
    cache = tmp_path / "c"
    sscb.import_features(*digits_npy, backbone="pix", dataset="digits-npy", cache=cache)
    results = tmp_path / "res" / "lb.csv"
    df = sscb.run(["pix"], "digits-npy", results=results, cache=cache,
                  protocol=sscb.Protocol(seeds=2, overcluster=(1.0,)), progress=False)
    assert len(df) == 2
    lb = read_leaderboard(results)
    assert len(lb) == 2 and lb.backbone.tolist() == ["pix", "pix"]
    md = (tmp_path / "res" / "lb.md").read_text()
    assert "| pix " in md and "±" in md
    sscb.run(["pix"], "digits-npy", results=results, cache=cache, protocol={"seeds": 1, "overcluster": [1.5]},
             progress=False)
    assert len(read_leaderboard(results)) == 3


def test_bad_inputs_write_nothing(tmp_path, digits_npy):
    cache = FeatureCache(tmp_path / "c")
    results = tmp_path / "lb.csv"
    with pytest.raises(ValueError, match="lengths must match"):
        sscb.import_features(np.ones((5, 3)), np.zeros(4), "x", "d", cache=cache)
    with pytest.raises(ValueError, match="NaN"):
        sscb.import_features(np.array([[np.nan, 1.0]] * 3), np.zeros(3), "x", "d", cache=cache)
    assert cache.entries() == []
    entry = sscb.import_features(np.random.rand(5, 3), np.arange(5), "x", "d", cache=cache)
    with pytest.raises(ValueError, match="exceeds"):
        sscb.run(["x"], "d", results=results, cache=cache, protocol=sscb.Protocol(overcluster=(2.0,)),
                 progress=False)
    assert not results.exists()
    with pytest.raises(ValueError, match="unknown dataset"):
        sscb.run(["pixels"], "not-a-dataset", results=results, cache=cache, progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        sscb.cluster_entry(entry, methods=["nope"])
    assert not results.exists()


def test_cli_import_run_leaderboard(tmp_path, digits_npy, capsys):
    cache = str(tmp_path / "c")
    results = str(tmp_path / "lb.csv")
    assert main(["import-features", "--features", str(digits_npy[0]), "--labels", str(digits_npy[1]),
                 "--backbone", "pix", "--dataset", "dg", "--cache-dir", cache]) == 0
    assert main(["-q", "run", "--backbones", "pix", "--dataset", "dg", "--cache-dir", cache, "--seeds", "2",
                 "--overcluster", "1", "--results", results]) == 0
    out = capsys.readouterr().out
    assert "2 rows appended" in out
    assert main(["leaderboard", results]) == 0
    assert "| pix " in capsys.readouterr().out
    assert main(["leaderboard", str(tmp_path / "missing.csv")]) == 1
    assert "no leaderboard" in capsys.readouterr().err
    assert main(["-q", "run", "--backbones", "pix", "--dataset", "dg", "--cache-dir", cache,
                 "--results", str(tmp_path / "lb.csv" / "x.csv")]) == 1
    assert "not writable" in capsys.readouterr().err
