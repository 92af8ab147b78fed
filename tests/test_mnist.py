"""MNIST / Fashion-MNIST idx readers on tiny idx files written here (no download, no Debian package)."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from ssl_cluster_bench.data import default_split, get_dataset
from ssl_cluster_bench.data.mnist import read_idx

FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
         "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _idx(array: np.ndarray) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()


def _write(folder, name, array, gz):
    folder.mkdir(parents=True, exist_ok=True)
    data = _idx(array)
    if gz:
        (folder / f"{name}.gz").write_bytes(gzip.compress(data))
    else:
        (folder / name).write_bytes(data)


def _make(folder, gz=True, n_train=6, n_test=4, seed=0):
    """Images whose pixel (0, 0) is the sample's position within its split (so order can be checked)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        x[:, 0, 0] = np.arange(n)
        y = (np.arange(n) * 3 + (split == "test")) % 10
        _write(folder, FILES[split][0], x, gz)
        _write(folder, FILES[split][1], y, gz)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_torchvision_layout_splits_pixels_and_ids(tmp_path, gz):
    arrays = _make(tmp_path / "FashionMNIST" / "raw", gz=gz)
    ext = ".gz" if gz else ""
    test = get_dataset("fashion-mnist", tmp_path)  # default split: test
    assert test.split == "test" and default_split("fashion-mnist") == "test" and len(test) == 4
    assert test.classes[0] == "T-shirt/top" and test.classes[9] == "Ankle boot"
    np.testing.assert_array_equal(test.targets, arrays["test"][1])
    image, label, index = test[2]
    assert image.mode == "RGB" and image.size == (28, 28) and (label, index) == (int(arrays["test"][1][2]), 2)
    rgb = np.asarray(image)
    np.testing.assert_array_equal(rgb[..., 0], arrays["test"][0][2])  # grey copied to all three channels
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
    assert test.sample_id(3) == f"t10k-images-idx3-ubyte{ext}:3"

    both = get_dataset("fashion-mnist", tmp_path, "all")
    assert len(both) == 10
    np.testing.assert_array_equal(both.targets, np.concatenate([arrays["train"][1], arrays["test"][1]]))
    assert both.sample_id(5) == f"train-images-idx3-ubyte{ext}:5"
    assert both.sample_id(6) == f"t10k-images-idx3-ubyte{ext}:0"
    assert np.asarray(both[7][0])[0, 0, 0] == 1  # second test image
    assert len(get_dataset("fashion-mnist", tmp_path, "train")) == 6


def test_files_directly_in_root_and_mnist_names(tmp_path):
    arrays = _make(tmp_path, gz=True)  # the Debian package's layout: the four .gz files in one folder
    ds = get_dataset("mnist", tmp_path, "train")
    assert ds.name == "mnist" and ds.classes == [str(d) for d in range(10)] and len(ds) == 6
    np.testing.assert_array_equal(ds.targets, arrays["train"][1])
    _make(tmp_path / "MNIST" / "raw", gz=False, n_train=3, seed=1)  # torchvision's folder wins over root
    assert len(get_dataset("mnist", tmp_path, "train")) == 3


def test_pixels_card_sees_the_exact_grey_values(tmp_path):
    from ssl_cluster_bench.backbones import load_card

    arrays = _make(tmp_path, gz=True)
    ds = get_dataset("fashion-mnist", tmp_path, "test",
                     transform=load_card("pixels").preprocessing.build_transform())
    x = ds[1][0]
    assert tuple(x.shape) == (1, 28, 28)
    np.testing.assert_array_equal(x[0].numpy(), arrays["test"][0][1].astype(np.float32))


def test_missing_root_or_file_names_the_files_and_the_remedy(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        get_dataset("fashion-mnist", tmp_path / "nowhere")
    msg = str(e.value)
    assert "t10k-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "FashionMNIST/raw" in msg
    _make(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        get_dataset("fashion-mnist", tmp_path, "all")
    with pytest.raises(FileNotFoundError, match="torchvision.datasets.MNIST"):
        get_dataset("mnist", tmp_path / "nowhere")
    assert len(get_dataset("fashion-mnist", tmp_path, "train")) == 6  # the intact split still loads
    with pytest.raises(ValueError, match="split must be one of train, test, all"):
        get_dataset("fashion-mnist", tmp_path, "val")


def test_corrupt_files_raise_instead_of_a_short_dataset(tmp_path):
    _make(tmp_path, gz=True)
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    good = images.read_bytes()

    images.write_bytes(good[: len(good) // 2])  # truncated download
    with pytest.raises(ValueError, match="truncated or corrupt"):
        get_dataset("fashion-mnist", tmp_path)

    raw = gzip.decompress(good)
    images.write_bytes(gzip.compress(raw[:-28 * 28]))  # one image short of the header's count
    with pytest.raises(ValueError, match=r"holds 2352 data bytes but its header says \(4, 28, 28\)"):
        get_dataset("fashion-mnist", tmp_path)

    images.write_bytes(gzip.compress(raw + b"\0"))  # trailing garbage
    with pytest.raises(ValueError, match="header says"):
        get_dataset("fashion-mnist", tmp_path)

    images.write_bytes(gzip.compress(b"\x1f\x8b" + raw[2:]))  # wrong magic
    with pytest.raises(ValueError, match="not an idx file"):
        get_dataset("fashion-mnist", tmp_path)

    images.write_bytes(good)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(gzip.compress(_idx(np.array([1, 2, 3]))))  # 3 labels for 4 images
    with pytest.raises(ValueError, match="4 images but .* 3 labels"):
        get_dataset("fashion-mnist", tmp_path)
    labels.write_bytes(gzip.compress(_idx(np.array([1, 2, 3, 10]))))
    with pytest.raises(ValueError, match=r"labels must lie in 0..9"):
        get_dataset("fashion-mnist", tmp_path)


def test_read_idx_checks_dimensions(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(_idx(np.zeros((2, 3), np.uint8)))
    assert read_idx(path, 2).shape == (2, 3)
    with pytest.raises(ValueError, match="magic 00000802, expected 00000803"):
        read_idx(path, 3)
    path.write_bytes(b"\0\0")
    with pytest.raises(ValueError, match="2 bytes"):
        read_idx(path, 1)
