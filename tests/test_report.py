"""The report's pieces on hand-made inputs: matched confusion order, blank-plot and broken-image detection."""

import base64
import shutil

import numpy as np
import pandas as pd
import pytest

from ssl_cluster_bench.report import _blank, _plt, _png, bar_figure, check_images, matched_confusion, sweep_figure


def test_matched_confusion_hand_computed():
    # classes 0,1,2; clusters 3,5,7,9. ACC matching: 0->5, 1->7, 2->3, and the spare cluster 9 -> its majority 2
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, -1]
    y_pred = [5, 5, 7, 7, 7, 3, 3, 9, 9]  # the last sample is unlabelled: left out
    counts, classes, clusters = matched_confusion(y_true, y_pred)
    assert classes.tolist() == [0, 1, 2]
    assert clusters.tolist() == [5, 7, 3, 9]
    assert counts.tolist() == [[2, 1, 0, 0], [0, 2, 0, 0], [0, 0, 2, 1]]
    # the matched counts on the diagonal sum to ACC × n: 6 of 8 labelled samples
    assert np.trace(counts[:, :3]) == 6


def test_blank_detects_axes_without_data():
    plt = _plt()
    fig, ax = plt.subplots()
    ax.set_title("nothing drawn")
    assert _blank(_png(fig))
    fig, ax = plt.subplots()
    ax.bar([0, 1], [0.3, 0.7])
    assert not _blank(_png(fig))


def _agg():
    return pd.DataFrame({"backbone": ["a", "a", "b", "b"], "dataset": "d", "method": ["kmeans", "scan"] * 2,
                         "n_clusters": 10, "acc_mean": [0.5, 0.6, 0.7, 0.8], "acc_std": [0.01, 0.02, 0.0, np.nan],
                         "nmi_mean": [0.4, 0.5, 0.6, 0.7], "nmi_std": [0.01] * 4})


def test_bar_and_sweep_figures_draw_data():
    fig = bar_figure(_agg(), "d")
    assert fig is not None and not _blank(fig.png)
    assert bar_figure(_agg(), "other") is None
    rows = pd.DataFrame({"backbone": "a", "dataset": "d", "pca_dim": [8, 8, 16, 16, 64, 64, 64, 64],
                         "protocol_hash": ["h8", "h8", "h16", "h16", "h64", "h64", "h128", "h128"],
                         "acc": [0.5, 0.52, 0.6, 0.62, 0.7, 0.7, 0.1, 0.1], "ari": [0.3] * 8})
    fig = sweep_figure(rows, "d", "pca_dim")
    assert fig is not None and not _blank(fig.png)
    assert sweep_figure(rows[rows.pca_dim == 8], "d", "pca_dim") is None  # one grid point is not a curve


def test_check_images_flags_blank_and_broken(tmp_path):
    plt = _plt()
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    good = base64.b64encode(_png(fig)).decode()
    fig, ax = plt.subplots()
    empty = base64.b64encode(_png(fig)).decode()
    broken = base64.b64encode(b"\x89PNG\r\n\x1a\n not really a png").decode()
    page = tmp_path / "r.html"
    page.write_text("<!DOCTYPE html><html><body>"
                    f'<img data-name="good" src="data:image/png;base64,{good}">'
                    f'<img data-name="empty" src="data:image/png;base64,{empty}">'
                    "</body></html>")
    checks = check_images(page, chromium=None)
    assert [(c["name"], c["blank"]) for c in checks] == [("good", False), ("empty", True)]
    if shutil.which("chromium") is None:
        pytest.skip("chromium not installed: the rendered check is not run")
    # rendered: a PNG the browser cannot decode shows as a broken image (naturalWidth 0)
    page.write_text(page.read_text().replace(
        "</body>", f'<img data-name="broken" src="data:image/png;base64,{broken}"></body>'))
    checks = check_images(page)
    assert [(c["name"], c["blank"]) for c in checks] == [("good", False), ("empty", True), ("broken", True)]
    widths = {c["name"]: c["width"] for c in checks}
    assert widths["good"] > 100 and widths["empty"] > 100 and widths["broken"] == 0


def test_published_numbers_beside_measured():
    from ssl_cluster_bench.report import _table, published_columns

    agg = pd.DataFrame({"backbone": ["mocov2-resnet50", "pixels"], "weights": "w", "dataset": ["imagenet", "digits"],
                        "split": ["val", "all"], "protocol": "direct", "method": "kmeans", "n_classes": [1000, 10],
                        "n_clusters": [1000, 10], "overcluster": 1.0, "pca_dim": 256, "protocol_hash": "abc",
                        "acc_mean": [0.2320, 0.7], "acc_std": [0.002, 0.01], "nmi_mean": [0.60, 0.7],
                        "nmi_std": [0.001, 0.01], "n_seeds": 5}, index=[3, 7])
    pub = published_columns(agg)
    # MoCo v2 R50, Table 1 of the seed paper: ACC 23.09 ± 0.16, NMI 63.22 ± 0.05
    assert pub.loc[3, "ACC published"].startswith("23.09 ± 0.16 (Δ +0.11, reproduced")
    assert pub.loc[3, "NMI published"].startswith("63.22 ± 0.05 (Δ -3.22, not reproduced")
    assert pub.loc[7, "ACC published"] == ""  # digits: nothing published
    table = _table(agg, pub)
    assert list(table.columns[table.columns.get_loc("ACC"):][:4]) == ["ACC", "ACC published", "NMI", "NMI published"]
    assert table.loc[0, "ACC"] == "23.2 ± 0.2"


def test_report_has_the_label_free_criteria_section(tmp_path):
    from ssl_cluster_bench.leaderboard import append_rows
    from ssl_cluster_bench.report import write_report

    # silhouette ranks 1 2 3 4 against ACC ranks 1 2 4 3: rho = 1 - 6*2 / (4*15) = +0.80
    rows = pd.DataFrame({"backbone": ["a", "a", "b", "b"], "weights": "w", "dataset": "digits", "split": "all",
                         "protocol": "direct", "method": "scan", "n_classes": 10, "n_clusters": 10,
                         "overcluster": 1.0, "pca_dim": 64, "protocol_hash": "p", "seed": [0, 1, 0, 1],
                         "acc": [0.5, 0.6, 0.8, 0.7], "nmi": 0.5, "silhouette": [0.1, 0.2, 0.3, 0.4],
                         "score": [-1.0, -2.0, -3.0, -2.5]})
    csv = tmp_path / "leaderboard.csv"
    append_rows(csv, rows.to_dict("records"))
    paths = write_report(csv)
    md = paths.markdown.read_text()
    assert "## Label-free criteria" in md
    line = next(ln for ln in md.splitlines() if "silhouette" in ln and "all methods" in ln)
    assert "+0.80" in line and "b · scan" in line and "75.0" in line  # b: mean ACC 0.75, the best
    assert "Label-free criteria</h2>" in paths.html.read_text()
