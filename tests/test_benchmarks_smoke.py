"""Smoke tests of the scale benchmarks (benchmarks/*.py) at tiny sizes: outputs are sane, not timings."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.reduce import PCA

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


synthetic = _load("synthetic")


def _env():
    """This checkout's package first on the path, so a benchmark never imports an installed copy."""
    import os

    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent), str(BENCH)])}


def _run(script, *args):
    done = subprocess.run([sys.executable, str(BENCH / script), "--no-progress", *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=_env())
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_class_sizes_match_imagenet():
    sizes = synthetic.class_sizes(1_281_167, 1000)
    assert sizes.sum() == 1_281_167 and sizes.min() == 732 and sizes.max() == 1300
    assert 900 <= (sizes == 1300).sum() < 1000  # most classes full, a tail below the cap
    small = synthetic.class_sizes(5000, 20)
    assert small.sum() == 5000 and small.min() < small.max()
    with pytest.raises(ValueError, match="n_samples"):
        synthetic.class_sizes(10, 20)


def test_generator_is_seeded_sliceable_and_streams_into_the_cache(tmp_path):
    g = synthetic.GaussianMixtureFeatures(40_000, 32, 10, seed=3)
    whole = g[0:40_000]
    # rows do not depend on how the array is sliced (blocks straddle the generation chunks)
    np.testing.assert_array_equal(g[16_000:16_500], whole[16_000:16_500])
    np.testing.assert_array_equal(synthetic.GaussianMixtureFeatures(40_000, 32, 10, seed=3)[5:9], whole[5:9])
    assert not np.array_equal(synthetic.GaussianMixtureFeatures(40_000, 32, 10, seed=4)[5:9], whole[5:9])
    np.testing.assert_array_equal(np.bincount(g.labels), g.sizes)
    # classes are separated but overlapping: nearest-mean assignment is good, not perfect
    d2 = ((whole[:, None, :] - g.means[None]) ** 2).sum(-1)
    assert 0.5 < np.mean(d2.argmin(1) == g.labels) < 1.0
    with pytest.raises(TypeError, match="slices"):
        g[[1, 2]]
    entry = g.write_to_cache(FeatureCache(tmp_path), batch_size=7000, progress=False)
    assert entry.count == 40_000 and entry.features.dtype == np.float16
    np.testing.assert_array_equal(entry.labels, g.labels)
    np.testing.assert_allclose(entry.features[12_345:12_400], whole[12_345:12_400].astype(np.float16))


def test_pca_streaming_releases_memmap_pages(tmp_path):
    path = tmp_path / "features.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(65_536, 512))
    rows[:] = np.random.default_rng(0).normal(size=(65_536, 512)).astype(np.float16)
    del rows
    features = np.load(path, mmap_mode="r")  # 64 MiB file, kept mapped while we measure
    process = psutil.Process()
    before = process.memory_info().rss
    PCA(8, batch_size=4096, progress=False).fit(features)
    grown = process.memory_info().rss - before
    assert grown < 24 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB: the memmap pages were not released"


def test_scale_imagenet_small_keeps_then_reuses_and_deletes(tmp_path):
    out = tmp_path / "scale.json"
    args = ["--n", 5000, "--dim", 64, "--classes", 20, "--pca-dim", 32, "--workdir", tmp_path, "--json", out]
    stdout = _run("scale_imagenet.py", *args, "--keep")
    assert "pipeline wall time" in stdout and "| k-means k=20" in stdout
    result = json.loads(out.read_text())
    assert [r["k"] for r in result["results"]] == [20, 30]
    for r in result["results"]:
        assert 0.5 < r["acc"] <= 1.0 and 0.7 < r["nmi"] <= 1.0 and 0.0 < r["ari"] <= 1.0
        assert r["empty_clusters"] == 0
    assert result["checks"]["time_ok"] and result["checks"]["rss_ok"]
    assert result["stages"][0]["stage"].startswith("generate")
    assert (tmp_path / "sscb-scale-cache").is_dir()  # --keep
    first_acc = [r["acc"] for r in result["results"]]

    _run("scale_imagenet.py", *args)
    again = json.loads(out.read_text())
    assert again["stages"][0]["stage"] == "reuse cached entry"
    assert [r["acc"] for r in again["results"]] == first_acc  # same seed, same numbers
    assert not (tmp_path / "sscb-scale-cache").exists()  # deleted without --keep


def test_reference_vs_ours_small_prints_ratio(tmp_path):
    out = tmp_path / "ref.json"
    stdout = _run("reference_vs_ours.py", "--quick", "--epochs", 3, "--ours", "10:64", "--json", out)
    assert "wall-time ratio reference / ours" in stdout
    result = json.loads(out.read_text())
    names = [r["pipeline"] for r in result["rows"]]
    # 20 clusters on 5000 rows: the budget leaves room for 10 restarts, so they are k-means++ seeded
    fast = "ours (n_init=10, init=k-means++, n_iter=10, max_points_per_centroid=64)"
    assert names == [fast, "reference", fast]
    for r in result["rows"]:
        assert 0.3 < r["acc"] <= 1.0 and r["n"] == 5000 and r["k"] == 20 and r["total_s"] > 0
    (comparison,) = result["comparisons"]
    assert comparison["ratio"] > 0 and comparison["same_labels_both_runs"]
    assert comparison["ratio"] == pytest.approx(
        result["rows"][1]["total_s"] / comparison["ours_total_s_mean"], rel=0.05)


def test_metrics_scale_small_agrees_with_sklearn(tmp_path):
    out = tmp_path / "metrics.json"
    stdout = _run("metrics_scale.py", "--quick", "--json", out)
    assert "faster" in stdout and "issue 2" in stdout
    result = json.loads(out.read_text())
    checks = result["checks"]
    assert checks["small_cases_equal"] and checks["full_size_equal"] and checks["acc_ok"]
    assert checks["ami_speedup"] > 1.0
    acc = result["rows"][0]["acc"]
    # 60% of each class kept together + the random 40% that lands in the right cluster by chance
    assert acc == pytest.approx(0.6 + 0.4 / 100, abs=0.015)


def _run_repo(script, *args):
    done = subprocess.run([sys.executable, str(BENCH / script), *map(str, args)], capture_output=True, text=True,
                          timeout=300, env=_env())
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a target not met at smoke size
    return done.stdout


def test_kmeans_stability_and_cost_small(tmp_path):
    out = tmp_path / "stability.json"
    stdout = _run_repo("kmeans_stability.py", "--quick", "--json", out)
    rows = json.loads(out.read_text())["rows"]
    assert {r["kmeans"] for r in rows} >= {"ours (defaults)", "sklearn KMeans(n_init=10)"}
    ours = [r for r in rows if r["kmeans"] == "ours (defaults)"]
    assert [r["k"] for r in ours] == [10, 15] and all(r["acc_mean"] > 0.75 for r in ours)
    assert "n_init=10" in ours[0]["resolved"] and "digits k=10 acc_mean" in stdout
    out = tmp_path / "cost.json"
    _run_repo("kmeans_cost.py", "--quick", "--reps", "1", "--json", out)
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 2 and result["ratio_new_over_old"] > 0


def test_cache_verify_smoke(tmp_path):
    out_json = tmp_path / "verify.json"
    out = _run("cache_verify.py", "--n", 3000, "--dim", 16, "--classes", 10, "--repeats", 1,
               "--workdir", tmp_path, "--json", out_json)
    rows = json.loads(out_json.read_text())["rows"]
    assert len(rows) == 10 and "full sha256 check" in out
    fast = [r for r in rows if "fast path" in r["step"]]
    assert all(r["seconds"] < 1.0 for r in fast)
    assert not (tmp_path / "sscb-verify-cache").exists()  # deleted without --keep



def test_turtle_step_and_label_free_smoke(tmp_path):
    out = tmp_path / "step.json"
    stdout = _run("turtle_step.py", "--quick", "--json", out)
    rows = json.loads(out.read_text())
    assert [r["dim"] for r in rows] == [64, 512] and "ratio before/after" in stdout
    assert all(r["(rᵀ·z)ᵀ ms"] > 0 and r["outer step now, s"] > 0 for r in rows)
    # the label-free table over the committed digits leaderboard
    table = tmp_path / "criteria.json"
    stdout = _run("label_free.py", BENCH.parent / "results" / "leaderboard.csv", "--json", table)
    lines = json.loads(table.read_text())
    assert "Spearman ρ with ACC" in stdout
    assert any(r["criterion"] == "silhouette" and r["scope"] == "all methods" for r in lines)


def test_fingerprint_cost_runs_and_reports_every_step(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    out = tmp_path / "rows.json"
    assert _load("fingerprint_cost").main(["--quick", "--workdir", str(tmp_path), "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["step"].split(" ")[0] for r in rows] == ["names", "all", "stat:", "content,", "content,", "indexing"]
    assert all(r["seconds"] > 0 for r in rows) and rows[0]["× names only"] == 1
    assert "| stat: path, size, mtime" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [out]  # the synthetic tree is deleted


def test_k_auto_smoke():
    # digits pixels read through the feature cache; one row per method × seed, each criterion's k within 2..20
    out = _run("k_auto.py", "--quick")
    assert out.startswith("digits, pixels (1,797 × 64)")
    row = next(line for line in out.splitlines() if line.startswith("| pca"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "kmeans" and all(2 <= int(k) <= 20 for k in cells[3:6])


def test_peer_method_limits_smoke():
    # every (method, size) measured in its own process, extrapolated to the method's limit and to ImageNet
    out = _run("peer_method_limits.py", "--quick")
    rows = [line for line in out.splitlines() if line.startswith("| agglomerative")]
    assert len(rows) == 2 and all("timeout" not in r and "40000" in r for r in rows)


def test_peer_protocol_smoke_prints_the_table_and_resumes_from_its_csv(tmp_path, monkeypatch):
    # zscore+pca stands in for UMAP here (UMAP's numba compilation alone takes ~35 s per process)
    monkeypatch.setenv("SSCB_CACHE_DIR", str(tmp_path / "cache"))
    csv = tmp_path / "peer.csv"
    args = ["--smoke", "--no-progress", "--space", "zscore+pca", "--csv", str(csv)]
    done = subprocess.run([sys.executable, str(BENCH / "peer_protocol.py"), *args], capture_output=True, text=True,
                          timeout=120, env={**_env(), "SSCB_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout + done.stderr
    table = [[c.strip() for c in line.strip("|").split("|")] for line in done.stdout.splitlines()
             if line.startswith("| digits")]
    configs = ["kmeans (PCA)", "zscore+pca + agglomerative", "zscore+pca + HDBSCAN"]
    assert [r[2] for r in table] == configs + ["Spearman ρ with AMI"] * 5
    assert all(r[3] == "2" and 0 < float(r[4].split(" ± ")[0]) <= 1 for r in table[:3])
    assert [r[1] for r in table[3:]] == ["all: 6 rows", "k = #classes: 4 rows"] + [f"within {c}: 2 rows"
                                                                                   for c in configs]
    assert all(-1 <= float(v) <= 1 for r in table[3:5] for v in r[-2:])  # within: 2 rows may tie (nan)
    # a rerun (in this process: the script's own run was checked above) keeps the rows the CSV holds (seed 0,
    # marked) and makes only the missing ones (seed 1)
    rows = pd.read_csv(csv)
    rows.loc[rows["seed"] == 0, "ami"] = 0.5
    rows[rows["seed"] == 0].to_csv(csv, index=False)
    table = _load("peer_protocol").main(args)
    kept = pd.read_csv(csv)
    assert len(kept) == 6 and (kept.loc[kept["seed"] == 0, "ami"] == 0.5).all()
    seed1 = kept[kept["seed"] == 1].set_index("config")["ami"]
    assert sorted(seed1.index) == sorted(table["configuration"][:3]) and (seed1 != 0.5).all()
    # the table is computed from the CSV's rows: the marked seed 0 is in the kmeans mean
    assert table["AMI"].iloc[0].startswith(f"{(0.5 + seed1['kmeans (PCA)']) / 2:.3f} ± ")
