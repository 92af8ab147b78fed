"""The protocol record, the method registry and the predictions store."""
import numpy as np
import pytest

import ssl_cluster_bench as sscb
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import COLUMNS, read_leaderboard
from ssl_cluster_bench.methods import ClusteringMethod, MethodInputs, get_method, list_methods, register_method
from ssl_cluster_bench.predictions import load_predictions, save_predictions
from ssl_cluster_bench.protocol import KMeansSettings, Protocol, resolve_protocol


def test_protocol_yaml_round_trip_and_hash(tmp_path):
    p = Protocol(methods=("kmeans", "scan"), seeds=3, pca_dim=None, kmeans={"backend": "sklearn", "n_iter": 4},
                 method_options={"scan": {"n_neighbors": 10}})
    assert p.seeds == (0, 1, 2) and isinstance(p.kmeans, KMeansSettings) and p.kmeans.n_iter == 4
    path = tmp_path / "p.yaml"
    p.to_yaml(path)
    text = path.read_text()
    assert "seeds: 3" in text and "n_neighbors: 10" in text
    q = Protocol.from_yaml(path)
    assert q == p and q.hash == p.hash and len(p.hash) == 12
    assert p.replace(seeds=4).hash != p.hash
    assert Protocol(seeds=(3, 7)).to_dict()["seeds"] == [3, 7]


def test_row_hash_depends_only_on_what_the_row_depends_on():
    base = Protocol()
    # more seeds, more k values or another method beside it do not change an existing row's configuration
    assert base.replace(seeds=9, overcluster=(1.0, 2.0), methods=("kmeans", "scan")).row_hash("kmeans") \
        == base.row_hash("kmeans")
    assert base.replace(pca_dim=32).row_hash("kmeans") != base.row_hash("kmeans")
    assert base.replace(kmeans={"n_iter": 5}).row_hash("kmeans") != base.row_hash("kmeans")
    # k-means settings are not part of a SCAN row, SCAN's options are
    assert base.replace(kmeans={"n_iter": 5}).row_hash("scan") == base.row_hash("scan")
    assert base.replace(method_options={"scan": {"epochs": 3}}).row_hash("scan") != base.row_hash("scan")
    assert base.replace(method_options={"scan": {"epochs": 3}}).row_hash("kmeans") == base.row_hash("kmeans")


@pytest.mark.parametrize("fields, message", [
    ({"seeds": 0}, "seeds must be a count >= 1"),
    ({"overcluster": [0.0]}, "overcluster factors must be positive"),
    ({"n_clusters": [1]}, "n_clusters must be a list of integers >= 2"),
    ({"pca_dim": 0}, "pca_dim must be a positive integer"),
    ({"methods": []}, "non-empty"),
    ({"methods": ["kmeans", "kmeans"]}, "twice"),
    ({"kmeans": {"backend": "cuml"}}, "backend must be"),
    ({"kmeans": {"n_init": 0}}, "n_init must be an integer >= 1"),
    ({"method_options": {"scan": 3}}, "method_options must map"),
    ({"sedes": 3}, r"unknown protocol field\(s\) \['sedes'\]"),
])
def test_protocol_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        Protocol.from_dict(fields)


def test_resolve_protocol_sources(tmp_path):
    assert resolve_protocol() == Protocol()
    assert resolve_protocol({"seeds": 2}, pca_dim=8) == Protocol(seeds=2, pca_dim=8)
    bad = tmp_path / "bad.yaml"
    bad.write_text("seeds: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        resolve_protocol(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_protocol(tmp_path / "missing.yaml")


def test_registry_lookup_and_errors():
    assert list_methods()[:5] == ["kmeans", "scan", "scan+selflabel", "mmdc", "twostage"]
    assert get_method("scan").name == "scan"
    with pytest.raises(ValueError, match="unknown method 'scna'. Did you mean scan"):
        get_method("scna")
    with pytest.raises(ValueError, match="already registered"):
        register_method("kmeans")(type("Other", (ClusteringMethod,), {}))


def test_a_new_method_is_one_class_and_one_registry_line():
    @register_method("test-first-feature-sign")
    class FirstFeatureSign(ClusteringMethod):
        """Two clusters: the sign of the first reduced feature (a rule worked out by hand)."""

        def fit(self, inputs):
            self.labels_ = (np.asarray(inputs.reduced)[:, 0] > 0).astype(np.int64)
            self.probs_, self.degenerate_, self.score_, self.flag_ = None, False, None, ""
            self.config_ = {"pca_dim": inputs.reduced.shape[1]}
            return self

    try:
        x = np.array([[-2.0, 0.1], [-1.0, -0.1], [1.0, 0.2], [2.0, -0.2]])
        y = np.array([0, 0, 1, 1])
        df = sscb.cluster_features(x, y, methods=("test-first-feature-sign",), n_clusters=(2,), seeds=1,
                                   pca_dim=None, progress=False)
        # PCA keeps the dominant axis; its sign is arbitrary, the partition is not
        assert df.acc.tolist() == [1.0] and df.method.tolist() == ["test-first-feature-sign"]
        assert df.run_id.str.len().tolist() == [16]
    finally:
        from ssl_cluster_bench import methods

        methods._REGISTRY.pop("test-first-feature-sign")


def test_inputs_are_derived_once():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5)).astype(np.float32)
    inputs = MethodInputs(x, Protocol(pca_dim=3), progress=False)
    assert inputs.reduced is inputs.reduced and inputs.reduced.shape == (60, 3)
    nb = inputs.neighbors(4)
    assert nb.shape == (60, 4) and inputs.neighbors(4) is nb


def test_kmeans_rows_say_how_they_were_made():
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    p = Protocol(overcluster=(1.0,), seeds=2, kmeans={"n_iter": 7, "max_points_per_centroid": 64})
    df = sscb.cluster_features(x.astype(np.float32), y, p, progress=False)
    assert set(df.columns) <= set(COLUMNS)
    assert (df.kmeans_iter == 7).all() and (df.max_points_per_centroid == 64).all() and (df.n_init == 10).all()
    assert (df.protocol_hash == p.row_hash("kmeans")).all() and df.run_id.nunique() == 2
    assert (df.score > 0).all()  # inertia per row, label-free
    # the saved assignment is the one that was scored
    for run_id, acc in zip(df.run_id, df.acc):
        pred = df.attrs["predictions"][run_id]
        assert sscb.cluster_accuracy(y, pred) == pytest.approx(acc)


def test_predictions_store(tmp_path):
    results = tmp_path / "res" / "lb.csv"
    labels = np.array([3, 0, 2, -1, 999])
    path = save_predictions(results, "0123456789abcdef", labels)
    assert path.parent == tmp_path / "res" / "predictions" and np.load(path).dtype == np.int16
    assert load_predictions(results, "0123456789abcdef").tolist() == labels.tolist()
    assert np.load(save_predictions(results, "0123456789abcdee", np.array([70000]))).dtype == np.int32
    with pytest.raises(ValueError, match="16 hex"):
        save_predictions(results, "../escape", labels)
    with pytest.raises(FileNotFoundError, match="no predictions for run"):
        load_predictions(results, "ffffffffffffffff")
    assert sorted(p.name for p in path.parent.iterdir()) == ["0123456789abcdee.npy", "0123456789abcdef.npy"]


def test_cli_protocol_file_and_flags_save_predictions(tmp_path, capsys):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    np.save(tmp_path / "X.npy", x.astype(np.float32))
    np.save(tmp_path / "y.npy", y)
    cache, results = str(tmp_path / "c"), tmp_path / "lb.csv"
    assert main(["import-features", "--features", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy"),
                 "--backbone", "pix", "--dataset", "dg", "--cache-dir", cache]) == 0
    protocol = tmp_path / "p.yaml"
    Protocol(overcluster=(1.0,), seeds=3, pca_dim=16).to_yaml(protocol)
    # the file gives k, pca_dim and seeds; the flag overrides only the seeds
    assert main(["-q", "run", "--backbones", "pix", "--dataset", "dg", "--cache-dir", cache, "--protocol",
                 str(protocol), "--seeds", "2", "--results", str(results)]) == 0
    lb = read_leaderboard(results)
    assert lb.seed.tolist() == [0, 1] and (lb.pca_dim == 16).all() and (lb.n_clusters == 10).all()
    expected = Protocol(overcluster=(1.0,), seeds=2, pca_dim=16).row_hash("kmeans")
    assert (lb.protocol_hash == expected).all()
    for run_id, acc in zip(lb.run_id, lb.acc):
        assert sscb.cluster_accuracy(y, load_predictions(results, run_id)) == pytest.approx(acc)
    capsys.readouterr()
    assert main(["methods"]) == 0
    assert "scan+selflabel" in capsys.readouterr().out
