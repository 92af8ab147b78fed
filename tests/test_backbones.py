"""Backbones: model cards, the factory, SSL checkpoint loading and offline behaviour (no downloads)."""
from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
import yaml
from PIL import Image
from torch import nn

from ssl_cluster_bench.backbones import ModelCard, Preprocessing, build_arch, create_backbone, list_cards, load_card
from ssl_cluster_bench.backbones.cards import CardError, card_dirs
from ssl_cluster_bench.backbones.checkpoints import load_checkpoint
from ssl_cluster_bench.backbones.factory import (_strip_top_level_head, parse_arch, probe_feature_dim,
                                                 resolve_preprocessing)

CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"
TIMM_PRETRAINED = set(timm.list_pretrained())


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Tiny tensors: one intra-op thread avoids OpenMP spin-waiting when other test runs share the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def offline_caches(tmp_path, monkeypatch):
    """No test may touch the network or the user's real weight caches."""
    import huggingface_hub.constants

    monkeypatch.setenv("SSCB_OFFLINE", "1")
    monkeypatch.delenv("SSCB_MODEL_CARDS", raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch_hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    return tmp_path


def _write_card(directory: Path, **fields) -> Path:
    base = {"name": "test card", "architecture": "ResNet-18",
            "pretraining": {"method": "test", "data": "none", "supervised": False},
            "feature": {"description": "pooled", "dim": 512},
            "preprocessing": {"resize": 40, "crop": "center", "input_size": 32, "interpolation": "bilinear",
                              "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    base.update(fields)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{base['id']}.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return path


def _reference(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _tv_resnet18(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    # random BN statistics so a wrongly loaded (default 0/1) buffer changes the output
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model


# --------------------------------------------------------------------------------------------------------
# The shipped cards
# --------------------------------------------------------------------------------------------------------


def test_shipped_cards_parse_with_unique_ids_matching_file_names():
    files = sorted(CARDS_DIR.glob("*.yaml"))
    assert len(files) >= 22
    ids = [yaml.safe_load(f.read_text())["id"] for f in files]
    assert len(ids) == len(set(ids))
    assert ids == [f.stem for f in files]
    cards = list_cards()
    assert [c.id for c in cards] == sorted(ids)
    for required in ("pixels", "random-resnet18", "supervised-resnet50", "supervised-resnet152",
                     "mocov2-resnet50", "mocov3-resnet50", "swav-resnet50", "dino-resnet50", "dino-vits16",
                     "dino-vitb16", "dinov2-vits14", "dinov2-vitb14", "dinov2-vitl14", "mae-vitb16",
                     "clip-vitb16", "ig-resnext101-32x48d", "efficientnet-l2-ns", "efficientnet-lite0",
                     "efficientnet-lite0-96", "efficientnet-lite1", "efficientnet-lite1-96", "efficientnet-lite2",
                     "efficientnet-lite2-96"):
        assert required in ids


@pytest.mark.parametrize("card", list_cards(CARDS_DIR), ids=lambda c: c.id)
def test_card_resolves_to_its_declared_architecture(card: ModelCard):
    assert isinstance(resolve_preprocessing(card), Preprocessing)
    if card.source == "builtin":
        assert card.model == "pixels" and card.feature_dim is None
        return
    if card.source == "timm":
        if card.pretrained:
            assert card.model in TIMM_PRETRAINED, f"{card.model} is not a timm pretrained tag"
        else:
            assert timm.is_model(card.model)
    if card.source == "torchvision":
        weights = torchvision.models.get_weight(card.weights)
        assert weights in list(torchvision.models.get_model_weights(card.model))
    if card.source == "hub":
        assert ":" in card.repo and card.entrypoint and card.arch
    if card.source in ("url", "hub", "manual", "package"):
        assert parse_arch(card.arch)[0] in ("timm", "torchvision", "sscb")
    if card.source == "manual":
        # no stable PyTorch URL: the card must say where the official weights are and how to convert them
        assert card.filename and "://" in card.obtain
    if card.source == "package":
        assert card.package and card.file
    assert card.status in ("verified", "unverified")
    # the output width of the architecture built on the meta device (no weights, no memory)
    assert probe_feature_dim(card.build_arch, card.model_kwargs) == card.feature_dim
    # every published number carries its source
    for metric, source in (("linear_probe_top1", "linear_probe_source"), ("knn_top1", "knn_source"),
                           ("top1", "top1_source")):
        if card.reported.get(metric) is not None:
            assert card.reported[source]


def test_card_transforms_produce_the_declared_input_size():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8))
    for card in list_cards():
        pp = resolve_preprocessing(card)
        x = pp.build_transform()(image)
        if pp.crop:
            side = pp.input_size
            assert tuple(x.shape) == (pp.channels, side, side), card.id
        assert x.dtype == torch.float32


@pytest.mark.parametrize("card_id", ["supervised-resnet50", "dino-vits16", "dinov2-vits14", "clip-vitb16",
                                     "mocov3-vits16", "ig-resnext101-32x48d", "simclrv2-resnet152-sk",
                                     "simclr-resnet50-4x", "infomin-resnext152"])
def test_forward_output_matches_the_declared_dim(card_id):
    """A forward pass on the meta device gives exactly the card's feature width (one card per family)."""
    card = load_card(card_id)
    pp = resolve_preprocessing(card)
    with torch.device("meta"):
        model = build_arch(card.build_arch, card.model_kwargs).eval()
        out = model(torch.empty(2, pp.channels, pp.input_size, pp.input_size))
    assert tuple(out.shape) == (2, card.feature_dim)


def test_mocov3_vits_card_uses_twelve_heads():
    card = load_card("mocov3-vits16")
    with torch.device("meta"):
        model = build_arch(card.build_arch, card.model_kwargs)
    assert model.blocks[0].attn.num_heads == 12  # MoCo v3's ViT-S, not timm's 6-head default


# --------------------------------------------------------------------------------------------------------
# Builtin cards, ids
# --------------------------------------------------------------------------------------------------------


def test_pixels_backbone_returns_the_raw_pixel_values():
    values = np.arange(64, dtype=np.uint8).reshape(8, 8) * 4
    gray = Image.fromarray(values, mode="L")
    backbone = create_backbone("pixels")
    for image in (gray, gray.convert("RGB")):  # datasets hand out RGB images
        features = backbone.model(backbone.transform(image)[None])
        assert features.shape == (1, 64)
        np.testing.assert_array_equal(features[0].numpy(), values.ravel().astype(np.float32))
    assert backbone.weights_id == "builtin:pixels"
    assert backbone.feature_dim == -1


def test_random_resnet18_is_seeded_and_reproducible(tmp_path):
    a = create_backbone("random-resnet18")
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    b = create_backbone("random-resnet18")
    assert torch.equal(torch.rand(1), expected_next)  # building does not consume the global RNG stream
    assert a.weights_id == b.weights_id == "random:timm:resnet18{zero_init_last=False}:seed=0"
    assert a.transform_id == b.transform_id
    assert a.model.layer1[0].bn2.weight.abs().min() > 0  # residual branches are random too, not zeroed
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8))
    x = a.transform(image)
    pp = a.card.preprocessing
    unnormalized = x * torch.tensor(pp.std)[:, None, None] + torch.tensor(pp.mean)[:, None, None]
    assert x.shape == (3, 32, 32)
    assert torch.allclose(unnormalized[0], unnormalized[1], atol=1e-6)  # grayscale copied to 3 channels
    out_a, out_b = _reference(a.model, x[None]), _reference(b.model, x[None])
    assert out_a.shape == (1, 512) and torch.equal(out_a, out_b)
    raw = yaml.safe_load((CARDS_DIR / "random-resnet18.yaml").read_text())
    _write_card(tmp_path / "cards", **{**raw, "seed": 1})
    c = create_backbone(load_card("random-resnet18", cards_dir=tmp_path / "cards"))
    assert c.weights_id == "random:timm:resnet18{zero_init_last=False}:seed=1"
    assert not torch.allclose(_reference(c.model, x[None]), out_a)


@pytest.mark.parametrize("name", ["resnet18.a1_in1k", "tf_efficientnet_l2.ns_jft_in1k_475"])
def test_timm_config_fallback_equals_timms_own_eval_transform(name):
    from timm.data import create_transform, resolve_data_config

    image = Image.fromarray(np.random.default_rng(2).integers(0, 256, (90, 120, 3), dtype=np.uint8))
    cfg = timm.get_pretrained_cfg(name).to_dict()
    ours = Preprocessing.from_timm_config(cfg).build_transform()(image)
    theirs = create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)(image)
    assert torch.equal(ours, theirs)


def test_transform_id_is_canonical():
    base = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    a = Preprocessing(**base, input_size=224, resize=256, crop=True, interpolation="bicubic")
    assert a.transform_id == Preprocessing(**base, input_size=224, resize=256, crop=True,
                                           interpolation="bicubic").transform_id
    variants = [Preprocessing(**base, input_size=224, resize=256, crop=True, interpolation="bilinear"),
                Preprocessing(**base, input_size=224, resize=248, crop=True, interpolation="bicubic"),
                Preprocessing(**base, input_size=224, resize=(256, 256), crop=True, interpolation="bicubic"),
                Preprocessing(**base, input_size=224, resize=256, crop=False, interpolation="bicubic"),
                Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.2, 0.25, 0.25), input_size=224, resize=256,
                              crop=True, interpolation="bicubic"),
                Preprocessing(**base, input_size=224, resize=256, crop=True, interpolation="bicubic",
                              grayscale=3)]
    ids = {v.transform_id for v in variants}
    assert a.transform_id not in ids and len(ids) == len(variants)
    # interpolation is irrelevant (and ignored) when nothing is resized
    assert (Preprocessing(**base, interpolation="bicubic").transform_id
            == Preprocessing(**base, interpolation="nearest").transform_id)
    # the ids come from the cards: same preprocessing, same id, across cards
    dino_s, dino_b, dinov2 = (load_card(i).preprocessing for i in ("dino-vits16", "dino-vitb16", "dinov2-vits14"))
    assert dino_s.transform_id == dino_b.transform_id == dinov2.transform_id
    assert load_card("supervised-resnet50").preprocessing.transform_id != dino_s.transform_id


# --------------------------------------------------------------------------------------------------------
# SSL checkpoints
# --------------------------------------------------------------------------------------------------------


def test_moco_v2_checkpoint_loads_the_query_encoder(tmp_path):
    query, key = _tv_resnet18(1), _tv_resnet18(2)
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items() if not k.startswith("fc.")}
    state.update({f"module.encoder_k.{k}": v for k, v in key.state_dict().items() if not k.startswith("fc.")})
    state.update({"module.encoder_q.fc.0.weight": torch.randn(512, 512), "module.encoder_q.fc.2.weight":
                  torch.randn(128, 512), "module.queue": torch.randn(128, 64), "module.queue_ptr": torch.zeros(1)})
    path = tmp_path / "moco_v2_style.pth.tar"
    torch.save({"epoch": 800, "arch": "resnet18", "state_dict": state}, path)
    x = torch.randn(2, 3, 32, 32)
    query.fc, key.fc = nn.Identity(), nn.Identity()

    backbone = create_backbone(None, arch="torchvision:resnet18", checkpoint=path)
    assert torch.allclose(_reference(backbone.model, x), _reference(query, x), atol=1e-6)
    assert backbone.card.id == "moco_v2_style" and backbone.feature_dim == 512
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert backbone.weights_id == f"file:{digest}#arch=torchvision:resnet18"

    momentum = create_backbone(None, arch="torchvision:resnet18", checkpoint=path, momentum_encoder=True)
    assert torch.allclose(_reference(momentum.model, x), _reference(key, x), atol=1e-6)
    assert momentum.weights_id != backbone.weights_id


def test_dino_teacher_checkpoint_into_timm_resnet(tmp_path):
    torch.manual_seed(3)
    teacher, student = timm.create_model("resnet18", num_classes=0), timm.create_model("resnet18", num_classes=0)
    head = {"head.mlp.0.weight": torch.randn(256, 512), "head.last_layer.weight_g": torch.randn(1000, 1)}
    path = tmp_path / "dino_full_checkpoint.pth"
    torch.save({"student": {**{f"backbone.{k}": v for k, v in student.state_dict().items()}, **head},
                "teacher": {**{f"backbone.{k}": v for k, v in teacher.state_dict().items()}, **head},
                "epoch": 100}, path)
    backbone = create_backbone(None, arch="resnet18", checkpoint=path)  # bare name: timm first
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(teacher, x), atol=1e-6)
    assert not torch.allclose(_reference(backbone.model, x), _reference(student, x), atol=1e-3)


def test_plain_module_prefixed_state_dict(tmp_path):
    model = _tv_resnet18(4)
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    backbone = create_backbone(None, arch="torchvision:resnet18", checkpoint=path)
    model.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(model, x), atol=1e-6)


def test_mocov3_vit_url_card_with_model_kwargs(tmp_path):
    """A url card (its file already in the torch hub cache) with prefix hint and model_kwargs; MoCo v3 stores two
    encoders with equal keys."""
    torch.manual_seed(5)
    kwargs = dict(img_size=32, num_heads=12, depth=2)  # small and fast; num_heads as in MoCo v3
    base, momentum = (timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs) for _ in range(2))
    state = {f"module.base_encoder.{k}": v for k, v in base.state_dict().items()}
    state.update({f"module.momentum_encoder.{k}": v for k, v in momentum.state_dict().items()})
    state.update({"module.base_encoder.head.0.weight": torch.randn(64, 192),
                  "module.predictor.0.weight": torch.randn(64, 64)})
    url = "https://example.org/moco-v3/vit-t-test.pth.tar"
    ckpt = tmp_path / "torch_hub" / "checkpoints" / "vit-t-test.pth.tar"  # where a download of url lands
    ckpt.parent.mkdir(parents=True)
    torch.save({"state_dict": state, "epoch": 300}, ckpt)
    cards = tmp_path / "cards"
    _write_card(cards, id="mocov3-test", source="url", url=url, arch="timm:vit_tiny_patch16_224",
                model_kwargs=kwargs, checkpoint_key="state_dict", prefix="module.base_encoder.",
                feature={"description": "cls", "dim": 192},
                preprocessing={"resize": 32, "crop": "center", "input_size": 32, "interpolation": "bicubic",
                               "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]})
    card = load_card("mocov3-test", cards_dir=cards)
    x = torch.randn(2, 3, 32, 32)
    backbone = create_backbone(card)
    assert backbone.weights_id == f"url:{url}" and backbone.feature_dim == 192
    assert torch.allclose(_reference(backbone.model, x), _reference(base, x), atol=1e-5)
    mom = create_backbone(card, momentum_encoder=True)
    assert torch.allclose(_reference(mom.model, x), _reference(momentum, x), atol=1e-5)
    assert mom.weights_id.endswith("#momentum_encoder")


def test_vit_checkpoint_at_another_resolution_goes_through_timms_converter(tmp_path):
    """Like an official DINOv2 file (518 px grid) loaded at 224 px: timm resamples the position embedding."""
    torch.manual_seed(15)
    source = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=64, depth=2)
    path = tmp_path / "vit_64px.pth"
    torch.save({**source.state_dict(), "mask_token": torch.zeros(1, 192)}, path)
    _write_card(tmp_path / "cards", id="vit-32px", source="timm", model="vit_tiny_patch16_224.augreg_in21k",
                model_kwargs={"img_size": 32, "depth": 2}, feature={"description": "cls", "dim": 192})
    card = load_card("vit-32px", cards_dir=tmp_path / "cards")
    backbone = create_backbone(card, checkpoint=path)
    assert backbone.model.pos_embed.shape == (1, 1 + 2 * 2, 192)
    assert torch.equal(backbone.model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert "img_size=32" in backbone.weights_id


def test_checkpoint_with_most_keys_missing_is_refused(tmp_path):
    model = _tv_resnet18(6)
    partial = {k: v for k, v in model.state_dict().items() if k.startswith(("conv1", "bn1", "layer1"))}
    path = tmp_path / "partial.pth"
    torch.save({"state_dict": partial}, path)
    with pytest.raises(RuntimeError, match="refusing to run with random weights"):
        create_backbone(None, arch="torchvision:resnet18", checkpoint=path)


def test_checkpoint_with_a_shape_mismatch_is_refused(tmp_path):
    state = _tv_resnet18(7).state_dict()
    state["layer1.0.conv1.weight"] = torch.randn(32, 64, 3, 3)
    path = tmp_path / "mismatch.pth"
    torch.save(state, path)
    with pytest.raises(RuntimeError, match=r"wrong shape.*layer1\.0\.conv1\.weight"):
        create_backbone(None, arch="torchvision:resnet18", checkpoint=path)


def test_pickled_objects_need_weights_only_false(tmp_path):
    model = _tv_resnet18(8)
    path = tmp_path / "legacy.pth"
    torch.save({"args": argparse.Namespace(arch="resnet18"), "model": model.state_dict()}, path)
    with pytest.raises(RuntimeError, match="weights_only=False"):
        create_backbone(None, arch="torchvision:resnet18", checkpoint=path)
    backbone = create_backbone(None, arch="torchvision:resnet18", checkpoint=path, weights_only=False)
    model.fc = nn.Identity()
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(model, x), atol=1e-6)


def test_checkpoint_key_and_prefix_errors_are_explicit(tmp_path):
    model = _tv_resnet18(9)
    path = tmp_path / "nested.pth"
    torch.save({"ema": {"weights": model.state_dict()}, "step": 3}, path)
    with pytest.raises(ValueError, match="no state dict found"):
        create_backbone(None, arch="torchvision:resnet18", checkpoint=path)
    backbone = create_backbone(None, arch="torchvision:resnet18", checkpoint=path, checkpoint_key="ema.weights")
    assert backbone.weights_id.endswith("#key=ema.weights")
    with pytest.raises(ValueError, match="no key starts with prefix"):
        load_checkpoint(torchvision.models.resnet18(), path, "ema.weights", prefix="module.encoder_q.")
    with pytest.raises(FileNotFoundError):
        create_backbone(None, arch="torchvision:resnet18", checkpoint=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="neither a timm model nor a torchvision builder"):
        create_backbone(None, arch="resnet_does_not_exist", checkpoint=path)


def test_weights_id_follows_the_file_content(tmp_path):
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save(_tv_resnet18(10).state_dict(), a)
    torch.save(_tv_resnet18(11).state_dict(), b)
    ids = [create_backbone(None, arch="torchvision:resnet18", checkpoint=p).weights_id for p in (a, a, b)]
    assert ids[0] == ids[1] != ids[2]


# --------------------------------------------------------------------------------------------------------
# Offline behaviour and weight caches
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("card_id", ["dino-vits16", "supervised-resnet50", "mocov2-resnet50", "swav-resnet50"])
def test_uncached_pretrained_weights_fail_fast_offline(card_id, offline_caches):
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        create_backbone(card_id)
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "--checkpoint" in message and "SSCB_OFFLINE" in message
    assert str(offline_caches / "torch_hub" / "checkpoints") in message or "huggingface" in message


def test_unreachable_host_fails_fast_without_offline_flags(monkeypatch):
    from ssl_cluster_bench.backbones import downloads

    monkeypatch.delenv("SSCB_OFFLINE")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # discard port: the probe is refused at once
    downloads.host_reachable.cache_clear()
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"dl\.fbaipublicfiles\.com is unreachable[\s\S]*--checkpoint"):
        create_backbone("mocov2-resnet50")
    assert time.perf_counter() - start < 5
    downloads.host_reachable.cache_clear()


def test_cached_timm_weights_load_offline(offline_caches, tmp_path):
    """A weight file in the torch hub cache is used without any network (timm pretrained tag)."""
    torch.manual_seed(12)
    reference = timm.create_model("resnet18", num_classes=0)
    cfg = timm.get_pretrained_cfg("resnet18.a1_in1k")
    target = offline_caches / "torch_hub" / "checkpoints" / Path(cfg.url).name
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    _write_card(tmp_path / "cards", id="timm-resnet18", source="timm", model="resnet18.a1_in1k")
    backbone = create_backbone(load_card("timm-resnet18", cards_dir=tmp_path / "cards"))
    assert backbone.weights_id == "timm:resnet18.a1_in1k" and backbone.feature_dim == 512
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(reference, x), atol=1e-5)


def test_cached_torchvision_weights_load_offline(offline_caches, tmp_path):
    reference = _tv_resnet18(13)
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    target = offline_caches / "torch_hub" / "checkpoints" / Path(weights.url).name
    target.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), target)
    _write_card(tmp_path / "cards", id="tv-resnet18", source="torchvision", model="resnet18",
                weights="ResNet18_Weights.IMAGENET1K_V1")
    backbone = create_backbone(load_card("tv-resnet18", cards_dir=tmp_path / "cards"))
    assert backbone.weights_id == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(reference, x), atol=1e-6)


def test_hub_card_loads_cached_weights_without_the_repo(offline_caches, tmp_path):
    """SwAV-style file (module. prefix, projection head, prototypes) in the cache; the hub repo is absent."""
    reference = _tv_resnet18(14)
    state = {f"module.{k}": v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    state.update({"module.projection_head.0.weight": torch.randn(128, 512),
                  "module.prototypes.weight": torch.randn(300, 128)})
    url = "https://dl.fbaipublicfiles.com/sscb-test/swav_r18_test.pth.tar"
    target = offline_caches / "torch_hub" / "checkpoints" / "swav_r18_test.pth.tar"
    target.parent.mkdir(parents=True)
    torch.save(state, target)
    _write_card(tmp_path / "cards", id="swav-r18-test", source="hub", repo="facebookresearch/swav:main",
                entrypoint="resnet50", arch="torchvision:resnet18", weights_url=url)
    backbone = create_backbone(load_card("swav-r18-test", cards_dir=tmp_path / "cards"))
    assert backbone.weights_id == "hub:facebookresearch/swav:main/resnet50"
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(reference, x), atol=1e-6)


def test_cached_hub_repo_is_loaded_locally(offline_caches, tmp_path):
    """A cached hub checkout is imported from disk (no GitHub); its ImageNet classifier is removed."""
    repo = offline_caches / "torch_hub" / "facebookresearch_swav_main"
    repo.mkdir(parents=True)
    (repo / "hubconf.py").write_text(
        "import torch, torchvision\n"
        "dependencies = ['torch', 'torchvision']\n"
        "def resnet50(pretrained=True):\n"
        "    torch.manual_seed(21)\n"
        "    return torchvision.models.resnet18(weights=None)\n")
    _write_card(tmp_path / "cards", id="hub-test", source="hub", repo="facebookresearch/swav:main",
                entrypoint="resnet50")
    backbone = create_backbone(load_card("hub-test", cards_dir=tmp_path / "cards"))
    assert backbone.weights_id == "hub:facebookresearch/swav:main/resnet50" and backbone.feature_dim == 512
    torch.manual_seed(21)
    reference = torchvision.models.resnet18(weights=None)
    reference.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(reference, x), atol=1e-6)


def test_hub_models_lose_their_top_level_classifier():
    model = torchvision.models.resnet18(weights=None)
    _strip_top_level_head(model)
    assert isinstance(model.fc, nn.Identity)
    assert _reference(model, torch.randn(2, 3, 32, 32)).shape == (2, 512)


# --------------------------------------------------------------------------------------------------------
# Card files: validation, search path, lookup
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("change, field", [
    ({"source": "pypi"}, "source"),
    ({"model": None}, "model"),
    ({"feature": {"description": "x"}}, "feature.dim"),
    ({"pretraining": {"method": "x", "data": "y"}}, "pretraining.supervised"),
    ({"preprocessing": {"resize": 32, "mean": [0.5], "std": [0.5, 0.5, 0.5]}}, "preprocessing.mean"),
    ({"preprocessing": {"crop": "center", "mean": [0, 0, 0], "std": [1, 1, 1]}}, "preprocessing.input_size"),
    ({"reported": {"linear_probe_top1": 70.0}}, "reported.linear_probe_source"),
    ({"reported": {"top1": 170.0, "top1_source": "x"}}, "reported.top1"),
    ({"id": "Bad Id"}, "id"),
])
def test_invalid_cards_name_the_file_and_field(tmp_path, change, field):
    path = _write_card(tmp_path, **{"id": "broken", "source": "timm", "model": "resnet18", **change})
    with pytest.raises(CardError) as info:
        load_card(path)
    assert str(path) in str(info.value) and repr(field) in str(info.value)


def test_unknown_field_suggests_the_right_name(tmp_path):
    path = _write_card(tmp_path, id="typo", source="timm", model="resnet18", pretraind=False)
    with pytest.raises(CardError, match=r"'pretraind' \(did you mean 'pretrained'\?\)"):
        load_card(path)


def test_unknown_card_id_lists_close_matches():
    with pytest.raises(ValueError, match="dino-vits16"):
        load_card("dino-vit16")
    with pytest.raises(FileNotFoundError):
        load_card("no/such/card.yaml")


def test_search_path_order_and_overrides(tmp_path, monkeypatch):
    user = tmp_path / "user_cards"
    raw = yaml.safe_load((CARDS_DIR / "pixels.yaml").read_text())
    _write_card(user, **{**raw, "name": "my pixels"})
    _write_card(user, id="extra-card", source="timm", model="resnet18", pretrained=False)
    assert load_card("pixels", cards_dir=user).name == "my pixels"
    assert load_card("pixels").name == "Raw pixels"
    monkeypatch.setenv("SSCB_MODEL_CARDS", str(user))
    assert card_dirs()[0] == user
    assert load_card("extra-card").path == user / "extra-card.yaml"
    assert {"extra-card", "pixels", "dino-vits16"} <= {c.id for c in list_cards()}
    monkeypatch.setenv("SSCB_MODEL_CARDS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="SSCB_MODEL_CARDS"):
        list_cards()


def test_duplicate_ids_in_one_folder_are_rejected(tmp_path):
    _write_card(tmp_path, id="twin", source="timm", model="resnet18")
    (tmp_path / "twin-copy.yaml").write_text((tmp_path / "twin.yaml").read_text())
    with pytest.raises(CardError, match="defined twice"):
        list_cards(tmp_path)


def test_adhoc_random_arch_and_argument_errors():
    backbone = create_backbone(None, arch="resnet18", pretrained=False)
    assert backbone.card.id == "random-resnet18" and backbone.feature_dim == 512
    assert backbone.card.preprocessing == Preprocessing.from_timm_config(timm.get_pretrained_cfg("resnet18").to_dict())
    with pytest.raises(ValueError, match="checkpoint"):
        create_backbone(None, arch="resnet18")
    with pytest.raises(ValueError, match="pass arch=ARCH with checkpoint=PATH"):
        create_backbone(None)
    with pytest.raises(ValueError, match="only applies with checkpoint=PATH"):
        create_backbone("dino-vits16", arch="resnet18")
    with pytest.raises(ValueError, match="device"):
        create_backbone("pixels", device="gpu0")


# --------------------------------------------------------------------------------------------------------
# The seed paper's backbones: manual weights, our own architectures, their checkpoint layouts
# --------------------------------------------------------------------------------------------------------


def test_seed_paper_cards_exist_with_their_architectures():
    cards = {c.id: c for c in list_cards()}
    for card_id in ("infomin-resnet50", "infomin-resnext152", "simclr-resnet50", "simclr-resnet50-4x",
                    "simclrv2-resnet50", "simclrv2-resnet152-sk", "simclrv2-resnet152-3x-sk", "byol-resnet50",
                    "ibot-vits16", "ibot-vitb16", "ibot-vitl16", "msn-vits16", "msn-vitb16", "msn-vitl16",
                    "supervised-resnet152s-gluon"):
        assert card_id in cards
    with torch.device("meta"):
        rx152 = build_arch(cards["infomin-resnext152"].build_arch, cards["infomin-resnext152"].model_kwargs)
        sk3x = build_arch(cards["simclrv2-resnet152-3x-sk"].build_arch, cards["simclrv2-resnet152-3x-sk"].model_kwargs)
    assert [len(getattr(rx152, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    assert rx152.layer1[0].conv2.groups == 32 and rx152.layer1[0].conv2.out_channels == 128  # 32x4d
    assert [len(stage.blocks) for stage in list(sk3x.net)[1:]] == [3, 8, 36, 3]
    assert sum(p.numel() for p in sk3x.parameters()) == pytest.approx(795e6, rel=0.01)  # README: 795M


def test_manual_card_without_its_file_says_how_to_obtain_it(offline_caches):
    start = time.perf_counter()
    with pytest.raises(RuntimeError) as info:
        create_backbone("simclrv2-resnet152-sk")
    assert time.perf_counter() - start < 5
    message = str(info.value)
    assert "Separius/SimCLRv2-Pytorch" in message and "r152_1x_sk1" in message
    assert str(offline_caches / "torch_hub" / "checkpoints") in message and "--checkpoint" in message


def test_pycontrast_infomin_layout_loads_from_the_cache(offline_caches, tmp_path):
    """PyContrast saves {"model": {"module.encoder.*", "module.head.*", "module.jigsaw.*"}, "model_ema": ...}."""
    encoder, ema = _tv_resnet18(31), _tv_resnet18(32)
    model_sd = {f"module.encoder.{k}": v for k, v in encoder.state_dict().items() if not k.startswith("fc.")}
    model_sd.update({"module.head.mlp.0.weight": torch.randn(512, 512), "module.jigsaw.0.weight": torch.randn(8, 8)})
    ema_sd = {f"encoder.{k}": v for k, v in ema.state_dict().items() if not k.startswith("fc.")}
    target = offline_caches / "torch_hub" / "checkpoints" / "InfoMin_test.pth"
    target.parent.mkdir(parents=True)
    torch.save({"model": model_sd, "model_ema": ema_sd, "epoch": 800}, target)
    _write_card(tmp_path / "cards", id="infomin-test", source="manual", filename="InfoMin_test.pth",
                arch="torchvision:resnet18", checkpoint_key="model", prefix="module.encoder.",
                obtain="download it from https://example.org/share")
    backbone = create_backbone(load_card("infomin-test", cards_dir=tmp_path / "cards"))
    encoder.fc = nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(encoder, x), atol=1e-6)
    assert backbone.weights_id.startswith("file:") and backbone.weights_id.endswith("#InfoMin_test.pth")


def test_simclrv2_conversion_layout_loads_into_our_architecture(offline_caches, tmp_path):
    """Separius/SimCLRv2-Pytorch writes {"resnet": ResNet state dict incl. the supervised fc, "head": ...}."""
    from ssl_cluster_bench.backbones.archs import SimCLRv2ResNet

    torch.manual_seed(33)
    reference = SimCLRv2ResNet(depth=50, width=1, sk_ratio=0.0625)
    for m in reference.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    state = {**reference.state_dict(), "fc.weight": torch.randn(1000, 2048), "fc.bias": torch.randn(1000)}
    path = offline_caches / "torch_hub" / "checkpoints" / "r50_1x_sk1.pth"
    path.parent.mkdir(parents=True)
    torch.save({"resnet": state, "head": {"layers.0.weight": torch.randn(2048, 2048)}}, path)
    raw = yaml.safe_load((CARDS_DIR / "simclrv2-resnet50.yaml").read_text())
    _write_card(tmp_path / "cards", **{**raw, "id": "simclrv2-r50-sk-test", "filename": "r50_1x_sk1.pth",
                                       "model_kwargs": {"depth": 50, "width": 1, "sk_ratio": 0.0625}})
    backbone = create_backbone(load_card("simclrv2-r50-sk-test", cards_dir=tmp_path / "cards"))
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(_reference(backbone.model, x), _reference(reference, x), atol=1e-5)
    assert backbone.feature_dim == 2048
    # passed by hand (--checkpoint) the file is searched and found under its "resnet" key
    card = load_card("simclrv2-r50-sk-test", cards_dir=tmp_path / "cards")
    by_hand = create_backbone(card, checkpoint=path)
    assert torch.allclose(_reference(by_hand.model, x), _reference(reference, x), atol=1e-5)
    with pytest.raises(RuntimeError, match="wrong shape|refusing to run with random weights"):
        create_backbone("simclrv2-resnet50", checkpoint=path)  # the SK file into the plain ResNet-50
    with pytest.raises(ValueError, match="preprocessing block"):
        create_backbone(None, arch="sscb:simclrv2_resnet", checkpoint=path)


def test_simclrv2_selective_kernel_and_shortcut_semantics():
    """Zero mixing logits average the two branches; the SK shortcut pools zero-padded 2x2 windows, stride 1 too."""
    from ssl_cluster_bench.backbones.archs import _Projection, _SelectiveKernel

    torch.manual_seed(34)
    sk = _SelectiveKernel(4, 4, stride=1, sk_ratio=0.0625).eval()
    nn.init.zeros_(sk.mixing_conv[2].weight)
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        a, b = torch.chunk(sk.main_conv(x), 2, dim=1)
        assert torch.allclose(sk(x), (a + b) / 2, atol=1e-6)
    proj = _Projection(1, 1, stride=1, sk_ratio=0.0625).eval()
    nn.init.ones_(proj.shortcut[2].weight)
    image = torch.arange(9.0).reshape(1, 1, 3, 3)
    with torch.no_grad():
        out = proj.shortcut(image)[0, 0]
    expected = torch.tensor([[(0 + 1 + 3 + 4) / 4, (1 + 2 + 4 + 5) / 4, (2 + 5) / 4],
                             [(3 + 4 + 6 + 7) / 4, (4 + 5 + 7 + 8) / 4, (5 + 8) / 4],
                             [(6 + 7) / 4, (7 + 8) / 4, 8 / 4]])
    assert torch.allclose(out, expected)


def test_simclr_wide_resnet50_keeps_torchvision_keys():
    """tonylins/simclr-converter files use torchvision's names with every width (stem included) x4."""
    with torch.device("meta"):
        wide = build_arch("sscb:simclr_wide_resnet50", {"width": 4})
        plain = torchvision.models.resnet50()
    wide_sd, plain_sd = wide.state_dict(), {k: v for k, v in plain.state_dict().items() if not k.startswith("fc.")}
    assert set(wide_sd) == set(plain_sd)
    assert wide_sd["conv1.weight"].shape == (256, 3, 7, 7)
    assert wide_sd["layer4.2.conv3.weight"].shape == (8192, 2048, 1, 1)
    assert all(wide_sd[k].numel() == 16 * plain_sd[k].numel() for k in plain_sd if k.endswith("conv2.weight"))
    assert probe_feature_dim("sscb:simclr_wide_resnet50", {"width": 4}) == 8192
    with pytest.raises(ValueError, match="no sscb architecture 'simclrv2_resnet5'.*close matches: simclrv2_resnet"):
        parse_arch("sscb:simclrv2_resnet5")


def test_msn_target_encoder_layout(tmp_path):
    """MSN: {"target_encoder": {"module.*", "module.fc.*" projection head}, "encoder": ..., "prototypes": ...}."""
    torch.manual_seed(35)
    kwargs = dict(img_size=32, depth=2)
    target, online = (timm.create_model("vit_tiny_patch16_224", num_classes=0, **kwargs) for _ in range(2))
    head = {"module.fc.fc1.weight": torch.randn(64, 192), "module.fc.bn1.weight": torch.randn(64)}
    path = tmp_path / "torch_hub" / "checkpoints" / "msn_test.pth.tar"  # already downloaded
    path.parent.mkdir(parents=True)
    torch.save({"target_encoder": {**{f"module.{k}": v for k, v in target.state_dict().items()}, **head},
                "encoder": {f"module.{k}": v for k, v in online.state_dict().items()},
                "prototypes": torch.randn(1024, 64), "epoch": 600}, path)
    _write_card(tmp_path / "cards", id="msn-test", source="url", url="https://example.org/msn/msn_test.pth.tar", arch="timm:vit_tiny_patch16_224",
                model_kwargs=kwargs, checkpoint_key="target_encoder", prefix="module.",
                feature={"description": "cls", "dim": 192})
    backbone = create_backbone(load_card("msn-test", cards_dir=tmp_path / "cards"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(_reference(backbone.model, x), _reference(target, x), atol=1e-5)
    assert not torch.allclose(_reference(backbone.model, x), _reference(online, x), atol=1e-3)


@pytest.mark.parametrize("change, field", [
    ({"source": "manual", "arch": "torchvision:resnet18", "obtain": "x"}, "filename"),
    ({"source": "manual", "arch": "torchvision:resnet18", "filename": "a/b.pth", "obtain": "x"}, "filename"),
    ({"source": "manual", "arch": "torchvision:resnet18", "filename": "b.pth"}, "obtain"),
    ({"status": "maybe"}, "status"),
    ({"source": "url", "url": "https://x/y.pth", "arch": "sscb:simclrv2_resnet", "preprocessing": None},
     "preprocessing"),
    ({"arch": "keras:resnet50"}, "arch"),
])
def test_new_card_fields_are_validated(tmp_path, change, field):
    path = _write_card(tmp_path, **{"id": "broken", "source": "timm", "model": "resnet18", **change})
    with pytest.raises(CardError) as info:
        load_card(path)
    assert str(path) in str(info.value) and repr(field) in str(info.value)
