"""Assignments tables: every row's clusters per sample (id, file, cluster, confidence, distance) beside the
leaderboard, from the assignment the run stored for resuming (nothing clustered again)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ssl_cluster_bench as sscb
from ssl_cluster_bench.api import sample_scores
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.predictions import load_predictions


def _class_tree(root, per_class: int = 5):
    rng = np.random.default_rng(1)
    for c, name in enumerate(["dark", "mid", "light"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(40 + 80 * c, 8, (8, 8, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{name}_{i}.png")
    return root


def test_sample_scores_hand_worked():
    # clusters {0: rows 0, 1} (mean (1, 0): each row 1 away), {1: row 2} (its own mean: 0), row 3 noise
    reduced = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [5.0, 5.0]])
    pred = np.array([0, 0, 1, -1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]])
    scores = sample_scores(reduced, pred, probs)
    np.testing.assert_allclose(scores["distance"][:3], [1.0, 1.0, 0.0])
    assert np.isnan(scores["distance"][3])
    np.testing.assert_allclose(scores["confidence"][:3], [0.9, 0.6, 0.7])  # the probability of its own cluster
    assert np.isnan(scores["confidence"][3])
    assert sample_scores(reduced, pred)["confidence"] is None  # k-means: no probabilities


def test_cli_assignments_table_beside_the_leaderboard(tmp_path, capsys):
    data = _class_tree(tmp_path / "shades")
    results, cache = tmp_path / "out" / "lb.csv", tmp_path / "cache"
    args = ["-q", "run", "--backbones", "pixels", "--dataset", "imagefolder", "--data-root", str(data),
            "--cache-dir", str(cache), "--results", str(results), "--seeds", "2", "--overcluster", "1",
            "--pca-dim", "4", "--workers", "0"]
    assert main(args) == 0, capsys.readouterr().err
    assert not (tmp_path / "out" / "assignments").exists()  # only written when asked for
    assert main(args + ["--assignments"]) == 0, capsys.readouterr().err  # the rows are done: tables from storage
    out = capsys.readouterr().out
    assert f"assignments: 2 tables in {tmp_path / 'out' / 'assignments'}" in out
    board = read_leaderboard(results)
    assert len(board) == 2
    ds = sscb.api._dataset("imagefolder", data, None)
    for run_id in board["run_id"]:
        table = pd.read_csv(tmp_path / "out" / "assignments" / f"{run_id}.csv")
        assert list(table.columns) == ["sample_id", "path", "cluster", "distance"]  # k-means: no confidence
        assert list(table["sample_id"]) == [ds.sample_id(i) for i in range(15)] and table["sample_id"][0] == \
            "dark/dark_0.png"
        assert list(table["path"]) == [str(data / s) for s in table["sample_id"]]
        assert (table["cluster"].to_numpy() == load_predictions(results, run_id)).all()
        # the three shades are three clusters, and distance is to each cluster's centre: smallest within it
        assert table.groupby(table["sample_id"].str.split("/").str[0])["cluster"].nunique().eq(1).all()
        assert (table["distance"] >= 0).all() and table["distance"].notna().all()
        # the Python API gives the same table
        pd.testing.assert_frame_equal(sscb.assignment_table(results, run_id, cache).reset_index(drop=True),
                                      table, check_dtype=False, atol=1e-4)


def test_api_assignments_of_a_head_carry_its_confidence(tmp_path):
    # imported features (no dataset to read ids from): the ids are the positions
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(5 * c, 1, (50, 8)) for c in range(3)]).astype(np.float32)
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    sscb.import_features(features, np.repeat(np.arange(3), 50), "blobs-features", "blobs", cache=cache)
    df = sscb.run(["blobs-features"], "blobs", "all", protocol=sscb.Protocol(methods=("kmeans", "scan"), seeds=(0,),
                                                                            overcluster=(1.0,), pca_dim=None),
                  results=results, cache=cache, progress=False, assignments=True)
    assert len(df) == 2 and len(df.attrs["assignments"]) == 2
    for path, method in zip(df.attrs["assignments"], df["method"]):
        table = pd.read_csv(path)
        assert len(table) == 150 and table["sample_id"][5] == "#5" and "path" not in table.columns
        if method == "scan":
            assert table["confidence"].between(1 / 3, 1.0).all()  # the max of 3 probabilities: at least 1/3
        else:
            assert "confidence" not in table.columns


def test_assignments_of_an_unknown_run_is_one_clear_error(tmp_path):
    results = tmp_path / "lb.csv"
    sscb.run(["pixels"], "digits", protocol=sscb.Protocol(seeds=(0,), overcluster=(1.0,)), results=results,
             cache=tmp_path / "cache", progress=False)
    with pytest.raises(ValueError, match=r"has no row with run_id 'feedfeedfeedfeed'"):
        sscb.write_assignments(results, ["feedfeedfeedfeed"], tmp_path / "cache")


def test_changed_data_is_not_read_back_as_if_it_were_the_clustered_data(tmp_path):
    from ssl_cluster_bench.assignments import dataset_of, entry_of

    data = _class_tree(tmp_path / "shades", per_class=3)
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    df = sscb.run(["pixels"], "imagefolder", data, protocol=sscb.Protocol(seeds=(0,), overcluster=(1.0,)),
                  results=results, cache=cache, progress=False, num_workers=0)
    entry = entry_of(df["cache_key"].iloc[0], cache)
    assert dataset_of(entry).sample_id(0) == "dark/dark_0.png"
    Image.new("RGB", (8, 8)).save(data / "dark" / "dark_0.png")  # rewritten since extraction (another size)
    assert dataset_of(entry) is None
    table = sscb.assignment_table(results, df["run_id"].iloc[0], cache)
    assert list(table["sample_id"][:2]) == ["#0", "#1"] and "path" not in table.columns  # positions, no paths
