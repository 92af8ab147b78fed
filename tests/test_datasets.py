"""Tests for the local-root image datasets, on tiny generated trees, pickles and binaries."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchvision import transforms

from ssl_cluster_bench.data import get_dataset
from ssl_cluster_bench.data.images import (
    CIFAR10Dataset,
    CIFAR100Dataset,
    ImageFolderDataset,
    ImageNetDataset,
    STL10Dataset,
    read_class_list,
)
from ssl_cluster_bench.data.objectnet import ObjectNetDataset

TO_8x8 = transforms.Compose([transforms.Resize((8, 8)), transforms.ToTensor()])


@pytest.fixture(autouse=True)
def _strict_truncation(monkeypatch):
    # Another library may flip this global; the tests pin PIL's default (truncated = unreadable).
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", False)


def _save(path, size=(12, 10), color=(200, 30, 40), mode="RGB", fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else 128).save(path, format=fmt)
    return path


def _truncated_jpeg(path):
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(path, format="JPEG", quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def folder_tree(tmp_path):
    root = tmp_path / "flowers"
    _save(root / "cat" / "a.png", mode="L")  # greyscale on disk, must come back RGB
    _save(root / "cat" / "b.jpg")
    (root / "cat" / "corrupt.jpg").write_bytes(np.random.default_rng(1).bytes(300))
    _truncated_jpeg(root / "cat" / "trunc.jpg")
    (root / "cat" / "notes.txt").write_text("not an image")
    _save(root / "dog" / "c.png")
    _save(root / "dog" / "nested" / "d.JPEG", fmt="JPEG")
    _save(root / ".thumbnails" / "x.png")  # hidden folder: not a class
    return root


def test_image_folder_labels_ids_and_corrupt_files(folder_tree, caplog):
    ds = ImageFolderDataset(folder_tree, transform=TO_8x8)
    assert ds.name == "flowers" and ds.split == "all"
    assert ds.classes == ["cat", "dog"]
    assert ds.targets.dtype == np.int64
    assert ds.targets.tolist() == [0, 0, 0, 0, 1, 1]
    assert [ds.sample_id(i) for i in range(len(ds))] == [
        "cat/a.png", "cat/b.jpg", "cat/corrupt.jpg", "cat/trunc.jpg", "dog/c.png", "dog/nested/d.JPEG",
    ]
    with caplog.at_level(logging.DEBUG, logger="ssl_cluster_bench.data.images"):
        items = [ds[i] for i in range(len(ds))]
    broken = [i for i, (image, _, _) in enumerate(items) if image is None]
    assert broken == [2, 3]
    assert "corrupt.jpg" in caplog.text and "trunc.jpg" in caplog.text
    for i, (image, label, index) in enumerate(items):
        assert index == i and label == ds.targets[i]
        if i not in broken:
            assert isinstance(image, torch.Tensor) and image.shape == (3, 8, 8)
    assert ds[-1][2] == 5
    with pytest.raises(IndexError, match="out of range"):
        ds[6]


def test_image_folder_without_transform_returns_rgb_pil(folder_tree):
    ds = ImageFolderDataset(folder_tree)
    image, label, _ = ds[0]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (12, 10)
    assert image.getpixel((0, 0)) == (128, 128, 128)
    assert ds.path(0) == folder_tree / "cat" / "a.png"


def test_truncated_images_follow_pil_global_flag(folder_tree, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    ds = ImageFolderDataset(folder_tree)
    assert ds[3][0].size == (64, 64)  # padded decode instead of None, as the caller asked
    assert ds[2][0] is None  # random bytes stay unreadable


def test_image_folder_class_subset_order_and_errors(folder_tree):
    ds = ImageFolderDataset(folder_tree, classes=["dog", "cat"])
    assert ds.classes == ["dog", "cat"]
    assert ds.targets.tolist() == [0, 0, 1, 1, 1, 1]
    assert ds.sample_id(0) == "dog/c.png"
    assert len(ImageFolderDataset(folder_tree, classes=["dog"])) == 2
    with pytest.raises(ValueError, match=r"'bird'.*available class folders: 'cat', 'dog'"):
        ImageFolderDataset(folder_tree, classes=["cat", "bird"])
    with pytest.raises(ValueError, match="more than once"):
        ImageFolderDataset(folder_tree, classes=["cat", "cat"])
    with pytest.raises(ValueError, match="extensions"):
        ImageFolderDataset(folder_tree, extensions=())


def test_image_folder_split_and_layout_errors(tmp_path):
    _save(tmp_path / "ds" / "train" / "a" / "1.png")
    _save(tmp_path / "ds" / "train" / "b" / "2.png")
    (tmp_path / "ds" / "train" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no image with extension.*'empty'"):
        ImageFolderDataset(tmp_path / "ds", split="train")
    ds = ImageFolderDataset(tmp_path / "ds", split="train", classes=["a", "b"])
    assert ds.split == "train" and ds.sample_id(1) == "train/b/2.png"
    with pytest.raises(FileNotFoundError, match=r"split 'test' not found.*'train'"):
        ImageFolderDataset(tmp_path / "ds", split="test")
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*Expected layout:.*<class_a>/") as err:
        ImageFolderDataset(tmp_path / "missing")
    assert "img_0001.jpg" in str(err.value)


@pytest.fixture
def imagenet_root(tmp_path):
    root = tmp_path / "imagenet"
    for split, n in (("train", 2), ("val", 1)):
        for wnid in ("n01440764", "n01443537", "n02102040"):
            for k in range(n):
                _save(root / split / wnid / f"{wnid}_{k}.JPEG", fmt="JPEG")
    return root


def test_imagenet_full_and_subset_file(imagenet_root, tmp_path):
    full = ImageNetDataset(imagenet_root, split="train")
    assert full.name == "imagenet" and full.classes == ["n01440764", "n01443537", "n02102040"]
    assert full.targets.tolist() == [0, 0, 1, 1, 2, 2]

    subset = tmp_path / "imagenet_2.txt"
    subset.write_text("# SCAN-style subset\nn02102040 English springer\n\nn01440764 tench, Tinca tinca  # fish\n")
    assert read_class_list(subset) == {"n02102040": "English springer", "n01440764": "tench, Tinca tinca"}
    ds = ImageNetDataset(imagenet_root, split="val", subset=subset, transform=TO_8x8)
    # Labels follow sorted wnid order, re-indexed over the subset only.
    assert ds.classes == ["n01440764", "n02102040"]
    assert ds.targets.tolist() == [0, 1]
    assert ds.name == "imagenet2" and ds.descriptions["n02102040"] == "English springer"
    assert ds.sample_id(1) == "val/n02102040/n02102040_0.JPEG"
    assert ds[1][0].shape == (3, 8, 8) and ds[1][1] == 1

    assert ImageNetDataset(imagenet_root, split="val", subset=["n01443537"]).targets.tolist() == [0]
    with pytest.raises(ValueError, match="n09999999"):
        ImageNetDataset(imagenet_root, split="val", subset=["n01443537", "n09999999"])


def test_imagenet_errors(imagenet_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)does not exist.*Expected layout:.*val/") as err:
        ImageNetDataset(tmp_path / "nowhere", split="val")
    assert "n01440764" in str(err.value)
    flat = tmp_path / "flat"
    _save(flat / "train" / "n01440764" / "x.JPEG", fmt="JPEG")
    for k in range(3):
        _save(flat / "val" / f"ILSVRC2012_val_0000000{k}.JPEG", fmt="JPEG")
    with pytest.raises(FileNotFoundError, match=r"(?s)holds 3 images directly but no wnid folders.*class-folder"):
        ImageNetDataset(flat, split="val")
    with pytest.raises(ValueError, match="'train' or 'val'"):
        ImageNetDataset(imagenet_root, split="test")
    dup = tmp_path / "dup.txt"
    dup.write_text("n01440764\nn01440764 again\n")
    with pytest.raises(ValueError, match="line 2.*listed twice"):
        read_class_list(dup)


def _chw_rows(images_hwc):
    return images_hwc.transpose(0, 3, 1, 2).reshape(len(images_hwc), -1)


def _dump(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def test_cifar10_decodes_pixels_labels_and_ids(tmp_path):
    rng = np.random.default_rng(0)
    base = tmp_path / "cifar-10-batches-py"
    names = [f"class{k}" for k in range(10)]
    _dump(base / "batches.meta", {"label_names": names, "num_cases_per_batch": 2})
    train_images = rng.integers(0, 256, size=(10, 32, 32, 3), dtype=np.uint8)
    train_labels = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    for b in range(5):
        batch = {"data": _chw_rows(train_images[2 * b: 2 * b + 2]), "labels": train_labels[2 * b: 2 * b + 2]}
        if b == 0:  # Python-2 era pickles may come back with bytes keys
            batch = {k.encode(): v for k, v in batch.items()}
        _dump(base / f"data_batch_{b + 1}", batch)
    test_images = rng.integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    _dump(base / "test_batch", {"data": _chw_rows(test_images), "labels": [7, 8, 0]})

    train = CIFAR10Dataset(tmp_path, split="train")
    assert train.classes == names and len(train) == 10
    assert train.targets.tolist() == train_labels
    for i in (0, 5, 9):
        image, label, index = train[i]
        assert image.mode == "RGB" and image.size == (32, 32)
        np.testing.assert_array_equal(np.asarray(image), train_images[i])
        assert (label, index) == (train_labels[i], i)
    assert train.sample_id(0) == "data_batch_1:0"
    assert train.sample_id(5) == "data_batch_3:1"
    assert train.sample_id(9) == "data_batch_5:1"

    test = CIFAR10Dataset(base, split="test", transform=TO_8x8)  # root may be the archive folder itself
    assert test.targets.tolist() == [7, 8, 0] and test.sample_id(2) == "test_batch:2"
    assert test[2][0].shape == (3, 8, 8)

    (base / "data_batch_4").unlink()
    with pytest.raises(FileNotFoundError, match=r"(?s)data_batch_4.*Expected layout:.*cifar-10-batches-py/"):
        CIFAR10Dataset(tmp_path, split="train")
    with pytest.raises(ValueError, match="split must be one of"):
        CIFAR10Dataset(tmp_path, split="val")
    _dump(base / "test_batch", {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]})
    with pytest.raises(ValueError, match=r"\(N, 3072\) uint8"):
        CIFAR10Dataset(tmp_path, split="test")
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py"):
        CIFAR10Dataset(tmp_path / "other")


def test_cifar100_coarse_and_fine(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    coarse_names = [f"super{k}" for k in range(20)]
    fine_names = [f"fine{k}" for k in range(100)]
    _dump(base / "meta", {"coarse_label_names": coarse_names, "fine_label_names": fine_names})
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    for split in ("train", "test"):
        _dump(base / split, {"data": _chw_rows(images), "coarse_labels": [19, 0, 7, 7], "fine_labels": [99, 4, 50, 51]})

    ds = CIFAR100Dataset(tmp_path, split="test")
    assert ds.name == "cifar100-20" and ds.classes == coarse_names
    assert ds.targets.tolist() == [19, 0, 7, 7]
    np.testing.assert_array_equal(np.asarray(ds[2][0]), images[2])
    assert ds.sample_id(3) == "test:3"
    fine = CIFAR100Dataset(tmp_path, split="train", label_type="fine")
    assert fine.name == "cifar100" and len(fine.classes) == 100 and fine.targets.tolist() == [99, 4, 50, 51]
    with pytest.raises(ValueError, match="label_type"):
        CIFAR100Dataset(tmp_path, label_type="super")


def _stl_images(n, seed):
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    images = np.empty((n, 96, 96, 3), dtype=np.uint8)
    for k in range(n):
        images[k, :, :, 0] = rows  # red grows downwards
        images[k, :, :, 1] = cols  # green grows to the right
        images[k, :, :, 2] = (seed + k) * 10
    return images


def _write_stl(base, split, images, labels=None):
    base.mkdir(parents=True, exist_ok=True)
    # STL-10 stores each channel column-major: (N, H, W, C) -> (N, C, W, H) bytes.
    (base / f"{split}_X.bin").write_bytes(np.ascontiguousarray(images.transpose(0, 3, 2, 1)).tobytes())
    if labels is not None:
        (base / f"{split}_y.bin").write_bytes(np.asarray(labels, dtype=np.uint8).tobytes())


def test_stl10_orientation_labels_and_memmap(tmp_path):
    base = tmp_path / "stl10_binary"
    names = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    _write_stl(base, "train", _stl_images(3, 0), labels=[1, 10, 4])
    _write_stl(base, "unlabeled", _stl_images(2, 5))
    (base / "class_names.txt").write_text("\n".join(names) + "\n")

    ds = STL10Dataset(tmp_path, split="train")
    assert ds.classes == names and ds.targets.tolist() == [0, 9, 3]
    image, label, index = ds[1]
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels.shape == (96, 96, 3) and (label, index) == (9, 1)
    np.testing.assert_array_equal(pixels, _stl_images(3, 0)[1])
    assert tuple(pixels[0, 5]) == (0, 5, 10)  # row 0, column 5
    assert tuple(pixels[5, 0]) == (5, 0, 10)  # row 5, column 0
    assert ds.sample_id(2) == "train_X.bin:2"
    assert STL10Dataset(tmp_path, split="train", transform=TO_8x8)[0][0].shape == (3, 8, 8)

    unlabeled = STL10Dataset(base, split="unlabeled")
    assert unlabeled.targets.tolist() == [-1, -1] and unlabeled[1][1] == -1
    assert np.asarray(unlabeled[1][0])[0, 0, 2] == 60
    # Pickling (DataLoader spawn workers) must not carry the image bytes along.
    assert isinstance(unlabeled._images(), np.memmap)
    assert len(pickle.dumps(unlabeled)) < 4000
    np.testing.assert_array_equal(np.asarray(pickle.loads(pickle.dumps(unlabeled))[0][0]), np.asarray(unlabeled[0][0]))

    with pytest.raises(FileNotFoundError, match=r"(?s)test_X.bin.*Expected layout:.*stl10_binary/"):
        STL10Dataset(tmp_path, split="test")
    (base / "train_X.bin").write_bytes((base / "train_X.bin").read_bytes()[:-7])
    with pytest.raises(ValueError, match="truncated"):
        STL10Dataset(tmp_path, split="train")
    _write_stl(base, "train", _stl_images(3, 0), labels=[1, 11, 4])
    with pytest.raises(ValueError, match=r"1\.\.10"):
        STL10Dataset(tmp_path, split="train")


def _bordered_png(path, size=(10, 7), inside=(20, 60, 220)):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, (255, 0, 0))
    image.paste(Image.new("RGB", (size[0] - 2, size[1] - 2), inside), (1, 1))
    image.save(path)


@pytest.mark.parametrize("nested", [True, False])
def test_objectnet_labels_and_border_crop(tmp_path, nested):
    base = tmp_path / "objectnet-1.0" if nested else tmp_path
    mapping = {"zipper_folder": "Alarm clock", "alarm_folder": "Zipper", "absent_folder": "Banana"}
    (base / "mappings").mkdir(parents=True)
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps(mapping))
    _bordered_png(base / "images" / "alarm_folder" / "a1.png")
    _bordered_png(base / "images" / "alarm_folder" / "a2.png")
    _bordered_png(base / "images" / "zipper_folder" / "z1.png")

    ds = ObjectNetDataset(tmp_path, transform=None)
    assert ds.split == "test" and ds.folder_to_label == mapping
    assert ds.classes == ["Alarm clock", "Zipper"]  # by class name, only folders on disk
    assert ds.targets.tolist() == [1, 1, 0]
    prefix = "objectnet-1.0/" if nested else ""
    assert ds.sample_id(2) == f"{prefix}images/zipper_folder/z1.png"
    image = ds[0][0]
    pixels = np.asarray(image)
    assert image.size == (8, 5)
    assert (pixels == np.array([20, 60, 220], np.uint8)).all()  # the red frame is gone
    raw = np.asarray(ObjectNetDataset(tmp_path, border_crop=False)[0][0])
    assert raw.shape == (7, 10, 3) and tuple(raw[0, 0]) == (255, 0, 0)
    assert ObjectNetDataset(tmp_path, transform=TO_8x8)[2][0].shape == (3, 8, 8)


def test_objectnet_errors(tmp_path):
    base = tmp_path / "objectnet-1.0"
    _bordered_png(base / "images" / "mystery" / "m.png")
    with pytest.raises(FileNotFoundError, match=r"(?s)folder_to_objectnet_label\.json.*Expected layout"):
        ObjectNetDataset(tmp_path)
    (base / "mappings").mkdir()
    (base / "mappings" / "folder_to_objectnet_label.json").write_text(json.dumps({"other": "Other"}))
    with pytest.raises(ValueError, match="'mystery'"):
        ObjectNetDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="images"):
        ObjectNetDataset(tmp_path / "empty_dir_missing")
    with pytest.raises(ValueError, match="single split 'test'"):
        ObjectNetDataset(tmp_path, split="train")


def test_registry_builds_local_datasets(folder_tree, tmp_path):
    ds = get_dataset("imagefolder", folder_tree, transform=TO_8x8)
    assert isinstance(ds, ImageFolderDataset) and ds.split == "all" and len(ds) == 6
    base = tmp_path / "stl" / "stl10_binary"
    _write_stl(base, "test", _stl_images(2, 0), labels=[2, 3])
    (base / "class_names.txt").write_text("\n".join(f"c{k}" for k in range(10)))
    stl = get_dataset("stl10", tmp_path / "stl")
    assert isinstance(stl, STL10Dataset) and stl.split == "test" and stl.targets.tolist() == [1, 2]
    with pytest.raises(ValueError, match="local folder"):
        get_dataset("cifar10")
