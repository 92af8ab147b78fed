"""Suites: schema checks, data roots, "not run" reasons, resume without duplicates, and the report a user opens."""

import argparse
import json
import shutil

import pandas as pd
import pytest
import torch

from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.predictions import load_predictions
from ssl_cluster_bench.protocol import Protocol
from ssl_cluster_bench.report import check_images
from ssl_cluster_bench.suite import (SuiteError, list_suites, load_suite, missing_runs, parse_data_roots,
                                     rows_of)
from test_objectnet import trees  # noqa: F401  (fixture: tiny ImageNet + ObjectNet folder trees)

TINY = """
name: tiny
backbones: [pixels]
protocol: {methods: [kmeans], overcluster: [1.0, 1.5], seeds: 2, pca_dim: 256}
datasets:
  - id: digits
    dataset: digits
    split: all
  - id: nowhere
    dataset: no-such-dataset
  - id: cifar10
    dataset: cifar10
    split: test
sweep:
  datasets: [digits]
  pca_dim: [4, 128]
  overcluster: [1.0, 2.0]
"""


def test_shipped_suites_load():
    assert {"local", "standard"} <= set(list_suites())
    standard = load_suite("standard")
    ids = [e.id for e in standard.entries]
    assert ids == ["imagenet-val", "imagenet-train", "imagenet50", "imagenet100", "imagenet200", "cifar10",
                   "cifar100-20", "stl10", "objectnet"]
    assert standard.entry_protocol(standard.entries[0]).overcluster == (1.0, 1.5)
    assert standard.entry_protocol(standard.entries[2]).methods == ("kmeans", "scan")
    local = load_suite("local")
    assert [e.dataset for e in local.entries][:2] == ["digits", "digits"]
    assert set(local.sweep_protocols()) == {"pca_dim", "n_clusters"}


@pytest.mark.parametrize("text, problem", [
    ("name: x\ndatasets: [{dataset: digits, colour: red}]", "datasets[0]: unknown key(s) ['colour']"),
    ("name: x\ndatasets: [{dataset: digits}, {dataset: digits}]", "id 'digits' is used twice"),
    ("name: x\ndatasets: [{dataset: digits, kind: magic}]", "unknown kind 'magic'"),
    ("name: x\ndatasets: [{kind: objectnet, roots: {imagenet: a, objectnet: on}}]", "quote on/off/yes/no"),
    ("name: x\ndatasets: [{dataset: digits, protocol: {sedes: 3}}]", "datasets[0].protocol: invalid protocol"),
    ("name: x\nprotocol: {seeds: 0}\ndatasets: [{dataset: digits}]", "protocol: invalid protocol"),
    ("name: x\ndatasets: [{dataset: digits}]\nsweep: {datasets: [cifar10]}", "not dataset ids of this suite"),
    ("datasets: [{dataset: digits}]", "'name' is required"),
])
def test_suite_schema_errors_name_file_and_field(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SuiteError) as e:
        load_suite(path)
    assert str(path) in str(e.value) and problem in str(e.value)


def test_unknown_suite_and_data_roots(tmp_path):
    with pytest.raises(SuiteError, match="unknown suite 'nope'.*local"):
        load_suite("nope")
    f = tmp_path / "roots.yaml"
    f.write_text("imagenet: /data/in\ncifar10: /data/c\n")
    assert parse_data_roots(["cifar10=/x", "stl10 = /s"], [f]) == {"imagenet": "/data/in", "cifar10": "/x",
                                                                   "stl10": "/s"}
    with pytest.raises(ValueError, match="expected NAME=PATH"):
        parse_data_roots(["imagenet"])


def test_missing_runs_only_what_the_leaderboard_lacks():
    p = Protocol(methods=("kmeans",), overcluster=(1.0, 1.5), seeds=3)
    h = p.row_hash("kmeans")
    have = pd.DataFrame({"method": "kmeans", "protocol_hash": h, "overcluster": [1.0, 1.0, 1.0, 1.5],
                         "n_clusters": [10, 10, 10, 15], "seed": [0, 1, 2, 0]})
    assert rows_of(have, p).sum() == 4
    todo = missing_runs(have, p)
    assert [(t.methods, t.overcluster, t.seeds) for t in todo] == [(("kmeans",), (1.5,), (1, 2))]
    assert missing_runs(have, p.replace(overcluster=(1.0,))) == []
    # another PCA dim is another row hash: nothing of it is there
    assert len(rows_of(have, p.replace(pca_dim=32))) and not rows_of(have, p.replace(pca_dim=32)).any()


def test_standard_with_checkpoint_and_no_roots_lists_every_dataset(tmp_path, capsys):
    ckpt = tmp_path / "my_ssl.pth"
    ckpt.write_bytes(b"never read: nothing can run")
    results = tmp_path / "res" / "leaderboard.csv"
    rc = main(["-q", "suite", "standard", "--checkpoint", str(ckpt), "--arch", "resnet50", "--results", str(results),
               "--cache-dir", str(tmp_path / "cache")])
    out = capsys.readouterr().out
    assert rc == 0, out
    state = json.loads((results.parent / "suite.json").read_text())
    statuses = {e["entry"]: e for e in state["entries"]}
    assert len(statuses) == 9 and all(e["status"] == "not run" for e in statuses.values())
    assert statuses["imagenet-val"]["reason"] == "no data root for 'imagenet': pass --data-root imagenet=PATH"
    assert "--data-root imagenet-subsets=PATH" in statuses["imagenet50"]["reason"]
    assert "imagenet_50.txt" in statuses["imagenet50"]["reason"]
    assert "--data-root cifar100=PATH" in statuses["cifar100-20"]["reason"]
    assert "--data-root objectnet=PATH" in statuses["objectnet"]["reason"]
    html = (results.parent / "report.html").read_text()
    assert html.count("not run") >= 9 and "my_ssl.pth (resnet50)" in html
    assert not results.exists()  # no rows: nothing ran


def test_suite_runs_sweeps_resumes_and_reports(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SSCB_FEATURE_MAP", "pca")  # the 2-D map without UMAP's compilation (seconds of CPU)
    suite = tmp_path / "tiny.yaml"
    suite.write_text(TINY)
    results = tmp_path / "res" / "leaderboard.csv"
    args = ["-q", "suite", str(suite), "--sweep", "--results", str(results), "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0, capsys.readouterr().err
    lb = read_leaderboard(results)
    main_rows = lb[rows_of(lb, load_suite(suite).entry_protocol(load_suite(suite).entries[0]))]
    # main protocol: k = 10, 15 × 2 seeds; PCA sweep: 4, 128 at k = 10 (pixels on digits are 64-d, so PCA 128
    # keeps all 64 dims; its row hash still differs from PCA 256's); k sweep at PCA 256: k = 20 only, since
    # k = 10 at PCA 256 is a run of the main protocol, already there: no run is made twice
    assert len(main_rows) == 4 and len(lb) == 4 + 4 + 2, lb[["pca_dim", "n_clusters", "seed"]]
    assert lb.run_id.is_unique
    assert sorted(lb.n_clusters.unique()) == [10, 15, 20]
    for run_id in lb.run_id:
        assert load_predictions(results, run_id).shape == (1797,)
    state = json.loads((results.parent / "suite.json").read_text())
    statuses = {e["entry"]: e for e in state["entries"]}
    assert statuses["digits"]["status"] == "ran" and statuses["digits"]["rows"] == 4
    assert statuses["nowhere"]["status"] == "not run" and "unknown dataset 'no-such-dataset'" in statuses["nowhere"]["reason"]
    assert statuses["cifar10"]["reason"] == "no data root for 'cifar10': pass --data-root cifar10=PATH"

    # the report: every image there and drawn, including the confusion matrix of the best configuration, the
    # grid of its clusters' prototype digits and the 2-D map of the features
    html = results.parent / "report.html"
    checks = check_images(html, chromium="chromium" if shutil.which("chromium") else None)
    names = [c["name"] for c in checks]
    assert names == ["bars-digits", "sweep-pca_dim-digits", "sweep-n_clusters-digits", "confusion-digits",
                     "prototypes-digits", "map-digits"]
    assert not any(c["blank"] for c in checks)
    if shutil.which("chromium"):
        assert all(c["width"] > 200 and c["height"] > 200 for c in checks)
    md = (results.parent / "report.md").read_text()
    assert "![digits: ACC and NMI" in md and (results.parent / "report_files" / "confusion-digits.png").is_file()
    # the table: mean ± std over the 2 seeds of the main protocol only (k = 20 is a sweep point)
    k15 = main_rows[main_rows.n_clusters == 15]
    assert f"{k15.acc.mean() * 100:.1f} ± {k15.acc.std() * 100:.1f}" in md
    assert "| kmeans   |  20 |" not in md

    # resume: nothing left to do, nothing appended
    before = results.read_bytes()
    args.append("--no-report")
    assert main(args) == 0
    assert results.read_bytes() == before
    state = json.loads((results.parent / "suite.json").read_text())
    assert {e["entry"]: e["status"] for e in state["entries"]}["digits"] == "already in leaderboard"
    # one more seed: only the new seed's runs are made
    assert main(args + ["--seeds", "3"]) == 0
    lb = read_leaderboard(results)
    assert lb.run_id.is_unique and (lb.seed == 2).sum() == 5 and len(lb) == 10 + 5


def test_suite_checkpoint_errors_speak_cli(tmp_path, capsys):
    import torchvision

    path = tmp_path / "legacy.pth"
    torch.save({"args": argparse.Namespace(arch="resnet18"), "model": torchvision.models.resnet18().state_dict()}, path)
    rc = main(["-q", "suite", "local", "--only", "digits", "--checkpoint", str(path), "--arch", "torchvision:resnet18",
               "--results", str(tmp_path / "lb.csv"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "--trust-checkpoint" in err and "weights_only=False" not in err and "\n\n" not in err
    rc = main(["-q", "suite", "local", "--checkpoint", str(tmp_path / "missing.pth"), "--arch", "resnet18",
               "--results", str(tmp_path / "lb.csv")])
    assert rc == 1 and "missing.pth' does not exist" in capsys.readouterr().err


def test_objectnet_entry_runs_both_protocols_once(tmp_path, trees, capsys):  # noqa: F811
    imagenet, objectnet = trees
    suite = tmp_path / "on.yaml"
    suite.write_text("""
name: on
backbones: [pixels]
protocol: {methods: [kmeans], overcluster: [1.0], seeds: 2, pca_dim: 2, kmeans: {backend: sklearn, n_iter: 3}}
datasets:
  - {id: objectnet, kind: objectnet, split: train, roots: {imagenet: in1k, objectnet: onet}}
""")
    results = tmp_path / "res" / "lb.csv"
    args = ["-q", "suite", str(suite), "--data-root", f"in1k={imagenet}", "--data-root", f"onet={objectnet}",
            "--results", str(results), "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--no-report"]
    assert main(args) == 0, capsys.readouterr().err
    lb = read_leaderboard(results)
    assert sorted(lb.protocol) == ["objectnet-direct"] * 2 + ["objectnet-transfer"] * 2
    assert main(args) == 0
    assert len(read_leaderboard(results)) == 4
    state = json.loads((results.parent / "suite.json").read_text())
    assert state["entries"][0]["status"] == "already in leaderboard"
