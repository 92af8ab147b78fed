"""The report's k-selection figure: for rows whose k was picked by ``--k auto``, the criterion against k read back
from the curves the run stored (``predictions/k_selection/``); absent when every k was given."""
from __future__ import annotations

import numpy as np
import pandas as pd

import ssl_cluster_bench as sscb
from ssl_cluster_bench.api import k_selection_dir
from ssl_cluster_bench.k_select import curve_file
from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.report import check_images, k_curve_figure, write_report

GRID = (6, 8, 10, 12, 14)


def _run(tmp_path, name, **changes):
    results = tmp_path / name / "lb.csv"
    protocol = sscb.Protocol(seeds=(0,), pca_dim=16, **changes)
    sscb.run(["pixels"], "digits", protocol=protocol, results=results, cache=tmp_path / "cache", progress=False)
    return results


def test_k_auto_run_has_the_criterion_figure_and_a_given_k_run_has_none(tmp_path):
    # hdbscan finds its own k (k_criterion "method", no curve): it must neither get a line nor break the figures
    auto = _run(tmp_path, "auto", methods=("kmeans", "agglomerative", "hdbscan"), n_clusters="auto", k_grid=GRID)
    paths = write_report(auto, feature_map="none")
    checks = {c["name"]: c for c in check_images(paths.html, chromium=None)}
    assert "k-auto-digits" in checks and not checks["k-auto-digits"]["blank"]
    md = paths.markdown.read_text()
    assert "](report_files/k-auto-digits.png)" in md and "no k-selection curve" not in md
    # the curves it drew are the stored ones, found from the rows: one per k-picking method, the row's k chosen
    rows = read_leaderboard(auto)
    for _, row in rows[rows["method"] != "hdbscan"].iterrows():
        curve = pd.read_csv(curve_file(k_selection_dir(auto), row["cache_key"], row["method"], row["protocol_hash"]))
        assert curve["k"].tolist() == list(GRID) and (curve["n_classes"] == 10).all()
        assert int(curve.loc[curve["chosen"], "k"].iloc[0]) == int(row["n_clusters"])

    given = _run(tmp_path, "given", methods=("kmeans", "agglomerative", "hdbscan"), n_clusters=(10,))
    paths = write_report(given, feature_map="none")
    names = [c["name"] for c in check_images(paths.html, chromium=None)]
    assert "k-auto-digits" not in names and "bars-digits" in names
    assert not (given.parent / "report_files" / "k-auto-digits.png").exists()


def test_missing_curve_is_a_note_naming_the_file_and_the_other_lines_stay(tmp_path):
    auto = _run(tmp_path, "auto", methods=("kmeans", "agglomerative"), n_clusters="auto", k_grid=GRID)
    rows = read_leaderboard(auto)
    row = rows[rows["method"] == "agglomerative"].iloc[0]
    lost = curve_file(k_selection_dir(auto), row["cache_key"], "agglomerative", row["protocol_hash"])
    lost.unlink()
    paths = write_report(auto, feature_map="none")
    md = paths.markdown.read_text()
    assert f"no k-selection curve of pixels · agglomerative ({lost} is missing" in md
    assert "](report_files/k-auto-digits.png)" in md  # kmeans' curve is still drawn


def test_k_curve_figure_draws_each_curve_and_nothing_without_curves():
    def curve(values, chosen):
        return pd.DataFrame({"k": [2, 3, 4], "silhouette": values, "criterion": "silhouette",
                             "chosen": [k == chosen for k in (2, 3, 4)], "n_classes": 3})

    assert k_curve_figure([], "d") is None
    assert k_curve_figure([("a", curve([0.1, 0.2, 0.1], 3).iloc[:0])], "d") is None
    fig = k_curve_figure([("a", curve([0.1, 0.3, 0.2], 3)), ("b", curve([0.4, 0.2, np.nan], 2))], "d")
    assert fig.name == "k-auto-d" and fig.dataset == "d" and fig.png.startswith(b"\x89PNG")


def test_unlabelled_k_auto_run_finds_its_own_curve(tmp_path):
    # the same data clustered without its labels keeps its curve apart (``|unlabelled`` in the key): found too
    results = tmp_path / "unlabelled" / "lb.csv"
    sscb.run(["pixels"], "digits", protocol=sscb.Protocol(seeds=(0,), pca_dim=16, n_clusters="auto", k_grid=GRID),
             results=results, cache=tmp_path / "cache", unlabelled=True, progress=False)
    md = write_report(results, feature_map="none").markdown.read_text()
    assert "](report_files/k-auto-digits.png)" in md and "no k-selection curve" not in md
    (curve_path,) = k_selection_dir(results).glob("*.csv")
    assert pd.read_csv(curve_path)["n_classes"].isna().all()  # no true number of classes to mark
