"""BackboneSpec / ExtractSettings records, key_match: order for user checkpoints, and the backbone options reaching
every command that extracts (ObjectNet included)."""
import hashlib

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from ssl_cluster_bench import api
from ssl_cluster_bench.backbones import create_backbone
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.specs import BackboneSpec, ExtractSettings, backbone_spec, extract_settings

from test_objectnet import trees  # noqa: F401  (fixture: tiny ImageNet + ObjectNet folder trees)


# --------------------------------------------------------------------------------------------------------
# the records
# --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields, message", [
    ({"card": "pixels", "weights_only": "no"}, r"weights_only must be true or false, got 'no'"),
    ({"card": "pixels", "momentum_encoder": 1}, r"momentum_encoder must be true, false or None"),
    ({"card": "pixels", "key_match": "position"}, r"key_match must be one of 'name', 'order', got 'position'"),
    ({"card": ""}, r"card must be a non-empty string"),
    ({"checkpoint": "a.pth"}, r"a checkpoint needs its architecture: pass arch=ARCH with checkpoint=PATH"),
    ({"card": "pixels", "key_match": "order"}, r"key_match 'order' applies to the tensors of a checkpoint: pass "
                                               r"checkpoint=PATH"),
    ({"card": "pixels", "checkpiont": "a.pth"}, r"unknown backbone field\(s\) \['checkpiont'\] \(did you mean "
                                                r"'checkpoint'\?\)"),
])
def test_backbone_spec_refuses_bad_fields_naming_them(fields, message):
    with pytest.raises((ValueError, TypeError), match=message):
        BackboneSpec.from_dict(fields)


def test_backbone_spec_round_trips_and_options_replace_fields(tmp_path):
    spec = BackboneSpec(checkpoint=tmp_path / "m.pth", arch="resnet18", weights_only=False, momentum_encoder=True,
                        checkpoint_key="state_dict", key_match="order")
    assert spec.checkpoint == str(tmp_path / "m.pth")  # a path is stored as its string (the record is YAML-able)
    assert BackboneSpec.from_dict(spec.to_dict()) == spec
    assert spec.label == "m.pth (resnet18)" and BackboneSpec("pixels").label == "pixels"
    # the Python API's keywords: None means "not given", so a spec passed whole keeps its fields
    assert backbone_spec(spec, momentum_encoder=None, checkpoint_key="model") == spec.replace(checkpoint_key="model")
    assert backbone_spec("pixels") == BackboneSpec(card="pixels")


def test_extract_settings_refuse_bad_fields_and_round_trip():
    for fields, message in [({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
                            ({"chunk_size": 1.5}, "chunk_size must be a positive integer"),
                            ({"num_workers": -1}, "num_workers must be an integer >= 0 or None"),
                            ({"views": -2}, "views must be an integer >= 0, got -2"),
                            ({"amp": "yes"}, "amp must be 'auto', true or false"),
                            ({"batch_sise": 8}, r"did you mean 'batch_size'")]:
        with pytest.raises(ValueError, match=message):
            ExtractSettings.from_dict(fields)
    settings = ExtractSettings(batch_size=8, num_workers=0, device="cpu", chunk_size=16, views=2)
    assert ExtractSettings.from_dict(settings.to_dict()) == settings
    assert extract_settings(settings, batch_size=None, device="cuda") == settings.replace(device="cuda")


def test_python_api_refuses_a_misspelt_option_naming_it(tmp_path):
    with pytest.raises(TypeError, match=r"\['batch_sise'\] \(did you mean 'batch_size'\?\)"):
        api.extract("pixels", "digits", cache=tmp_path / "c", batch_sise=8)
    assert not (tmp_path / "c").exists()  # refused before anything was made


def test_records_and_keywords_make_the_same_cache_entry(tmp_path):
    """The records change how the options travel, not the cache key: same entry either way."""
    by_keywords = api.extract("pixels", "digits", cache=tmp_path / "c", batch_size=512, progress=False)
    by_records = api.extract(BackboneSpec("pixels"), "digits", cache=tmp_path / "c",
                             settings=ExtractSettings(batch_size=512), progress=False)
    assert by_records.path == by_keywords.path and by_keywords.key.weights == "builtin:pixels"


# --------------------------------------------------------------------------------------------------------
# key_match: order, for a checkpoint whose key names are not the architecture's
# --------------------------------------------------------------------------------------------------------
def _old_layout_mobilenet(tmp_path, seed: int = 7):
    """A torchvision MobileNetV2 with seeded weights, saved with every key renamed (as an old layout would be)."""
    torch.manual_seed(seed)
    model = torchvision.models.mobilenet_v2().eval()
    renamed = {f"layer{i:03d}.{key.rsplit('.', 1)[-1]}": value for i, (key, value) in
               enumerate(model.state_dict().items())}
    path = tmp_path / "mobilenet_v2_old_layout.pth"
    torch.save({"state_dict": renamed, "epoch": 90}, path)
    model.classifier = nn.Identity()
    return model, renamed, path


def test_key_match_order_loads_a_checkpoint_with_other_key_names(tmp_path):
    reference, _, path = _old_layout_mobilenet(tmp_path)
    # by name, nothing of the file matches the architecture: refused, not run with random weights
    with pytest.raises(RuntimeError, match="tensors are missing from the checkpoint"):
        create_backbone(None, arch="torchvision:mobilenet_v2", checkpoint=path)
    backbone = create_backbone(BackboneSpec(checkpoint=path, arch="torchvision:mobilenet_v2", key_match="order"))
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(backbone.model(x), reference(x), atol=1e-5)
    assert backbone.feature_dim == 1280
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    # its own cache key: never the entry of a by-name load of the same file
    assert backbone.weights_id == f"file:{digest}#arch=torchvision:mobilenet_v2#key_match=order"


def test_key_match_order_names_the_first_pair_that_differs(tmp_path, capsys):
    _, renamed, _ = _old_layout_mobilenet(tmp_path)
    bad_layout = dict(renamed)
    bad_layout["layer000.weight"] = torch.zeros(16, 3, 3, 3)  # the first conv: 32 filters in the architecture
    bad = tmp_path / "bad.pth"
    torch.save(bad_layout, bad)
    rc = main(["-q", "extract", "--checkpoint", str(bad), "--arch", "torchvision:mobilenet_v2", "--key-match", "order",
               "--dataset", "digits", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert ("the first pair that differs is #0: model features.0.0.weight (32, 3, 3, 3) vs checkpoint "
            "layer000.weight (16, 3, 3, 3)") in err
    assert "check the architecture (--arch ARCH)" in err and "arch=ARCH" not in err
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


# --------------------------------------------------------------------------------------------------------
# every command that extracts takes every backbone option: ObjectNet in a suite and on its own
# --------------------------------------------------------------------------------------------------------
def test_objectnet_extracts_with_the_momentum_encoder_in_a_suite_and_alone(tmp_path, trees, capsys):  # noqa: F811
    imagenet, objectnet = trees
    torch.manual_seed(1)
    query, key = torchvision.models.mobilenet_v3_small(), torchvision.models.mobilenet_v3_small()
    state = {f"module.encoder_q.{k}": v for k, v in query.state_dict().items() if not k.startswith("classifier.3.")}
    state.update({f"module.encoder_k.{k}": v for k, v in key.state_dict().items() if not k.startswith("classifier.3.")})
    ckpt = tmp_path / "moco.pth.tar"
    torch.save({"epoch": 200, "state_dict": state}, ckpt)
    loading = ["--checkpoint", str(ckpt), "--arch", "torchvision:mobilenet_v3_small", "--momentum-encoder",
               "--checkpoint-key", "state_dict"]
    suite = tmp_path / "on.yaml"
    suite.write_text("""
name: on
protocol: {methods: [kmeans], overcluster: [1.0], seeds: 1, pca_dim: 2, kmeans: {backend: sklearn, n_iter: 3}}
datasets:
  - {id: objectnet, kind: objectnet, split: train, roots: {imagenet: in1k, objectnet: onet}}
""")
    common = ["--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--batch-size", "64"]
    assert main(["-q", "suite", str(suite), "--data-root", f"in1k={imagenet}", "--data-root", f"onet={objectnet}",
                 "--results", str(tmp_path / "suite" / "lb.csv"), "--no-report", *loading, *common]) == 0, \
        capsys.readouterr().err
    assert main(["-q", "objectnet", "--imagenet-root", str(imagenet), "--objectnet-root", str(objectnet),
                 "--results", str(tmp_path / "alone" / "lb.csv"), "--seeds", "1", "--pca-dim", "2",
                 "--backend", "sklearn", "--kmeans-iter", "3", *loading, *common]) == 0, capsys.readouterr().err
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()[:16]
    expected = f"file:{digest}#arch=torchvision:mobilenet_v3_small#momentum_encoder#key=state_dict"
    for results in (tmp_path / "suite" / "lb.csv", tmp_path / "alone" / "lb.csv"):
        rows = read_leaderboard(results)
        assert sorted(rows.protocol) == ["objectnet-direct", "objectnet-transfer"]
        assert set(rows.weights) == {expected}, results
    # the suite and the command made the same two cache entries (ObjectNet, ImageNet): nothing extracted twice
    entries = [p for p in (tmp_path / "cache").iterdir() if (p / "manifest.json").is_file()]
    assert len(entries) == 2
    a, b = (read_leaderboard(r) for r in (tmp_path / "suite" / "lb.csv", tmp_path / "alone" / "lb.csv"))
    assert np.allclose(a.sort_values("protocol").acc, b.sort_values("protocol").acc)


def test_every_command_that_extracts_takes_every_backbone_and_extraction_option():
    """One shared group of flags per record: a new BackboneSpec / ExtractSettings field reaches every command."""
    import dataclasses

    from ssl_cluster_bench.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0].choices
    backbone = {"--checkpoint", "--arch", "--trust-checkpoint", "--momentum-encoder", "--checkpoint-key",
                "--key-match"}
    extraction = {"--batch-size", "--workers", "--device", "--chunk-size", "--verify-content"}
    # every field of the records has its flag here (card: --backbone(s); pretrained, amp, channels_last and
    # augment_seed are Python-only; views: `extract` only, the other commands cluster the plain features)
    fields = {f.name for f in dataclasses.fields(BackboneSpec)} | {f.name for f in dataclasses.fields(ExtractSettings)}
    flagged = {"checkpoint", "arch", "weights_only", "momentum_encoder", "checkpoint_key", "key_match", "batch_size",
               "num_workers", "device", "chunk_size", "verify_content", "views"}
    assert fields - flagged == {"card", "pretrained", "amp", "channels_last", "augment_seed"}
    for name in ("extract", "run", "scan", "suite", "objectnet"):
        flags = {s for action in commands[name]._actions for s in action.option_strings}
        assert backbone | extraction <= flags, (name, sorted((backbone | extraction) - flags))
    assert "--views" in {s for a in commands["extract"]._actions for s in a.option_strings}
