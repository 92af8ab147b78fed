"""Published clustering numbers on the model cards, and their comparison with measured leaderboard rows."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import yaml

from ssl_cluster_bench import cli
from ssl_cluster_bench.backbones import ModelCard, list_cards, load_card
from ssl_cluster_bench.backbones.cards import CardError
from ssl_cluster_bench.leaderboard import aggregate, append_rows
from ssl_cluster_bench.published import compare, comparison_markdown, matches, section, summarize

BASE = {"name": "test", "architecture": "ResNet-50", "source": "timm", "model": "resnet50",
        "pretraining": {"method": "test", "data": "none", "supervised": False},
        "feature": {"description": "pooled", "dim": 2048}}


def _card(card_id="test-card", clustering=(), **reported) -> ModelCard:
    return ModelCard.from_dict({**BASE, "id": card_id, "reported": {**reported, "clustering": list(clustering)}})


def _agg_row(backbone, dataset="imagenet", split="val", method="kmeans", n_classes=1000, n_clusters=1000,
             overcluster=1.0, protocol="direct", **metrics) -> dict:
    row = {"backbone": backbone, "weights": "w", "dataset": dataset, "split": split, "protocol": protocol,
           "method": method, "n_classes": n_classes, "n_clusters": n_clusters, "overcluster": overcluster,
           "pca_dim": 256, "n_seeds": 5}
    for name, (mean, std) in metrics.items():
        row[f"{name}_mean"], row[f"{name}_std"] = mean, std
    return row


TABLE1 = {"dataset": "imagenet", "split": "val", "classes": 1000, "method": "kmeans", "overcluster": 1.0,
          "acc": "23.09 ± 0.16", "ari": "11.99 ± 0.13", "ami": [37.04, 0.10], "nmi": "63.22 +- 0.05",
          "source": "Zheltonozhskii et al. 2021, Table 1"}


# --------------------------------------------------------------------------------------------------------
# The card block
# --------------------------------------------------------------------------------------------------------


def test_metric_forms_parse_to_mean_and_std():
    second = {k: v for k, v in TABLE1.items() if k not in ("ari", "ami", "nmi", "overcluster")}
    entry = _card(clustering=[TABLE1, {**second, "k": 1500, "acc": 46.03}]).reported_clustering
    assert entry[1]["metrics"] == {"acc": (46.03, None)} and entry[1]["k"] == 1500
    assert entry[0]["metrics"] == {"acc": (23.09, 0.16), "nmi": (63.22, 0.05), "ami": (37.04, 0.10),
                                   "ari": (11.99, 0.13)}
    assert entry[0]["protocol"] == "direct" and entry[0]["k"] is None and entry[0]["overcluster"] == 1.0


def test_null_metric_is_rejected():
    with pytest.raises(CardError, match=r"reported.clustering\[0\].ari.*must not be null"):
        _card(clustering=[{**TABLE1, "ari": None}])


@pytest.mark.parametrize("change, message", [
    ({"acc@1": 23.0}, r"unknown key\(s\) \['acc@1'\]"),
    ({"acc": "23.09 +/- x"}, r"acc.*mean ± std"),
    ({"acc": 123.0}, r"acc.*percentage"),
    ({"acc": [23.0, -1.0]}, r"acc.*std must be"),
    ({"k": 1000}, "exactly one of k"),
    ({"overcluster": None}, "exactly one of k"),
    ({"split": None}, r"split.*is required"),
    ({"source": ""}, r"source.*is required"),
    ({"classes": 0}, r"classes.*int >= 1"),
])
def test_invalid_clustering_entries_name_the_field(change, message):
    with pytest.raises(CardError, match=message):
        _card(clustering=[{**TABLE1, **change}])


def test_entry_without_metrics_is_rejected():
    bare = {k: v for k, v in TABLE1.items() if k not in ("acc", "ari", "ami", "nmi")}
    with pytest.raises(CardError, match="has no metric"):
        _card(clustering=[bare])


def test_legacy_entries_still_load_but_never_match():
    card = _card(clustering=[{"dataset": "imagenet", "method": "kmeans", "metric": "ACC", "value": 23.09,
                              "source": "x"}], linear_probe_top1=71.1, linear_probe_source="README")
    assert card.reported["linear_probe_top1"] == 71.1  # linear-probe fields keep working beside the block
    (entry,) = card.reported_clustering
    assert entry["metrics"] == {"acc": (23.09, None)} and entry["split"] is None
    agg = pd.DataFrame([_agg_row("test-card", acc=(0.2309, 0.001))])
    assert compare(agg, [card]).empty


def test_shipped_cards_carry_the_seed_papers_tables():
    mocov2 = {(e["dataset"], e["protocol"], e["classes"], e["overcluster"], e["k"]): e["metrics"]
              for e in load_card("mocov2-resnet50").reported_clustering}
    assert mocov2[("imagenet", "direct", 1000, 1.0, None)] == {
        "acc": (23.09, 0.16), "ari": (11.99, 0.13), "ami": (37.04, 0.10), "nmi": (63.22, 0.05)}
    assert mocov2[("objectnet", "objectnet-direct", 313, 1.0, None)]["acc"] == (4.30, 0.05)
    assert mocov2[("objectnet", "objectnet-transfer", None, None, 1000)]["acc_val"] == (1.76, 0.20)
    assert mocov2[("imagenet", "direct", 100, 1.0, None)] == {"acc": (59.7, None), "nmi": (76.1, None),
                                                               "ari": (50.8, None)}  # SCAN Table 4
    sk = {(e["dataset"], e["protocol"], e["overcluster"], e["k"]): e["metrics"]
          for e in load_card("simclrv2-resnet152-sk").reported_clustering}
    assert sk[("imagenet", "direct", 1.0, None)] == {"acc": (39.07, 0.61), "ari": (22.80, 0.60),
                                                     "ami": (52.03, 0.19), "nmi": (71.83, 0.13)}
    assert sk[("imagenet", "direct", 1.5, None)]["acc"] == (46.03, 0.21)
    with_numbers = {c.id for c in list_cards() if c.reported_clustering}
    # every Table 1 row with PyTorch weights (BigBiGAN has none)
    assert {"mocov2-resnet50", "infomin-resnet50", "swav-resnet50", "simclrv2-resnet50", "infomin-resnext152",
            "simclrv2-resnet152-sk", "simclrv2-resnet152-3x-sk", "supervised-resnet152s-gluon",
            "ig-resnext101-32x48d", "efficientnet-l2-ns-475"} <= with_numbers
    for card in list_cards():
        for e in card.reported_clustering:
            assert e["source"] and e["split"] and e["metrics"]


def test_summarize_lists_protocols_and_k():
    card = _card(clustering=[TABLE1, {**TABLE1, "overcluster": 1.5},
                             {**TABLE1, "dataset": "objectnet", "split": "test", "protocol": "objectnet-transfer",
                              "classes": None, "overcluster": None, "k": 1000}])
    assert summarize(card) == ("imagenet/val kmeans k=1000,1500; "
                               "objectnet/test kmeans (objectnet-transfer) k=1000")
    assert summarize(_card()) == ""


# --------------------------------------------------------------------------------------------------------
# Matching and verdicts
# --------------------------------------------------------------------------------------------------------


def test_compare_puts_published_figures_beside_matching_rows():
    card = _card(clustering=[TABLE1])
    agg = pd.DataFrame([
        # ACC 0.30 points above (within 2 x 0.16), ARI 1.01 points below (outside 2 x 0.13)
        _agg_row("test-card", acc=(0.2339, 0.002), ari=(0.1098, 0.001), ami=(0.3704, 0.0), nmi=(0.6322, 0.0)),
        _agg_row("test-card", n_clusters=1500, overcluster=1.5, acc=(0.30, 0.0)),  # no 1.5x entry
        _agg_row("test-card", n_classes=100, n_clusters=100, acc=(0.23, 0.0)),     # ImageNet-100 is not Table 1
        _agg_row("test-card", split="train", acc=(0.23, 0.0)),
        _agg_row("other-card", acc=(0.2309, 0.0)),
        _agg_row("test-card", dataset="digits", split="all", n_classes=10, n_clusters=10, acc=(0.8, 0.01)),
    ])
    out = compare(agg, [card]).set_index("metric")
    assert list(out.index) == ["acc", "nmi", "ami", "ari"]
    assert out.loc["acc", "measured"] == pytest.approx(23.39)
    assert out.loc["acc", "measured_std"] == pytest.approx(0.2)
    assert out.loc["acc", "difference"] == pytest.approx(0.30)
    assert out.loc["acc", "tolerance"] == pytest.approx(0.32)
    assert out.loc["acc", "verdict"] == "reproduced"
    assert out.loc["ari", "difference"] == pytest.approx(-1.01)
    assert out.loc["ari", "verdict"] == "not reproduced"
    assert (out.loc[["nmi", "ami"], "verdict"] == "reproduced").all()
    assert set(out["source"]) == {"Zheltonozhskii et al. 2021, Table 1"}
    assert (out["n_clusters"] == 1000).all()


def test_no_std_means_one_point_and_k_or_factor_both_match():
    card = _card(clustering=[
        {"dataset": "imagenet", "split": "val", "classes": 100, "method": "kmeans", "overcluster": 1.0,
         "acc": 59.7, "nmi": 76.1, "source": "SCAN Table 4"},
        {"dataset": "objectnet", "split": "test", "protocol": "objectnet-transfer", "method": "kmeans", "k": 1500,
         "acc_val": "1.75 ± 0.19", "acc_tr": "0.00 ± 0.00", "source": "Table C.2"},
    ])
    agg = pd.DataFrame([
        _agg_row("test-card", n_classes=100, n_clusters=100, acc=(0.607, 0.01), nmi=(0.7489, 0.01)),
        # a row run with an explicit k (no factor): k = round(1.0 x 100)
        _agg_row("test-card", n_classes=100, n_clusters=100, overcluster=float("nan"), acc=(0.597, 0.0)),
        _agg_row("test-card", dataset="objectnet", split="test", protocol="objectnet-transfer", n_classes=113,
                 n_clusters=1500, overcluster=1.5, acc_val=(0.0175, 0.001), acc_tr=(0.0001, 0.0001)),
    ])
    out = compare(agg, [card])
    first = out[out["measured"].round(2) == 60.70].iloc[0]
    assert first["tolerance"] == 1.0 and first["verdict"] == "reproduced"      # +1.00 point: at the edge
    nmi = out[out["metric"] == "nmi"].iloc[0]
    assert nmi["difference"] == pytest.approx(-1.21) and nmi["verdict"] == "not reproduced"
    assert len(out[(out["metric"] == "acc")]) == 2                            # the explicit-k row matched too
    transfer = out[out["protocol"] == "objectnet-transfer"].set_index("metric")
    assert transfer.loc["acc_val", "verdict"] == "reproduced"
    assert transfer.loc["acc_tr", "tolerance"] == 0.0 and transfer.loc["acc_tr", "verdict"] == "not reproduced"


def test_matches_requires_the_protocol_column_to_agree():
    entry = _card(clustering=[{**TABLE1, "protocol": "objectnet-direct"}]).reported_clustering[0]
    assert not matches(_agg_row("x"), entry)
    assert matches(_agg_row("x", protocol="objectnet-direct"), entry)
    direct = _card(clustering=[TABLE1]).reported_clustering[0]
    no_protocol = {k: v for k, v in _agg_row("x").items() if k != "protocol"}
    assert matches(no_protocol, direct) and matches({**no_protocol, "protocol": math.nan}, direct)


def test_markdown_shows_measured_reported_difference_and_verdict():
    card = _card(clustering=[TABLE1])
    agg = pd.DataFrame([_agg_row("test-card", acc=(0.2339, 0.002), ari=(0.1098, 0.001))])
    text = comparison_markdown(compare(agg, [card]))
    lines = text.splitlines()
    assert [c.strip() for c in lines[0].split("|")[1:-1]] == [
        "backbone", "dataset", "split", "method", "k", "metric", "measured", "reported", "Δ", "verdict", "source"]
    acc = next(line for line in lines if "| ACC " in line)
    assert "23.39 ± 0.20" in acc and "23.09 ± 0.16" in acc and "+0.30" in acc and "reproduced (±0.32)" in acc
    ari = next(line for line in lines if "| ARI " in line)
    assert "-1.01" in ari and "not reproduced (±0.26)" in ari
    assert section(agg, [card]).startswith("## Reported vs measured")
    assert comparison_markdown(compare(agg.iloc[0:0], [card])) == "" and section(agg.iloc[0:0], [card]) == ""


# --------------------------------------------------------------------------------------------------------
# Command line and the markdown `sscb run` writes
# --------------------------------------------------------------------------------------------------------


def _raw_rows(backbone, dataset, split, n_classes, k, accs):
    return [{"backbone": backbone, "weights": "w", "dataset": dataset, "split": split, "protocol": "direct",
             "method": "kmeans", "n_classes": n_classes, "n_clusters": k, "overcluster": 1.0, "pca_dim": 256,
             "whiten": False, "l2_normalize": False, "backend": "faiss", "seed": seed, "n_samples": 50000,
             "acc": acc, "nmi": 0.6322, "ami": 0.3704, "ari": 0.1199} for seed, acc in enumerate(accs)]


@pytest.fixture(autouse=True)
def shipped_cards_only(monkeypatch):
    monkeypatch.delenv("SSCB_MODEL_CARDS", raising=False)


def test_cli_leaderboard_reported(tmp_path, capsys):
    csv = tmp_path / "lb.csv"
    append_rows(csv, _raw_rows("mocov2-resnet50", "imagenet", "val", 1000, 1000, [0.229, 0.231, 0.233]))
    append_rows(csv, _raw_rows("pixels", "digits", "all", 10, 10, [0.79, 0.80]))
    assert cli.main(["leaderboard", str(csv), "--reported"]) == 0
    out = capsys.readouterr().out
    assert "## Reported vs measured" in out
    section_lines = out.split("## Reported vs measured")[1].splitlines()
    rows = [line for line in section_lines if line.startswith("| mocov2-resnet50")]
    assert len(rows) == 4 and not any("digits" in line for line in section_lines)
    acc = next(line for line in rows if "| ACC " in line)
    assert "23.10 ± 0.20" in acc and "23.09 ± 0.16" in acc and "+0.01" in acc and "| reproduced" in acc
    assert cli.main(["leaderboard", str(csv)]) == 0
    assert "Reported vs measured" not in capsys.readouterr().out

    digits_only = tmp_path / "digits.csv"
    append_rows(digits_only, _raw_rows("pixels", "digits", "all", 10, 10, [0.79, 0.80]))
    assert cli.main(["leaderboard", str(digits_only), "--reported"]) == 0
    assert "No measured row matches a published result" in capsys.readouterr().out


def test_run_markdown_gets_the_section_only_with_a_counterpart(tmp_path):
    from ssl_cluster_bench.api import write_markdown

    csv = tmp_path / "lb.csv"
    append_rows(csv, _raw_rows("pixels", "digits", "all", 10, 10, [0.79, 0.80]))
    assert "Reported vs measured" not in write_markdown(csv).read_text()
    append_rows(csv, _raw_rows("swav-resnet50", "imagenet", "val", 1000, 1000, [0.10, 0.11]))
    text = write_markdown(csv).read_text()
    assert "## Reported vs measured" in text
    acc = next(line for line in text.splitlines() if line.startswith("| swav-resnet50") and "| ACC " in line)
    assert "10.50 ± 0.71" in acc and "15.04 ± 0.77" in acc and "-4.54" in acc and "not reproduced" in acc


def test_cli_models_marks_cards_with_reported_numbers(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("simclrv2-resnet152-sk "))
    assert "reported imagenet/val kmeans k=1000,1500" in line and "manual" in line
    assert "reported" not in next(line for line in out.splitlines() if line.startswith("pixels "))
    n_cards = len(list_cards())
    assert f"{n_cards} cards, " in out


def test_cli_models_flags_unverified_urls(tmp_path, monkeypatch, capsys):
    card = {**BASE, "id": "maybe-card", "source": "url", "url": "https://example.org/w.pth", "arch": "resnet50",
            "status": "unverified"}
    (tmp_path / "maybe-card.yaml").write_text(yaml.safe_dump(card))
    monkeypatch.setenv("SSCB_MODEL_CARDS", str(tmp_path))
    assert cli.main(["models"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("maybe-card "))
    assert "[unverified URL]" in line


def test_aggregate_then_compare_round_trip(tmp_path):
    csv = tmp_path / "lb.csv"
    append_rows(csv, _raw_rows("mocov2-resnet50", "imagenet", "val", 100, 100, [0.60, 0.61]))
    agg = aggregate(pd.read_csv(csv))
    out = compare(agg).set_index("metric")
    assert out.loc["acc", "reported"] == 59.7 and out.loc["acc", "measured"] == pytest.approx(60.5)
    assert "SCAN" in out.loc["acc", "source"] and out.loc["acc", "tolerance"] == 1.0
