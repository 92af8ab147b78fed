"""Lowe et al.'s protocol on our pipeline: reducers in the protocol, the methods of their study, the metrics they
report, noise scoring and unknown k (issue 23, items 1-4)."""
import os

import numpy as np
import pandas as pd
import pytest
from sklearn import cluster as skc
from sklearn import metrics as skm
from sklearn.decomposition import PCA as SkPCA
from sklearn.preprocessing import StandardScaler

from ssl_cluster_bench.api import cluster_features
from ssl_cluster_bench.leaderboard import COLUMNS, OLDER_COLUMNS, aggregate, append_rows, read_leaderboard, to_markdown
from ssl_cluster_bench.methods import MethodInputs, get_method, list_methods
from ssl_cluster_bench.metrics import evaluate, evaluate_with_noise, label_free
from ssl_cluster_bench.protocol import Protocol
from ssl_cluster_bench.reduce import reduce_features


def _blobs(n_per=40, centers=4, dim=6, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=6.0, size=(centers, dim))
    y = np.repeat(np.arange(centers), n_per)
    return (means[y] + rng.normal(scale=spread, size=(y.size, dim))).astype(np.float32), y


# --- 1. reducers in the protocol ----------------------------------------------------------------------------------
def test_default_protocol_hash_is_the_one_committed_rows_carry():
    # results/leaderboard.csv was written under these: a new field must not move them
    assert Protocol().hash == "f18ea447efec"
    assert Protocol().row_hash("kmeans") == "2b3b8f1e9b2a"
    assert Protocol(reduce="pca").to_dict() == Protocol().to_dict()
    base = Protocol()
    hashes = {r: base.replace(reduce=r).row_hash("kmeans") for r in ("pca", "zscore+pca", "umap", "none")}
    assert len(set(hashes.values())) == 4  # rows of different reductions never average together
    umap = base.replace(reduce="umap")
    assert umap.reduce_options == {"n_components": 50, "n_neighbors": 30, "min_dist": 0.0, "metric": "euclidean"}
    assert base.replace(reduce="umap", reduce_options={"metric": "cosine"}).row_hash("kmeans") != umap.row_hash("kmeans")
    assert Protocol.from_dict(umap.to_dict()) == umap  # YAML round trip keeps the reducer and its settings


@pytest.mark.parametrize("fields, message", [
    ({"reduce": "umpa"}, r"reduce must be one of pca, zscore\+pca, umap, none, got 'umpa' \(did you mean 'umap'\?\)"),
    ({"reduce": "umap", "reduce_options": {"n_neighbours": 5}},
     r"reduce_options: unknown option 'n_neighbours' for reduce umap \(did you mean 'n_neighbors'\?\)"),
    ({"reduce": "pca", "reduce_options": {"n_components": 5}}, "pca takes no options"),
    ({"reduce": "umap", "reduce_options": {"min_dist": 2}}, r"reduce_options.min_dist must be a number in \[0, 1\]"),
    ({"k_grid": [5, 10]}, "k_grid is used only with n_clusters: auto"),
    ({"n_clusters": "auto", "k_criterion": "silhouete"}, "did you mean 'silhouette'"),
    ({"n_clusters": "many"}, "n_clusters must be a list of integers >= 2 or \"auto\""),
    ({"method_options": {"agglomerative": {"linkage": "wards"}}},
     r"method_options.agglomerative.linkage must be 'ward', 'complete', 'average' or 'single', got 'wards' "
     r"\(did you mean 'ward'\?\)"),
    ({"method_options": {"agglomerative": {"distance_threshold": -1.0}}},
     "method_options.agglomerative.distance_threshold must be None or a number > 0"),
    ({"method_options": {"hdbscan": {"min_cluster_size": 1.5}}}, "min_cluster_size must be an integer"),
    ({"method_options": {"affinity": {"damping": 0.2}}}, r"method_options.affinity.damping must be in \[0.5, 1\)"),
])
def test_protocol_refuses_bad_reducer_and_k_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        Protocol.from_dict(fields)


def test_zscore_pca_equals_standard_scaler_then_pca():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(500, 12)) * rng.uniform(0.1, 50, size=12)).astype(np.float32)
    x[:, 3] = 7.0  # a constant column: left unscaled, as StandardScaler does
    ours = reduce_features(x, Protocol(reduce="zscore+pca", pca_dim=5), progress=False)
    ref = SkPCA(5).fit_transform(StandardScaler().fit_transform(x.astype(np.float64)))
    signs = np.sign((ours * ref).sum(axis=0))
    # ddof 1 (ours) vs 0 (StandardScaler) scales every column by sqrt((n-1)/n)
    np.testing.assert_allclose(ours * signs, ref * np.sqrt(499 / 500), atol=2e-4)
    assert reduce_features(x, Protocol(reduce="none"), progress=False).shape == (500, 12)


@pytest.mark.skipif(not os.environ.get("SSCB_SLOW_TESTS"), reason="UMAP's numba compilation takes ~35 s per process; "
                                                                    "SSCB_SLOW_TESTS=1 runs it")
def test_umap_reducer_is_seeded_by_the_row_seed():
    x, y = _blobs(n_per=60)
    p = Protocol(reduce="umap", reduce_options={"n_components": 3, "n_neighbors": 15}, seeds=2)
    inputs = MethodInputs(x, p, progress=False)
    a, b = inputs.reduced_for(0), inputs.reduced_for(1)
    assert a.shape == (240, 3) and not np.allclose(a, b)
    np.testing.assert_array_equal(reduce_features(x, p, random_state=0, progress=False), a)
    df = cluster_features(x, y, p, methods=("kmeans",), n_clusters=(4,), progress=False)
    assert (df["reduce"] == "umap").all() and (df["pca_dim"] == 3).all() and df["ami"].min() > 0.95


# --- 2. methods ---------------------------------------------------------------------------------------------------
def test_new_methods_are_registered():
    assert {"agglomerative", "hdbscan", "spectral", "affinity"} <= set(list_methods())


@pytest.mark.parametrize("name, options, reference", [
    ("agglomerative", {}, lambda z: skc.AgglomerativeClustering(4).fit(z)),
    ("agglomerative", {"linkage": "average"}, lambda z: skc.AgglomerativeClustering(4, linkage="average").fit(z)),
    ("agglomerative", {"distance_threshold": 30.0},
     lambda z: skc.AgglomerativeClustering(None, distance_threshold=30.0).fit(z)),
    ("hdbscan", {"min_cluster_size": 10}, lambda z: skc.HDBSCAN(min_cluster_size=10).fit(z)),
    ("spectral", {}, lambda z: skc.SpectralClustering(4, affinity="nearest_neighbors", n_neighbors=10,
                                                      random_state=3).fit(z)),
    ("affinity", {"damping": 0.9}, lambda z: skc.AffinityPropagation(damping=0.9, max_iter=1000,
                                                                     random_state=3).fit(z)),
])
def test_method_equals_scikit_learn_on_the_same_reduced_features(name, options, reference):
    x, y = _blobs()
    p = Protocol(methods=(name,), pca_dim=4, method_options={name: options})
    inputs = MethodInputs(x, p, progress=False)
    est = get_method(name).from_protocol(p, 4, 3).fit(inputs)
    ref = reference(inputs.reduced_for(3))
    np.testing.assert_array_equal(est.labels_, ref.labels_)
    assert est.config_["reduce"] == "pca" and est.config_["pca_dim"] == 4


def test_hdbscan_noise_is_scored_both_ways_hand_checked():
    y_true = np.array([0, 0, 0, 1, 1, 1])
    y_pred = np.array([0, 0, -1, 1, 1, -1])
    s = evaluate_with_noise(y_true, y_pred)
    assert s["noise_fraction"] == pytest.approx(2 / 6)
    # noise as one more cluster: clusters {0,0}, {1,1}, noise {0,1}; the noise cluster goes to a majority class
    # (1 of its 2 points right), so 5 of 6 are right
    assert s["acc"] == pytest.approx(5 / 6)
    assert s["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y_true, y_pred), abs=1e-12)
    # noise left out: the four clustered points are perfectly clustered
    for m in ("acc", "nmi", "ami", "ari"):
        assert s[f"{m}_clustered"] == pytest.approx(1.0, abs=1e-12)
    assert "acc_clustered" not in evaluate_with_noise(y_true, np.array([0, 0, 0, 1, 1, 1]))


def test_hdbscan_rows_carry_noise_fraction_and_both_scores():
    x, y = _blobs(n_per=50, spread=0.3)
    x = np.concatenate([x, np.random.default_rng(5).uniform(-20, 20, size=(20, x.shape[1])).astype(np.float32)])
    y = np.concatenate([y, np.arange(20) % 4])
    df = cluster_features(x, y, methods=("hdbscan",), seeds=1, pca_dim=None, progress=False,
                          method_options={"hdbscan": {"min_cluster_size": 10}})
    row = df.iloc[0]
    pred = df.attrs["predictions"][row["run_id"]]
    ref = skc.HDBSCAN(min_cluster_size=10).fit(x).labels_
    noise = ref < 0
    assert noise.any() and row["noise_fraction"] == pytest.approx(noise.mean())
    assert pd.isna(row["n_clusters"]) and row["n_found"] == np.unique(ref[~noise]).size  # no k given: found
    assert row["ami"] == pytest.approx(skm.adjusted_mutual_info_score(y, ref), abs=1e-9)
    assert row["ami_clustered"] == pytest.approx(skm.adjusted_mutual_info_score(y[~noise], ref[~noise]), abs=1e-9)
    assert (pred == ref).all()
    # seeds of one configuration average together even where the number found differs; the table says it
    plain = pd.DataFrame(df.to_dict("records"))  # without attrs (arrays), which pd.concat compares
    two = pd.concat([plain, plain.assign(seed=1, n_found=row["n_found"] + 2, run_id="x")])
    two["backbone"], two["dataset"] = "net", "blobs"
    agg = aggregate(two)
    assert len(agg) == 1 and agg["n_seeds"].iloc[0] == 2
    assert f"{row['n_found'] + 1:.1f} found" in to_markdown(agg)


def test_methods_beyond_their_size_limit_are_refused_before_any_fit(monkeypatch):
    import ssl_cluster_bench.methods as methods

    monkeypatch.setattr(methods, "_available_memory", lambda: 2 ** 40)  # the time limit, whatever the memory
    n = 40001
    x = np.zeros((n, 2), dtype=np.float32)
    x[:, 0] = np.arange(n)
    y = np.arange(n) % 2
    with pytest.raises(ValueError, match=r"agglomerative on 40,001 samples is beyond its measured limit of 40,000 .*"
                                         r"refused before any fit"):
        cluster_features(x, y, methods=("kmeans", "agglomerative"), seeds=1, reduce="none", progress=False)
    # the dense matrices of affinity propagation: refused on memory when it is short
    monkeypatch.setattr(methods, "_available_memory", lambda: 2 ** 30)
    with pytest.raises(ValueError, match=r"affinity on 8,000 samples needs 1.9 GiB for its three dense n × n message "
                                         r"matrices \(half the 1.0 GiB"):
        cluster_features(x[:8000], y[:8000], methods=("affinity",), seeds=1, reduce="none", progress=False)
    with pytest.raises(ValueError, match=r"agglomerative on 20,000 samples needs 3.0 GiB for the pairwise distance "
                                         r"matrix of the linkage tree"):
        cluster_features(x[:20000], y[:20000], methods=("agglomerative",), seeds=1, reduce="none", progress=False)



def test_a_run_refuses_a_method_beyond_its_limit_before_extracting(monkeypatch, tmp_path):
    # At ImageNet size the refusal must come before hours of extraction: the run indexes the dataset's length
    # first (here digits, 1,797 images, against a limit lowered to 1,000) and leaves the cache untouched.
    import ssl_cluster_bench.methods as methods
    from ssl_cluster_bench import api

    monkeypatch.setattr(methods.AgglomerativeMethod, "max_samples", 1000)
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=r"^agglomerative on 1,797 samples is beyond its measured limit of 1,000"):
        api.run(["pixels"], "digits", protocol=Protocol(methods=("kmeans", "agglomerative"), seeds=1),
                results=tmp_path / "lb.csv", cache=cache, progress=False)
    assert not (cache.exists() and any(p.name.startswith("pixels") for p in cache.iterdir()))
    assert not (tmp_path / "lb.csv").exists()


# --- 3. metrics ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n, k, c", [(50, 3, 4), (2000, 17, 10), (300, 1, 3)])
def test_new_metrics_equal_scikit_learn(n, k, c):
    rng = np.random.default_rng(n + k)
    y_true, y_pred = rng.integers(0, c, n), rng.integers(0, k, n)
    y_pred[: n // 2] = y_true[: n // 2]  # some agreement
    s = evaluate(y_true, y_pred)
    assert s["fmi"] == pytest.approx(skm.fowlkes_mallows_score(y_true, y_pred), abs=1e-12)
    h, c_, _ = skm.homogeneity_completeness_v_measure(y_true, y_pred)
    assert s["homogeneity"] == pytest.approx(h, abs=1e-12) and s["completeness"] == pytest.approx(c_, abs=1e-12)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    free = label_free(x, y_pred)
    assert free["calinski_harabasz"] == pytest.approx(skm.calinski_harabasz_score(x, y_pred), rel=1e-5)
    assert free["davies_bouldin"] == pytest.approx(skm.davies_bouldin_score(x, y_pred), rel=1e-5)
    one = label_free(x, np.zeros(n, dtype=int))  # undefined for a single cluster: NaN, not an error
    assert np.isnan(one["calinski_harabasz"]) and np.isnan(one["davies_bouldin"])


def test_rows_carry_the_new_metrics_and_old_leaderboards_still_append(tmp_path):
    x, y = _blobs()
    df = cluster_features(x, y, seeds=1, n_clusters=(4,), pca_dim=4, progress=False)
    row = df.iloc[0].copy()
    row["backbone"], row["dataset"] = "blobs-net", "blobs"
    for m in ("fmi", "homogeneity", "completeness", "calinski_harabasz", "davies_bouldin", "silhouette"):
        assert np.isfinite(row[m])
    assert row["reduce"] == "pca" and row["noise_fraction"] == 0.0 and row["k_criterion"] == ""
    # a leaderboard written with the previous columns is widened, its rows kept
    old = OLDER_COLUMNS[0]
    path = tmp_path / "lb.csv"
    pd.DataFrame([{c: row.get(c) for c in old}]).to_csv(path, index=False, columns=old)
    assert append_rows(path, [row.to_dict()]) == 1
    lb = read_leaderboard(path)
    assert list(lb.columns) == COLUMNS and len(lb) == 2 and lb["fmi"].notna().sum() == 1


def test_rank_by_orders_the_leaderboard_by_that_metric():
    rows = []
    for backbone, acc, ami in (("a", 0.9, 0.5), ("b", 0.8, 0.7)):
        for seed in (0, 1):
            rows.append({"backbone": backbone, "dataset": "d", "split": "all", "method": "kmeans", "n_clusters": 10,
                         "seed": seed, "acc": acc, "ami": ami, "nmi": 0.5, "ari": 0.5})
    df = pd.DataFrame(rows)
    assert list(aggregate(df)["backbone"]) == ["a", "b"]
    agg = aggregate(df, rank_by="ami")
    assert list(agg["backbone"]) == ["b", "a"]
    text = to_markdown(agg)
    header = text.splitlines()[0]
    assert header.index("AMI") < header.index("ACC") and "Rows ranked by AMI" in text
    assert "**70.0 ± 0.0**" in text.splitlines()[2]  # b's AMI is the best
    with pytest.raises(ValueError, match="rank_by must be one of acc, nmi, ami"):
        aggregate(df, rank_by="amy")


# --- 4. unknown k -------------------------------------------------------------------------------------------------
def test_k_auto_picks_the_true_k_on_separated_blobs_and_records_the_curve():
    x, y = _blobs(n_per=40, centers=4)
    df = cluster_features(x, y, methods=("kmeans", "agglomerative", "hdbscan"), n_clusters="auto", seeds=2,
                          pca_dim=4, progress=False)
    for method in ("kmeans", "agglomerative"):
        rows = df[df["method"] == method]
        assert (rows["n_clusters"] == 4).all() and (rows["k_criterion"] == "silhouette").all()
        assert (rows["n_classes"] == 4).all() and len(rows) == 2
        curve = df.attrs["k_curves"][method]
        assert list(curve["k"]) == list(range(2, 9)) and curve.loc[curve["chosen"], "k"].tolist() == [4]
        # the criterion is the silhouette of that k's labeling in the reduced space
        z = MethodInputs(x, Protocol(pca_dim=4), progress=False).reduced
        labels = skc.AgglomerativeClustering(6).fit(z).labels_ if method == "agglomerative" else None
        if labels is not None:
            assert curve.set_index("k").loc[6, "silhouette"] == pytest.approx(skm.silhouette_score(z, labels),
                                                                             rel=1e-5)
    hdb = df[df["method"] == "hdbscan"]
    assert (hdb["k_criterion"] == "method").all() and "hdbscan" not in df.attrs["k_curves"]


def test_cli_run_k_auto_with_peer_methods_writes_rows_and_curves(tmp_path, capsys):
    from ssl_cluster_bench.cli import main

    results = tmp_path / "lb.csv"
    rc = main(["-q", "run", "--backbones", "pixels", "--reduce", "zscore+pca", "--pca-dim", "16", "--methods",
               "kmeans,agglomerative,hdbscan", "--k", "auto", "--k-grid", "9-11", "--seeds", "1", "--rank-by", "ami",
               "--results", str(results), "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr()
    assert rc == 0, out.err
    lb = read_leaderboard(results)
    assert sorted(lb["method"]) == ["agglomerative", "hdbscan", "kmeans"]
    assert set(lb["reduce"]) == {"zscore+pca"} and lb["fmi"].notna().all()
    km = lb[lb["method"] == "kmeans"].iloc[0]
    assert 9 <= km["n_clusters"] <= 11 and km["k_criterion"] == "silhouette" and km["n_classes"] == 10
    curves = sorted((tmp_path / "predictions" / "k_selection").glob("*.csv"))
    assert len(curves) == 2  # kmeans and agglomerative; hdbscan finds its own k
    curve = pd.read_csv(curves[0])
    assert list(curve["k"]) == [9, 10, 11] and curve["chosen"].sum() == 1
    assert "Rows ranked by AMI" in out.out


def test_umap_without_umap_learn_is_refused_where_the_protocol_is_read(monkeypatch, capsys):
    import importlib.util

    from ssl_cluster_bench.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "umap" else real(name, *a))
    with pytest.raises(ValueError, match=r"reduce umap needs the umap-learn package, which is not installed: pip "
                                         r"install 'ssl_cluster_bench\[peer\]'"):
        Protocol(reduce="umap")
    # the CLI says it in one line, before any feature is extracted (no cache dir is made)
    assert main(["run", "--reduce", "umap", "--cache-dir", "/nonexistent/cache", "--results", "/nonexistent/x.csv"]) \
        == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reduce umap needs the umap-learn package" in err[0]


def test_rows_whose_k_was_picked_are_marked_against_each_other_not_per_k():
    rows = [{"backbone": b, "dataset": "d", "split": "all", "method": "kmeans", "n_clusters": k, "seed": 0,
             "acc": acc, "ami": acc, "nmi": acc, "ari": acc, "k_criterion": "silhouette"}
            for b, k, acc in (("a", 9, 0.6), ("b", 12, 0.8))]
    text = to_markdown(aggregate(pd.DataFrame(rows)))
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    # one group (both picked by silhouette): only b is best; per k each would have been "best" alone
    assert "**80.0" in lines[1] and "**" not in lines[2]
