"""Data without labels: a flat image folder, or --unlabelled on a labelled dataset. It clusters with k given, the
label metrics stay empty (never 0), the label-free ones are filled, and the leaderboard copes."""
from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ssl_cluster_bench as sscb
from ssl_cluster_bench import api
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.errors import OptionValueError
from ssl_cluster_bench.leaderboard import aggregate, read_leaderboard, to_markdown
from ssl_cluster_bench.protocol import Protocol

LABEL_COLUMNS = ["acc", "nmi", "ami", "ari"]


def _flat_folder(root, n_per_shade: int = 6):
    """Images directly in ``root`` (no class folders): three shades of grey, interleaved by name."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3 * n_per_shade):
        shade = 40 + 80 * (i % 3)
        arr = np.clip(rng.normal(shade, 8, (10, 10, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / f"img_{i:02d}.png")
    (root / ".hidden.png").write_bytes(b"not listed")  # hidden files are not images of the dataset
    (root / "notes.txt").write_text("not an image")
    return root


def _sscb(capsys, *args):
    """``sscb -q ARGS`` in this process (a subprocess would spend seconds importing torch): (rc, out, err)."""
    capsys.readouterr()
    rc = main(["-q", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_flat_folder_is_an_unlabelled_image_folder(tmp_path):
    root = _flat_folder(tmp_path / "photos")
    ds = get_dataset(str(root))  # a folder path is read as imagefolder, named after the folder
    assert ds.name == "photos" and ds.split == "all" and ds.classes == [] and len(ds) == 18
    assert (ds.targets == -1).all()
    assert [ds.sample_id(i) for i in (0, 1, 17)] == ["img_00.png", "img_01.png", "img_17.png"]
    image, label, index = ds[4]
    assert image.size == (10, 10) and label == -1 and index == 4
    assert get_dataset("imagefolder", root).sample_id(3) == "img_03.png"  # the same as imagefolder + root
    with pytest.raises(OptionValueError, match="is a folder and root=PATH names another one"):
        get_dataset(str(root), root=tmp_path)
    # a folder with neither class folders nor images is still an error naming the layout
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders found"):
        get_dataset(str(tmp_path / "empty"))


def test_cli_clusters_a_flat_folder_with_empty_label_columns(tmp_path, capsys):
    root = _flat_folder(tmp_path / "photos")
    results = tmp_path / "lb.csv"
    common = ["run", "--backbones", "pixels", "--dataset", str(root), "--cache-dir", str(tmp_path / "cache"),
              "--results", str(results), "--seeds", "2"]
    # no k: one line naming the fix, before anything is extracted or written
    rc, _, err = _sscb(capsys, *common)
    assert rc == 1
    assert err.strip() == (f"sscb run: error: the image folder {root} has no class folders (no labels), so "
                                  f"the number of clusters cannot be derived from the classes: give it with --k K")
    assert not results.exists() and not (tmp_path / "cache").exists()

    rc, out, err = _sscb(capsys, *common, "--k", "3")
    assert rc == 0, err
    with open(results, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and {r["dataset"] for r in rows} == {"photos"}
    for row in rows:
        assert [row[c] for c in LABEL_COLUMNS] == ["", "", "", ""]  # empty, never 0
        assert row["n_classes"] == "" and row["overcluster"] == "" and row["n_samples"] == "18"
        assert row["n_clusters"] == "3"
        assert float(row["score"]) > 0 and 0 < float(row["silhouette"]) <= 1  # label-free: filled
    table = [line for line in out.splitlines() if line.startswith("| pixels")]
    assert len(table) == 1 and table[0].count("| –") == 1 and "SILHOUETTE" in out, out  # ACC '–', silhouette
    # the leaderboard command reads it back too
    rc, out, err = _sscb(capsys, "leaderboard", str(results))
    assert rc == 0 and "| –" in out, err


def test_unlabelled_hides_the_labels_and_makes_rows_of_its_own(tmp_path):
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    protocol = Protocol(n_clusters=(10,), seeds=(0,))
    with pytest.raises(OptionValueError, match=r"unlabelled=True hides the labels, .* n_clusters=\[K\]"):
        api.run(["pixels"], "digits", protocol=Protocol(seeds=(0,)), results=results, cache=cache,
                progress=False, unlabelled=True)
    hidden = api.run(["pixels"], "digits", protocol=protocol, results=results, cache=cache, progress=False,
                     unlabelled=True)
    assert hidden[LABEL_COLUMNS].isna().all().all() and hidden["n_classes"].isna().all()
    assert hidden["silhouette"].notna().all() and hidden["score"].notna().all()
    # the same configuration with the labels: not taken for the unlabelled row (another run id), scored
    labelled = api.run(["pixels"], "digits", protocol=protocol, results=results, cache=cache, progress=False)
    assert labelled.attrs["new_rows"] == 1 and labelled["acc"].iloc[0] > 0.5
    assert labelled["run_id"].iloc[0] != hidden["run_id"].iloc[0]
    # the same assignment both ways (labels never steer the clustering); only the scoring differs
    assert labelled["silhouette"].iloc[0] == pytest.approx(hidden["silhouette"].iloc[0])
    board = read_leaderboard(results)
    assert len(board) == 2
    agg = aggregate(board)
    assert list(agg["acc_mean"].isna()) == [False, True]  # the scored row first, the unlabelled one last
    text = to_markdown(agg)
    # ACC, NMI, AMI, ARI, FMI, homogeneity and completeness of the unlabelled row
    assert text.splitlines()[3].count("| –") == 7


def test_python_api_clusters_features_without_labels():
    rng = np.random.default_rng(0)
    features = np.concatenate([rng.normal(c * 10, 1, (30, 5)) for c in range(3)]).astype(np.float32)
    with pytest.raises(OptionValueError, match=r"give it with n_clusters=\[K\]"):
        sscb.cluster_features(features, None, seeds=1, progress=False)
    df = sscb.cluster_features(features, None, n_clusters=[3], seeds=1, pca_dim=None, progress=False)
    assert len(df) == 1 and df[LABEL_COLUMNS].isna().all().all() and df["silhouette"].iloc[0] > 0.8
    pred = df.attrs["predictions"][df["run_id"].iloc[0]]
    assert {tuple(np.unique(pred[c * 30:(c + 1) * 30])) for c in range(3)} == {(0,), (1,), (2,)}


def test_aggregate_and_markdown_cope_with_no_label_column_at_all():
    rows = pd.DataFrame({"backbone": ["a", "a"], "dataset": ["d", "d"], "split": ["all"] * 2,
                         "method": ["kmeans"] * 2, "n_clusters": [4, 4], "pca_dim": [8, 8], "seed": [0, 1],
                         "acc": [np.nan, np.nan], "silhouette": [0.25, 0.35], "run_id": ["x", "y"]})
    agg = aggregate(rows)
    assert len(agg) == 1 and np.isnan(agg["acc_mean"].iloc[0]) and agg["silhouette_mean"].iloc[0] == 0.3
    line = to_markdown(agg).splitlines()[2]
    assert "| –" in line and "0.300 ± 0.071" in line


def test_k_auto_without_labels_needs_a_grid_in_one_line_before_anything_is_made(tmp_path, capsys):
    # no class count sizes the default grid (2 .. 2 x #classes): the k values must be given, in either interface
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    assert main(["run", "--dataset", "digits", "--unlabelled", "--k", "auto", "--results", str(results),
                 "--cache-dir", str(cache)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("sscb run: error: --k auto on data without labels has no class count to size the grid of k "
                   "values from: give the k values to try with --k-grid 2-30")
    with pytest.raises(OptionValueError, match=r'^n_clusters="auto" on data without labels .* k_grid=\[K, \.\.\.\]'):
        api.run(["pixels"], "digits", protocol=Protocol(n_clusters="auto"), unlabelled=True, results=results,
                cache=cache, progress=False)
    assert not results.exists() and not cache.exists()
    # with a grid it runs, and the row records the k the criterion chose
    df = api.run(["pixels"], "digits", protocol=Protocol(n_clusters="auto", k_grid=[8, 10], seeds=1),
                 unlabelled=True, results=results, cache=cache, progress=False)
    assert len(df) == 1 and df["n_clusters"].iloc[0] in (8, 10) and df["acc"].isna().all()
