"""Images as users have them, as real files on disk: high bit depths, EXIF rotation, transparency, symlink
loops, names that are not UTF-8, mixed aspect ratios, each read through the dataset and extraction code."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from ssl_cluster_bench import cli
from ssl_cluster_bench.backbones import create_backbone
from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.data.images import ImageFolderDataset
from ssl_cluster_bench.extraction import extract_features


def _pixels(root, name):
    """The RGB pixels the dataset hands out for the file ``name`` (relative to ``root``)."""
    ds = ImageFolderDataset(root)
    image = ds[[ds.sample_id(i) for i in range(len(ds))].index(name)][0]
    assert image is not None and image.mode == "RGB"
    return np.asarray(image)


def _grey(path, grey):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grey).save(path)


# 16-bit values spread over the whole range, with their 8-bit value worked out by hand: v / 257 rounded
# (65535 / 257 = 255; 32896 / 257 = 128.0; 128 / 257 = 0.498 -> 0; 129 / 257 = 0.502 -> 1; 1000 / 257 = 3.89 -> 4).
SIXTEEN = np.array([[0, 128, 129, 1000], [257, 32896, 65278, 65535]], dtype=np.uint16)
EIGHT = np.array([[0, 0, 1, 4], [1, 128, 254, 255]], dtype=np.uint8)


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    root = tmp_path / "imgs"
    _grey(root / "c" / "png16.png", SIXTEEN)  # PIL opens it as I;16
    (root / "c").mkdir(exist_ok=True)
    Image.frombytes("I;16B", SIXTEEN.shape[::-1], SIXTEEN.astype(">u2").tobytes()).save(root / "c" / "big.tif")
    _grey(root / "c" / "pgm16.pgm", SIXTEEN)  # PIL opens 16-bit PGM as mode I (32-bit int)
    gradient = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)  # every 8-bit level once
    _grey(root / "c" / "gradient.png", gradient)
    modes = {name: Image.open(root / "c" / name).mode for name in ("png16.png", "big.tif", "pgm16.pgm")}
    assert modes == {"png16.png": "I;16", "big.tif": "I;16B", "pgm16.pgm": "I"}
    for name in modes:
        rgb = _pixels(root, f"c/{name}")
        np.testing.assert_array_equal(rgb, np.repeat(EIGHT[..., None], 3, axis=2), err_msg=name)
    levels = _pixels(root, "c/gradient.png")[..., 0]
    np.testing.assert_array_equal(levels.ravel(), np.arange(256))  # was all 255 but the first pixel


@pytest.mark.parametrize("values, expected", [
    # [0, 1] floats: x 255 rounded (0.5 * 255 = 127.5 -> 128, numpy rounds half to even)
    ([[0.0, 0.25, 0.5, 1.0]], [[0, 64, 128, 255]]),
    # beyond 255 but within 16 bits: / 257 like 16-bit integers
    ([[0.0, 257.0, 32896.0, 65535.0]], [[0, 1, 128, 255]]),
    # negative values (e.g. [-1, 1] normalised): the image's min..max stretched to 0..255
    ([[-1.0, 0.0, 1.0, np.nan]], [[0, 128, 255, 0]]),
])
def test_float_tiff_follows_its_range_convention(tmp_path, values, expected):
    root = tmp_path / "imgs"
    (root / "c").mkdir(parents=True)
    Image.fromarray(np.array(values, dtype=np.float32), mode="F").save(root / "c" / "float.tif")
    assert Image.open(root / "c" / "float.tif").mode == "F"
    np.testing.assert_array_equal(_pixels(root, "c/float.tif")[..., 1], np.array(expected, dtype=np.uint8))


def test_exif_orientation_is_applied(tmp_path):
    root = tmp_path / "imgs"
    (root / "c").mkdir(parents=True)
    stored = np.zeros((16, 32, 3), dtype=np.uint8)  # 32 wide, 16 high: left half black, right half white
    stored[:, 16:] = 255
    exif = Image.Exif()
    exif[274] = 6  # Orientation 6: the camera was turned, the viewer rotates 90 degrees clockwise
    Image.fromarray(stored).save(root / "c" / "phone.jpg", exif=exif, quality=95)
    rgb = _pixels(root, "c/phone.jpg")
    assert rgb.shape == (32, 16, 3)  # upright: 16 wide, 32 high
    assert rgb[:14].mean() < 20 and rgb[18:].mean() > 235  # the stored left half is now on top


def test_transparency_is_composited_on_white(tmp_path):
    root = tmp_path / "imgs"
    (root / "c").mkdir(parents=True)
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)  # black pixels: opaque, half transparent, fully transparent
    rgba[0, :, 3] = [255, 128, 0]
    Image.fromarray(rgba, mode="RGBA").save(root / "c" / "rgba.png")
    Image.fromarray(rgba[..., [0, 3]], mode="LA").save(root / "c" / "la.png")
    palette = Image.new("P", (3, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30])
    palette.putdata([1, 0, 1])
    palette.save(root / "c" / "palette.png", transparency=0)
    cmyk = Image.new("CMYK", (3, 1), (0, 255, 255, 0))  # pure magenta + yellow ink: red
    cmyk.save(root / "c" / "cmyk.jpg", quality=100)
    # 255 * (1 - 128/255) = 127 white showing through the half-transparent black pixel
    expected_grey = np.array([0, 127, 255], dtype=np.uint8)
    for name in ("rgba.png", "la.png"):
        np.testing.assert_array_equal(_pixels(root, f"c/{name}")[0], np.repeat(expected_grey[:, None], 3, 1))
    np.testing.assert_array_equal(_pixels(root, "c/palette.png")[0],
                                  [[10, 200, 30], [255, 255, 255], [10, 200, 30]])
    red = _pixels(root, "c/cmyk.jpg")[0].astype(int)
    assert (red[:, 0] > 240).all() and (red[:, 1:] < 15).all()


@pytest.mark.parametrize("loop_target", ["..", "tmp_path"])  # back to the root, or above it
def test_symlink_loop_and_links_count_each_image_once(tmp_path, caplog, loop_target):
    root = tmp_path / "imgs"
    outside = tmp_path / "elsewhere" / "birds"  # a class folder kept on another disk, linked in
    for folder, n in ((root / "a", 2), (root / "b", 2), (outside, 1)):
        for i in range(n):
            _grey(folder / f"{i}.png", np.full((4, 4), 40 * i, dtype=np.uint8))
    # without care a/loop/a/loop/..., a/loop/b/... (or the whole tmp_path tree) is listed ~40 times over
    (root / "a" / "loop").symlink_to(".." if loop_target == ".." else tmp_path)
    (root / "a" / "also-b0.png").symlink_to(root / "b" / "0.png")  # a second name of an image in b
    (root / "birds").symlink_to(outside)
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.data.images"):
        ds = ImageFolderDataset(root)
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert ids == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "birds/0.png"]
    assert ds.targets.tolist() == [0, 0, 1, 1, 2]  # b/0.png keeps its own class, not a's link to it
    assert "1 symlinked folder(s)" in caplog.text and "'a/loop'" in caplog.text
    assert "'a/also-b0.png' is 'b/0.png'" in caplog.text


def test_non_utf8_name_is_skipped_listed_and_the_rest_extracted(tmp_path, caplog, capsys):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        for i in range(2):
            _grey(root / c / f"{i}.png", np.full((8, 8), 60 * i + 20, dtype=np.uint8))
    valid_png = (root / "a" / "0.png").read_bytes()
    fd = os.open(os.fsencode(root / "b") + b"/caf\xe9.png", os.O_WRONLY | os.O_CREAT)  # Latin-1 "café"
    os.write(fd, valid_png)
    os.close(fd)
    (root / "b" / "gone.png").symlink_to(root / "deleted.png")  # dangling: unreadable, listed too
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.data.images"):
        ds = ImageFolderDataset(root)
    ids = [ds.sample_id(i) for i in range(len(ds))]
    assert ids == ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/caf\\xe9.png", "b/gone.png"]
    assert "not valid UTF-8" in caplog.text and "'b/caf\\xe9.png'" in caplog.text
    assert ds.path(4).exists()  # the real name is kept for the file itself
    pd.DataFrame({"id": ids}).to_csv(tmp_path / "ids.csv", index=False)  # every id is encodable

    cache_dir = tmp_path / "cache"
    rc = cli.main(["extract", "--backbone", "random-resnet18", "--dataset", "imagefolder", "--data-root",
                   str(root), "--cache-dir", str(cache_dir), "--batch-size", "4"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    (manifest_path,) = cache_dir.glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    assert manifest["skipped"] == {"count": 2, "ids": ["b/caf\\xe9.png", "b/gone.png"]}
    assert manifest["shape"] == [4, 512]
    assert "skipped 2 unreadable file(s)" in out.out


def test_non_utf8_class_folder_is_one_clear_error(tmp_path):
    root = tmp_path / "imgs"
    _grey(root / "a" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    os.mkdir(os.fsencode(root) + b"/caf\xe9")
    _grey(root / os.fsdecode(b"caf\xe9") / "0.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match=r"class folder '.*/imgs/caf\\xe9' has a name that is not valid UTF-8; "
                                         r"rename it"):
        ImageFolderDataset(root)


def test_mixed_aspect_ratios_extract_at_one_size(tmp_path):
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for name, (h, w) in {"a/wide.png": (100, 300), "a/tall.png": (300, 100), "b/square.png": (60, 60),
                         "b/wide.jpg": (90, 120)}.items():
        _grey(root / name, rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    backbone = create_backbone("random-resnet18")
    ds = ImageFolderDataset(root, transform=backbone.transform)
    assert {tuple(ds[i][0].shape) for i in range(len(ds))} == {(3, 32, 32)}
    entry = extract_features(backbone, ds, FeatureCache(tmp_path / "cache"), batch_size=4, progress=False)
    assert entry.manifest["shape"] == [4, 512] and entry.manifest["skipped"]["count"] == 0
    # a square image is exactly what the resize alone gave before the crop existed
    from torchvision import transforms as T
    pp = backbone.card.preprocessing
    square = ImageFolderDataset(root)[2][0]
    assert ds.sample_id(2) == "b/square.png" and square.size == (60, 60)
    resize_only = T.Compose([T.Grayscale(3), T.Resize(32, antialias=True), T.ToTensor(),
                             T.Normalize(pp.mean, pp.std)])(square)
    assert torch.equal(backbone.transform(square), resize_only)


def test_images_of_different_sizes_under_pixels_name_the_files(tmp_path):
    root = tmp_path / "imgs"
    _grey(root / "a" / "small.png", np.zeros((8, 8), dtype=np.uint8))
    _grey(root / "a" / "large.png", np.zeros((16, 8), dtype=np.uint8))
    backbone = create_backbone("pixels")
    ds = ImageFolderDataset(root, transform=backbone.transform)
    with pytest.raises(ValueError, match=r"different sizes.*'a/large.png' is 1x16x8, 'a/small.png' is 1x8x8.*"
                                         r"preprocessing.resize"):
        extract_features(backbone, ds, FeatureCache(tmp_path / "cache"), batch_size=4, progress=False)

