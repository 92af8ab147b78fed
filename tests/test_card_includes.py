"""Model cards inherit a shared preprocessing block (``preprocessing: {include: <name>}``), written once.

EXPECTED was printed from the 47 shipped cards as they were before the blocks existed (commit 1eb3348, every
card spelling its preprocessing out): per card the transform_id (which keys the feature cache) and a digest of
the whole resolved card (every field; the weights id is derived from these fields only), so moving a block
into a shared file can change neither the transform nor the weights any card stands for.
"""
import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import yaml

from ssl_cluster_bench.backbones.cards import BLOCKS_DIR, CardError, list_cards, load_card

CARDS_DIR = Path(__file__).resolve().parents[1] / "model_cards"

# card id -> (transform_id, sha256[:16] of the resolved card without its path)
EXPECTED = {
    "barlowtwins-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "6a2127613f62e72f"),
    "byol-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "b8b0976b59f23ec1"),
    "clip-vitb16": ("gray=0|resize=224|interp=bicubic|crop=224|unit=1|mean=0.48145466,0.4578275,0.40821073|std=0.26862954,0.26130258,0.27577711", "e35f3be1a364c254"),
    "clip-vitl14": ("gray=0|resize=224|interp=bicubic|crop=224|unit=1|mean=0.48145466,0.4578275,0.40821073|std=0.26862954,0.26130258,0.27577711", "03e46dbb6ded8223"),
    "dino-resnet50": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "539ef3e1690f2cd6"),
    "dino-vitb16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "ea5414548beb785f"),
    "dino-vitb8": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "5a40afd3c318a1f3"),
    "dino-vits16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "484fd6edc38dcc2a"),
    "dino-vits8": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "a6bce4a2239bfe0b"),
    "dinov2-vitb14": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "34aecd5b0460b1ea"),
    "dinov2-vitl14": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "7a872b483a941210"),
    "dinov2-vits14": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "a48c23c01e76315f"),
    "efficientnet-l2-ns-475": ("gray=0|resize=507|interp=bicubic|crop=475|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "bc4c87698fbe5a2f"),
    "efficientnet-l2-ns": ("gray=0|resize=833|interp=bicubic|crop=800|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "284a86ada7f59200"),
    "efficientnet-lite0-96": ("gray=0|resize=110|interp=bicubic|crop=96|unit=1|mean=0.5,0.5,0.5|std=0.5,0.5,0.5", "cc41dfc579af56aa"),
    "efficientnet-lite0": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.5,0.5,0.5|std=0.5,0.5,0.5", "dd8d006a878adb4b"),
    "ibot-vitb16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "83037916e8b1d0c9"),
    "ibot-vitl16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "e5df6b2a37212aaa"),
    "ibot-vits16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "2fd6a616fb24535d"),
    "ig-resnext101-32x48d": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "4cb4f167fa546d92"),
    "infomin-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "1445dd9558dc59f5"),
    "infomin-resnext152": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "067e75b43c30e2a1"),
    "mae-vitb16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "a5490ebcb57858ef"),
    "mae-vitl16": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "fa47b2b1c14a353a"),
    "mocov2-resnet50-200ep": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "bc50b7f63b76790c"),
    "mocov2-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "345fc5ca71215798"),
    "mocov3-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "84b862e4454b0502"),
    "mocov3-vitb16": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "e416b4227a1142c9"),
    "mocov3-vits16": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "b86a78086ef31f46"),
    "msn-vitb16": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "3f6bbc8f63ae6291"),
    "msn-vitl16": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "126d708b8e77fec7"),
    "msn-vits16": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "910501a10f36788a"),
    "pixels": ("gray=1|resize=-|interp=-|crop=-|unit=0|mean=0.0|std=1.0", "aec3e688dc294af8"),
    "random-resnet18": ("gray=3|resize=32|interp=bilinear|crop=-|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "69f26bc62cf84fef"),
    "simclr-resnet50-4x": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.0,0.0,0.0|std=1.0,1.0,1.0", "20dc070ea2cccda0"),
    "simclr-resnet50": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.0,0.0,0.0|std=1.0,1.0,1.0", "0a25a38b6d0ade92"),
    "simclrv2-resnet152-3x-sk": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.0,0.0,0.0|std=1.0,1.0,1.0", "add72b2f68c0eaaa"),
    "simclrv2-resnet152-sk": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.0,0.0,0.0|std=1.0,1.0,1.0", "076fe0bef2d0dcfa"),
    "simclrv2-resnet50": ("gray=0|resize=256|interp=bicubic|crop=224|unit=1|mean=0.0,0.0,0.0|std=1.0,1.0,1.0", "c5dc2a6117eed835"),
    "simsiam-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "5162391d4ee41c7f"),
    "supervised-resnet152-v2": ("gray=0|resize=232|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "6aacd689054c0105"),
    "supervised-resnet152": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "eb78db5fd65d5b7b"),
    "supervised-resnet152s-gluon": (None, "15337177da626a94"),
    "supervised-resnet50-v2": ("gray=0|resize=232|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "c2d82ffff79baffd"),
    "supervised-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "ea2a83cf8c0c8aa2"),
    "swav-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "180a39639f7ae6ca"),
    "vicreg-resnet50": ("gray=0|resize=256|interp=bilinear|crop=224|unit=1|mean=0.485,0.456,0.406|std=0.229,0.224,0.225", "30c39abdedd989bf"),
}


def _digest(card) -> str:
    fields = dataclasses.asdict(card)
    fields.pop("path")
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


@pytest.mark.parametrize("card_id", sorted(EXPECTED))
def test_every_shipped_card_resolves_to_the_card_it_was_before_the_blocks(card_id):
    card = load_card(CARDS_DIR / f"{card_id}.yaml")
    transform_id = card.preprocessing.transform_id if card.preprocessing is not None else None
    assert (transform_id, _digest(card)) == EXPECTED[card_id]


def test_each_preprocessing_block_is_written_once():
    blocks = {p.stem: yaml.safe_load(p.read_text()) for p in (CARDS_DIR / BLOCKS_DIR).glob("*.yaml")}
    assert len(blocks) == 5
    spelled_out, uses = [], {name: 0 for name in blocks}
    for path in sorted(CARDS_DIR.glob("*.yaml")):
        pp = yaml.safe_load(path.read_text()).get("preprocessing") or {}
        if "include" in pp:
            uses[pp["include"]] += 1
        elif pp:
            spelled_out.append(json.dumps(pp, sort_keys=True))
    assert sum(uses.values()) == 40 and min(uses.values()) >= 2, uses
    # no card repeats another card's block, nor a shared block
    assert len(set(spelled_out)) == len(spelled_out)
    assert not set(spelled_out) & {json.dumps(b, sort_keys=True) for b in blocks.values()}
    # the listing reads cards only (the 47 above and cards added since): the blocks' folder is never taken for cards
    listed = sorted(c.id for c in list_cards(CARDS_DIR))
    assert listed == sorted(path.stem for path in CARDS_DIR.glob("*.yaml")) and set(EXPECTED) <= set(listed)


def _card(folder: Path, preprocessing, card_id="my-card") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    raw = yaml.safe_load((CARDS_DIR / "supervised-resnet50.yaml").read_text())
    path = folder / f"{card_id}.yaml"
    path.write_text(yaml.safe_dump({**raw, "id": card_id, "preprocessing": preprocessing}))
    return path


def test_a_card_includes_a_block_of_its_own_folder_and_overrides_its_fields(tmp_path):
    (tmp_path / BLOCKS_DIR).mkdir()
    (tmp_path / BLOCKS_DIR / "small.yaml").write_text("resize: 40\ncrop: center\ninput_size: 32\n"
                                                      "mean: [0.5, 0.5, 0.5]\nstd: [0.25, 0.25, 0.25]\n")
    _card(tmp_path, {"include": "small", "interpolation": "bicubic", "input_size": 36})
    _card(tmp_path, {"include": "imagenet-resize232-crop224-bilinear"}, card_id="shipped-block")
    cards = {c.id: c for c in list_cards(tmp_path) if c.path.parent == tmp_path}
    assert set(cards) == {"my-card", "shipped-block"}  # small.yaml is not a card
    pp = cards["my-card"].preprocessing
    assert (pp.resize, pp.input_size, pp.crop, pp.interpolation, pp.mean) == (40, 36, True, "bicubic", (0.5,) * 3)
    # a user folder may use the shipped blocks
    assert cards["shipped-block"].preprocessing == load_card("supervised-resnet50-v2").preprocessing


@pytest.mark.parametrize("preprocessing, block, message", [
    ({"include": "imagenet-resize256-crop224-bicubik"}, None,
     r"my-card.yaml: field 'preprocessing.include': no block 'imagenet-resize256-crop224-bicubik' in .*"
     r"\(did you mean 'imagenet-resize256-crop224-bicubic'\?\); known blocks: clip-resize224-crop224-bicubic, "),
    ({"include": ["a"]}, None, r"field 'preprocessing.include': must be the name of a block file in _preprocessing/"),
    ({"include": "blk"}, "resize: 256\nsize: 224\n", r"preprocessing block .*blk.yaml: unknown key\(s\) \['size'\]"),
    ({"include": "blk"}, "include: other\n", r"blk.yaml: field 'include': a block cannot include another block"),
    ({"include": "blk"}, "- resize\n", r"preprocessing block .*blk.yaml: must be a mapping of preprocessing fields"),
    ({"include": "blk"}, "mean: [0, 0, 0]\nstd: [0, 1, 1]\n",
     r"my-card.yaml \(preprocessing including .*blk.yaml\): field 'preprocessing.std': must be positive"),
])
def test_include_mistakes_are_one_line_naming_the_file_and_field(tmp_path, preprocessing, block, message):
    if block is not None:
        (tmp_path / BLOCKS_DIR).mkdir()
        (tmp_path / BLOCKS_DIR / "blk.yaml").write_text(block)
    path = _card(tmp_path, preprocessing)
    with pytest.raises(CardError, match=message) as info:
        load_card(path)
    assert "\n" not in str(info.value)
