"""Label-free criteria against accuracy (ssl_cluster_bench.criteria), on hand-made leaderboard rows."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ssl_cluster_bench.criteria import criteria_correlations, criteria_markdown


def _rows(dataset, method, backbone, acc, silhouette, score, k=10, n_classes=10):
    return pd.DataFrame({"dataset": dataset, "split": "test", "n_clusters": k, "n_classes": n_classes,
                         "method": method, "backbone": backbone, "protocol_hash": "p", "seed": range(len(acc)),
                         "acc": acc, "silhouette": silhouette, "score": score})


def _line(table, **match):
    sel = np.ones(len(table), dtype=bool)
    for k, v in match.items():
        sel &= (table[k] == v).to_numpy()
    assert sel.sum() == 1, table
    return table[sel].iloc[0]


def test_spearman_by_hand_and_sign_convention():
    # silhouette ranks 1 2 3 4, ACC ranks 1 2 4 3: sum d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8
    # score (lower is better) 4 3 2 1 -> -score ranks 1 2 3 4: the same 0.8
    df = _rows("d", "temi", "a", [0.5, 0.6, 0.8, 0.7], [0.1, 0.2, 0.3, 0.4], [4.0, 3.0, 2.0, 1.0])
    t = criteria_correlations(df)
    assert _line(t, criterion="silhouette")["spearman"] == pytest.approx(0.8)
    assert _line(t, criterion="score", scope="temi")["spearman"] == pytest.approx(0.8)
    assert _line(t, criterion="score")["p_value"] == pytest.approx(spearmanr([1, 2, 3, 4], [1, 2, 4, 3]).pvalue)


def test_selection_picks_the_configuration_with_the_best_mean_criterion():
    # backbone a: mean silhouette 0.35, ACC 0.6; backbone b: 0.2, ACC 0.9 -> the silhouette picks a (regret 0.3);
    # TEMI's score (lower is better) means 1.0 for a and 0.5 for b -> picks b.
    df = pd.concat([_rows("d", "temi", "a", [0.6, 0.6], [0.3, 0.4], [1.0, 1.0]),
                    _rows("d", "temi", "b", [0.85, 0.95], [0.2, 0.2], [0.4, 0.6])])
    t = criteria_correlations(df)
    sil = _line(t, criterion="silhouette")
    assert (sil["configs"], sil["picked"]) == (2, "a · temi")
    assert (sil["picked_target"], sil["best_target"]) == pytest.approx((0.6, 0.9))
    score = _line(t, criterion="score")
    assert score["picked"] == "b · temi" and score["picked_target"] == pytest.approx(0.9)


def test_inertia_is_compared_only_within_one_backbone():
    # k-means inertia is in feature units: one line per backbone, no selection across backbones
    df = pd.concat([_rows("d", "kmeans", "a", [0.5, 0.6, 0.7], [0.1, 0.2, 0.3], [3.0, 2.0, 1.0]),
                    _rows("d", "kmeans", "b", [0.9, 0.8, 0.7], [0.1, 0.2, 0.3], [300.0, 200.0, 100.0])])
    t = criteria_correlations(df)
    scores = t[t["criterion"] == "score"]
    assert sorted(scores["scope"]) == ["kmeans · a", "kmeans · b"]
    assert _line(t, scope="kmeans · a")["spearman"] == pytest.approx(1.0)
    assert _line(t, scope="kmeans · b")["spearman"] == pytest.approx(-1.0)
    assert scores["picked"].isna().all()
    # TURTLE's score (a cross-validated linear accuracy) is compared within one space too; SCAN's loss is not
    from ssl_cluster_bench.methods import get_method

    assert not get_method("turtle").score_across_spaces and get_method("scan").score_across_spaces


def test_pooled_over_datasets_at_k_equal_classes_only():
    df = pd.concat([_rows("d1", "scan", "a", [0.5, 0.6, 0.7], [0.1, 0.2, 0.3], [3.0, 2.0, 1.0]),
                    _rows("d2", "scan", "a", [0.8, 0.9, 0.95], [0.4, 0.5, 0.6], [0.5, 0.4, 0.3]),
                    _rows("d1", "scan", "a", [0.1, 0.1, 0.1], [0.9, 0.9, 0.9], [0.0, 0.0, 0.0], k=20)])
    t = criteria_correlations(df)
    pooled = t[t["dataset"] == "all"]
    assert set(pooled["criterion"]) == {"silhouette", "score"}
    assert (pooled["rows"] == 6).all()  # the k = 20 rows are left out of the pooled lines
    assert _line(pooled, criterion="silhouette")["spearman"] == pytest.approx(1.0)
    # -score over the six rows: -3 -2 -1 -0.5 -0.4 -0.3 rises with ACC 0.5 .. 0.95 -> 1
    assert _line(pooled, criterion="score")["spearman"] == pytest.approx(1.0)


def test_too_few_rows_or_constant_gives_nan_and_markdown_renders():
    df = _rows("d", "scan", "a", [0.5, 0.6], [0.1, 0.2], [1.0, 0.5])
    t = criteria_correlations(df)
    assert np.isnan(t["spearman"]).all()
    text = criteria_markdown(t)
    assert "Spearman ρ with ACC" in text and "a · scan" in text


def test_missing_columns_are_named():
    with pytest.raises(ValueError, match="backbone"):
        criteria_correlations(pd.DataFrame({"dataset": ["d"], "split": ["s"], "n_clusters": [2], "method": ["m"],
                                            "acc": [0.5]}))


def test_cli_leaderboard_criteria(tmp_path, capsys):
    from ssl_cluster_bench.cli import main
    from ssl_cluster_bench.leaderboard import append_rows

    df = pd.concat([_rows("d", "scan", "a", [0.5, 0.6, 0.8, 0.7], [0.1, 0.2, 0.3, 0.4], [4.0, 3.0, 2.0, 1.0]),
                    _rows("d", "scan", "b", [0.2, 0.3, 0.25, 0.35], [0.0, 0.05, 0.02, 0.04], [9.0, 8.0, 7.0, 6.0])])
    df = df.assign(weights="w", protocol="direct", nmi=0.5)
    csv = tmp_path / "lb.csv"
    append_rows(csv, df.to_dict("records"))
    assert main(["leaderboard", str(csv), "--criteria"]) == 0
    out = capsys.readouterr().out
    assert "Label-free criteria" in out
    line = next(ln for ln in out.splitlines() if "silhouette" in ln and "all methods" in ln)
    # ranks over the 8 rows: silhouette b 1 4 2 3, a 5 6 7 8; ACC b 1 3 2 4, a 5 6 8 7: sum d^2 = 4,
    # rho = 1 - 6*4 / (8*63) = 0.952
    assert "+0.95" in line and "a · scan" in line
