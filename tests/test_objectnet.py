"""ObjectNet: mapping files, hand-computed direct/transfer scores, protocols on blobs, run_objectnet end to end."""
import json

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from ssl_cluster_bench import api
from ssl_cluster_bench import objectnet as on
from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.leaderboard import COLUMNS, read_leaderboard
from ssl_cluster_bench.protocol import KMeansSettings, Protocol
from ssl_cluster_bench.specs import BackboneSpec

# Real ImageNet-1k wnids (PyTorch index in brackets) so the standard wnid order resolves them.
ANALOG, BACKPACK, DIGITAL, BANANA = "n02708093", "n02769748", "n03196217", "n07753592"  # 409, 414, 530, 954
IMAGENET_CLASSES = [ANALOG, BACKPACK, DIGITAL, BANANA]  # sorted wnids = the user's class indices 0..3
BACKPACK_NAME = "backpack, back pack, knapsack, packsack, rucksack, haversack"
# Lines deliberately not in PyTorch order; "crane" is on two lines, as in the real file.
LABEL_LINES = ["digital clock", "crane", "banana", "analog clock", "crane", BACKPACK_NAME,
               "bathtub, bathing tub, bath, tub"]
PYTORCH_TO_LINE = {"530": 0, "134": 1, "954": 2, "409": 3, "517": 4, "414": 5, "435": 6}
FOLDERS = {"air_freshener": "Air freshener", "alarm_clock": "Alarm clock", "backpack": "Backpack",
           "banana": "Banana", "bathtub": "Bathtub"}
ON_TO_IN_NAMES = {"Alarm clock": "analog clock; digital clock", "Backpack": BACKPACK_NAME, "Banana": "banana",
                  "Bathtub": "bathtub, bathing tub, bath, tub"}
# ObjectNet labels of the classes on disk (sorted names): Air freshener 0, Alarm clock 1, Backpack 2, Banana 3.
ON_TO_IN = {1: {0, 2}, 2: {1}, 3: {3}}


def write_mappings(folder, folders=FOLDERS, on_to_in=ON_TO_IN_NAMES, lines=LABEL_LINES, pytorch=PYTORCH_TO_LINE):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "folder_to_objectnet_label.json").write_text(json.dumps(folders))
    (folder / "objectnet_to_imagenet_1k.json").write_text(json.dumps(on_to_in))
    (folder / "imagenet_to_label_2012_v2").write_text("\n".join(lines) + "\n")
    (folder / "pytorch_to_imagenet_2012_id.json").write_text(json.dumps(pytorch))
    return folder


# --------------------------------------------------------------------------------------------------------
# Mapping loader
# --------------------------------------------------------------------------------------------------------
def test_mapping_resolves_through_lines_and_pytorch_indices(tmp_path):
    mdir = write_mappings(tmp_path / "mappings")
    # Bathtub's ImageNet class is not in this ImageNet folder: the class is dropped, not an error.
    assert on.load_objectnet_mapping(mdir, IMAGENET_CLASSES) == {"Alarm clock": {0, 2}, "Backpack": {1},
                                                                 "Banana": {3}}
    # A class subset keeps only the classes present, re-indexed to the subset's own label order.
    assert on.load_objectnet_mapping(mdir, [ANALOG, BANANA]) == {"Alarm clock": {0}, "Banana": {1}}
    # With the full ImageNet-1k folder the class index is the PyTorch index.
    full = on.load_objectnet_mapping(mdir, on.imagenet_wnids())
    assert full == {"Alarm clock": {409, 530}, "Backpack": {414}, "Banana": {954}, "Bathtub": {435}}


@pytest.mark.parametrize("change, error, pattern", [
    ({"on_to_in": {**ON_TO_IN_NAMES, "Banana": "bananas"}}, ValueError,
     r"objectnet_to_imagenet_1k\.json.*'Banana'.*'bananas'.*imagenet_to_label_2012_v2.*close: 'banana'"),
    ({"on_to_in": {"Banan": "banana"}}, ValueError,
     r"objectnet_to_imagenet_1k\.json.*ObjectNet class 'Banan'.*folder_to_objectnet_label\.json"),
    ({"on_to_in": {"Banana": "crane"}}, ValueError, r"'crane', which is ambiguous: it is on lines \[1, 4\]"),
    ({"pytorch": {**PYTORCH_TO_LINE, "1000": 6}}, ValueError,
     r"pytorch_to_imagenet_2012_id\.json.*PyTorch class index '1000' is out of range 0\.\.999"),
    ({"pytorch": {**PYTORCH_TO_LINE, "7": 9}}, ValueError, r"entry '7' points to line 9.*7 lines"),
    ({"pytorch": {**PYTORCH_TO_LINE, "531": 0}}, ValueError, r"line 0 is claimed by PyTorch class indices 530 and 531"),
    ({"pytorch": {k: v for k, v in PYTORCH_TO_LINE.items() if k != "954"}}, ValueError,
     r"'banana' \(line 2 of imagenet_to_label_2012_v2\) has no PyTorch class index"),
])
def test_mapping_errors_name_file_and_entry(tmp_path, change, error, pattern):
    mdir = write_mappings(tmp_path / "mappings", **change)
    with pytest.raises(error, match=pattern):
        on.load_objectnet_mapping(mdir, IMAGENET_CLASSES)


def test_mapping_missing_file_duplicate_key_and_non_wnid_classes(tmp_path):
    mdir = write_mappings(tmp_path / "mappings")
    (mdir / "pytorch_to_imagenet_2012_id.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"pytorch_to_imagenet_2012_id\.json' is missing"):
        on.load_objectnet_mapping(mdir, IMAGENET_CLASSES)
    with pytest.raises(FileNotFoundError, match="mappings folder .*nowhere"):
        on.load_objectnet_mapping(tmp_path / "nowhere", IMAGENET_CLASSES)

    mdir = write_mappings(tmp_path / "m2")
    (mdir / "objectnet_to_imagenet_1k.json").write_text('{"Banana": "banana", "Banana": "banana"}')
    with pytest.raises(ValueError, match=r"objectnet_to_imagenet_1k\.json': key 'Banana' appears more than once"):
        on.load_objectnet_mapping(mdir, IMAGENET_CLASSES)
    with pytest.raises(ValueError, match="must be named by wnid"):
        on.load_objectnet_mapping(write_mappings(tmp_path / "m3"), ["dog", "cat"])


# --------------------------------------------------------------------------------------------------------
# Scores of given clusterings, computed by hand
# --------------------------------------------------------------------------------------------------------
def test_direct_scores_by_hand():
    # Classes: 0 Air freshener (no ImageNet counterpart), 1 Alarm clock, 2 Backpack, 3 Banana.
    labels = np.array([0] * 4 + [1] * 5 + [2] * 4 + [3] * 3)
    clusters = np.array([9, 9, 9, 5] + [5, 5, 5, 7, 7] + [6, 6, 6, 9] + [8, 8, 6])
    # Hungarian (5 clusters > 4 classes): 9->AF, 5->Alarm, 6->Backpack, 8->Banana; spare cluster 7 -> Alarm.
    # Correct: AF 3/4, Alarm 5/5, Backpack 3/4, Banana 2/3.
    s = on.direct_scores(labels, clusters, [1, 2, 3])
    assert s["acc"] == pytest.approx(13 / 16)
    assert s["acc_overlap"] == pytest.approx(10 / 12)
    assert s["acc_nonoverlap"] == pytest.approx(3 / 4)
    assert s["chance"] == pytest.approx(5 / 16)
    assert s["ari"] == pytest.approx(skm.adjusted_rand_score(labels, clusters))
    mask = np.array([False, True, True, True])
    assert on.direct_scores(labels, clusters, mask) == s
    assert np.isnan(on.direct_scores(labels, clusters, [0, 1, 2, 3])["acc_nonoverlap"])


def test_transfer_scores_by_hand():
    # ImageNet: blob b of class b falls in cluster 7, 3, 5, 1 (b = 0..3); one stray class-0 sample in cluster 3.
    imnet_labels = np.array([0] * 4 + [1] * 3 + [2] * 3 + [3] * 3)
    imnet_clusters = np.array([7, 7, 7, 3] + [3, 3, 3] + [5, 5, 5] + [1, 1, 1])
    # ObjectNet: Air freshener (0, excluded) in a cluster ImageNet never used (9); two Backpacks there too.
    on_labels = np.array([0] * 4 + [1] * 5 + [2] * 6 + [3] * 7)
    on_clusters = np.array([9] * 4 + [7, 7, 7, 5, 5] + [3, 3, 3, 1, 9, 9] + [1, 1, 3, 3, 3, 3, 3])
    s = on.transfer_scores(imnet_labels, imnet_clusters, on_labels, on_clusters, ON_TO_IN)
    # acc_tr, ImageNet matching 7->analog, 3->backpack, 5->digital, 1->banana: Alarm 5 (either clock),
    # Backpack 3 (cluster 1 is banana, cluster 9 unknown), Banana 2  -> 10 / 18.
    assert s["acc_tr"] == pytest.approx(10 / 18)
    # acc_val, Hungarian on ObjectNet: 7->Alarm 3, 3->Banana 5, 9->Backpack 2; spare 1->Banana 2, 5->Alarm 2.
    assert s["acc_val"] == pytest.approx(14 / 18) and s["acc"] == s["acc_val"]
    assert s["chance"] == pytest.approx(7 / 18)
    assert (s["n_samples"], s["n_classes"]) == (18, 3)
    keep = on_labels > 0
    assert s["ari"] == pytest.approx(skm.adjusted_rand_score(on_labels[keep], on_clusters[keep]))
    assert s["nmi"] == pytest.approx(skm.normalized_mutual_info_score(on_labels[keep], on_clusters[keep]))


def test_transfer_scores_many_to_one_and_unlabelled_imagenet():
    # ImageNet class 1 split over clusters 1 and 2 (k > classes: spare cluster 2 -> its majority, class 1);
    # unlabelled rows (-1) in cluster 2 must not take part in the matching.
    imnet_labels = np.array([0, 0, 1, 1, 1, 1] + [-1] * 5)
    imnet_clusters = np.array([0, 0, 1, 1, 2, 2] + [2] * 5)
    s = on.transfer_scores(imnet_labels, imnet_clusters, [5, 5, 6], [1, 2, 2], {5: {1}, 6: {0}})
    assert s["acc_tr"] == pytest.approx(2 / 3)
    assert s["chance"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no ObjectNet sample belongs to a class of on_to_in"):
        on.transfer_scores(imnet_labels, imnet_clusters, [4, 4], [1, 2], {5: {1}})
    with pytest.raises(ValueError, match="non-empty set"):
        on.transfer_scores(imnet_labels, imnet_clusters, [5], [1], {5: set()})


# --------------------------------------------------------------------------------------------------------
# Protocols on well-separated blobs (k-means++ init of the sklearn backend finds every blob)
# --------------------------------------------------------------------------------------------------------
CENTERS = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])  # blob b = ImageNet class b
FAR = np.array([-30.0, 40.0])


def _embed(points2d, rng, dim=8):
    basis = np.linalg.qr(np.random.default_rng(7).normal(size=(dim, 2)))[0]  # same plane for every call
    return points2d @ basis.T + rng.normal(scale=0.01, size=(len(points2d), dim))


def _objectnet_points():
    """(labels, 2-D points): Alarm 3@B0 2@B2, Backpack 3@B1 1@B3, Banana 5@B1 2@B3, Air freshener 4 far away."""
    placed = [(1, 0, 3), (1, 2, 2), (2, 1, 3), (2, 3, 1), (3, 1, 5), (3, 3, 2)]
    labels = [0] * 4 + [lab for lab, _, n in placed for _ in range(n)]
    points = [FAR] * 4 + [CENTERS[b] for _, b, n in placed for _ in range(n)]
    return np.array(labels), np.array(points)


def test_transfer_protocol_on_blobs():
    rng = np.random.default_rng(0)
    imnet_labels = np.repeat(np.arange(4), 20)
    imnet = _embed(CENTERS[imnet_labels], rng)
    on_labels, on_points = _objectnet_points()
    df = on.transfer_protocol(imnet, imnet_labels, _embed(on_points, rng), on_labels, ON_TO_IN,
                              overcluster=(1.0, 2.0), seeds=range(2), pca_dim=2,
                              kmeans=KMeansSettings(backend="sklearn", n_iter=3), progress=False)
    assert df.n_clusters.tolist() == [4, 4, 8, 8] and df.overcluster.tolist() == [1.0, 1.0, 2.0, 2.0]
    assert set(df.columns) <= set(COLUMNS) and (df.protocol == "objectnet-transfer").all()
    assert (df.pca_dim == 2).all() and (df.n_samples == 16).all() and (df.n_classes == 3).all()
    # Matched on ImageNet, every (sub)cluster is its blob's class: Alarm 5, Backpack 3, Banana 2 of 16.
    assert df.acc_tr.tolist() == pytest.approx([10 / 16] * 4)
    k4 = df[df.n_clusters == 4]
    # Matched on ObjectNet (4 clusters, 3 classes): B0->Alarm 3, B1->Banana 5, B3->Backpack 1, spare B2->Alarm 2.
    assert k4.acc_val.tolist() == pytest.approx([11 / 16] * 2)
    assert (df.acc == df.acc_val).all() and df.chance.tolist() == pytest.approx([7 / 16] * 4)
    assert df.acc_overlap.isna().all() and df.acc_nonoverlap.isna().all()


def test_direct_protocol_on_blobs():
    rng = np.random.default_rng(1)
    # Blob P: AF x4 + Alarm x1, blob Q: Alarm x4, blob R: Backpack x3 + Banana x2.
    labels = np.array([0, 0, 0, 0, 1] + [1] * 4 + [2, 2, 2, 3, 3])
    points = np.array([CENTERS[0]] * 5 + [CENTERS[1]] * 4 + [CENTERS[2]] * 5)
    df = on.direct_protocol(_embed(points, rng), labels, [1, 2, 3], n_clusters=3, seeds=[3, 4], pca_dim=4,
                            kmeans=KMeansSettings(backend="sklearn", n_iter=3), progress=False)
    assert df.seed.tolist() == [3, 4] and (df.n_clusters == 3).all() and (df.overcluster == 0.75).all()
    assert (df.protocol == "objectnet-direct").all() and (df.n_classes == 4).all() and (df.pca_dim == 4).all()
    # 3 clusters < 4 classes, one-to-one: P->AF 4, Q->Alarm 4, R->Backpack 3; Banana never right.
    assert df.acc.tolist() == pytest.approx([11 / 14] * 2)
    assert df.acc_overlap.tolist() == pytest.approx([7 / 10] * 2)
    assert df.acc_nonoverlap.tolist() == pytest.approx([1.0] * 2)
    assert df.chance.tolist() == pytest.approx([5 / 14] * 2)
    assert df.acc_tr.isna().all() and df.acc_val.isna().all()


def test_protocol_argument_errors():
    x, y = np.zeros((6, 3)), np.array([0, 0, 1, 1, 2, 2])
    with pytest.raises(ValueError, match="either n_clusters or overcluster"):
        on.direct_protocol(x, y, [1], n_clusters=3, overcluster=(1.0,), progress=False)
    with pytest.raises(ValueError, match=r"k=12 .* exceeds the 6 ObjectNet samples"):
        on.direct_protocol(x, y, [1], overcluster=(4.0,), progress=False)
    with pytest.raises(ValueError, match="labels must all be >= 0"):
        on.direct_protocol(x, np.array([0, 0, 1, 1, 2, -1]), [1], progress=False)
    with pytest.raises(ValueError, match="dim 3 but on_features have dim 2"):
        on.transfer_protocol(x, y, np.zeros((2, 2)), [1, 1], {1: {0}}, progress=False)
    with pytest.raises(ValueError, match="no ObjectNet sample belongs"):
        on.transfer_protocol(x, y, np.zeros((2, 3)), [4, 4], {1: {0}}, progress=False)


# --------------------------------------------------------------------------------------------------------
# run_objectnet end to end on tiny image trees, with the real raw-pixel backbone (no weights to download)
# --------------------------------------------------------------------------------------------------------
# Blob b = ImageNet class b; in grayscale (what the `pixels` card sees) these are 40, 94, 146 and 61.
COLOURS = {0: (40, 40, 40), 1: (220, 40, 40), 2: (40, 220, 40), 3: (40, 40, 220)}
AF_COLOUR = (220, 220, 40)  # grayscale 199


def _png(path, colour, jitter=0, size=4, border=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.empty((size, size, 3), dtype=np.uint8)
    arr[:] = np.array(colour) + jitter
    if border:
        arr[0, :] = arr[-1, :] = arr[:, 0] = arr[:, -1] = (255, 0, 0)
    Image.fromarray(arr).save(path)


@pytest.fixture()
def trees(tmp_path):
    """ImageNet train: 3 plain 4x4 images per class. ObjectNet: 6x6 images whose 1-px red frame leaves 4x4."""
    imagenet = tmp_path / "imagenet"
    for c, wnid in enumerate(IMAGENET_CLASSES):
        for j in range(3):
            _png(imagenet / "train" / wnid / f"{wnid}_{j}.png", COLOURS[c], jitter=2 * j)
    objectnet = tmp_path / "objectnet"
    images = objectnet / "objectnet-1.0" / "images"
    placed = [("alarm_clock", 0, 3), ("alarm_clock", 2, 2), ("backpack", 1, 3), ("backpack", 3, 1),
              ("banana", 1, 5), ("banana", 3, 2)]
    count = 0
    for folder, blob, n in placed:
        for _ in range(n):
            _png(images / folder / f"{count:03d}.png", COLOURS[blob], jitter=count % 3, size=6, border=True)
            count += 1
    for j in range(4):
        _png(images / "air_freshener" / f"af{j}.png", AF_COLOUR, jitter=j, size=6, border=True)
    write_mappings(objectnet / "objectnet-1.0" / "mappings")
    return imagenet, objectnet


def test_run_objectnet_end_to_end_with_pixels(tmp_path, trees, monkeypatch):
    imagenet, objectnet = trees
    calls = []
    real_extract = api.extract

    def recording_extract(backbone, dataset, data_root=None, split=None, cache=None, **options):
        calls.append((backbone, dataset, split))
        return real_extract(backbone, dataset, data_root, split, cache, **options)

    monkeypatch.setattr(api, "extract", recording_extract)
    results = tmp_path / "res" / "lb.csv"
    df = on.run_objectnet("pixels", imagenet, objectnet, results=results, cache=tmp_path / "cache",
                          protocol=Protocol(overcluster=(1.0,), seeds=2, pca_dim=2,
                                            kmeans=KMeansSettings(backend="sklearn", n_iter=3)), num_workers=0, device="cpu", progress=False)
    # both datasets are extracted with one backbone record, passed whole
    assert calls == [(BackboneSpec("pixels"), "objectnet", "test"), (BackboneSpec("pixels"), "imagenet", "train")]
    assert df.protocol.tolist() == ["objectnet-direct"] * 2 + ["objectnet-transfer"] * 2
    assert (df.backbone == "pixels").all() and (df.dataset == "objectnet").all() and (df.split == "test").all()

    direct = df[df.protocol == "objectnet-direct"]
    assert (direct.n_clusters == 4).all() and (direct.n_samples == 20).all() and (direct.n_classes == 4).all()
    assert direct.chance.tolist() == pytest.approx([7 / 20] * 2)  # Banana: 7 of 20 images
    share = 16 / 20  # images of the three overlapping classes
    assert direct.acc.tolist() == pytest.approx((share * direct.acc_overlap + (1 - share) * direct.acc_nonoverlap)
                                                .tolist())

    transfer = df[df.protocol == "objectnet-transfer"]
    assert (transfer.n_clusters == 4).all() and (transfer.n_samples == 16).all() and (transfer.n_classes == 3).all()
    # Same placement as the blob test: Alarm 3@B0 2@B2, Backpack 3@B1 1@B3, Banana 5@B1 2@B3.
    assert transfer.acc_tr.tolist() == pytest.approx([10 / 16] * 2)
    assert transfer.acc_val.tolist() == pytest.approx([11 / 16] * 2)
    assert transfer.chance.tolist() == pytest.approx([7 / 16] * 2)
    assert transfer.cache_key.str.contains(r"^pixels--imagenet--train--.*\+pixels--objectnet--test--").all()

    board = read_leaderboard(results)
    assert len(board) == 4 and board.protocol.tolist() == df.protocol.tolist()
    assert board.acc_tr[2:].tolist() == pytest.approx([10 / 16] * 2) and board.acc_tr[:2].isna().all()
    assert (tmp_path / "res" / "lb.md").is_file()

    table = on.summary_table(df)
    line = next(row for row in table.splitlines() if "objectnet-transfer" in row)
    assert "| 62.5 ± 0.0 " in line and "| 68.8 ± 0.0 " in line and "| 43.8 ± 0.0 " in line

    # The red frame was cropped: ObjectNet features are 4x4 = 16 grayscale values, equal to the interior.
    entry = FeatureCache(tmp_path / "cache").find("pixels", "objectnet")[0]
    af = np.asarray(entry.features[entry.labels == 0], dtype=np.float32)
    assert af.shape == (4, 16) and np.abs(af - 199).max() <= 4


def test_run_objectnet_checks_before_extracting(tmp_path, trees, monkeypatch):
    imagenet, objectnet = trees
    calls = []
    monkeypatch.setattr(api, "extract", lambda *args, **kwargs: calls.append(args))
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="not writable"):
        on.run_objectnet("pixels", imagenet, objectnet, results=blocker / "lb.csv", cache=tmp_path / "c",
                         progress=False)
    with pytest.raises(FileNotFoundError, match="ImageNet split folder .*val"):
        on.run_objectnet("pixels", imagenet, objectnet, imagenet_split="val", results=tmp_path / "lb.csv",
                         cache=tmp_path / "c", progress=False)
    (objectnet / "objectnet-1.0" / "mappings" / "imagenet_to_label_2012_v2").unlink()
    with pytest.raises(FileNotFoundError, match="imagenet_to_label_2012_v2' is missing"):
        on.run_objectnet("pixels", imagenet, objectnet, results=tmp_path / "lb.csv", cache=tmp_path / "c",
                         progress=False)
    with pytest.raises(ValueError, match="seeds must be a count >= 1"):
        on.run_objectnet("pixels", imagenet, objectnet, protocol={"seeds": 0}, results=tmp_path / "lb.csv",
                         progress=False)
    with pytest.raises(ValueError, match="k-means only"):
        on.run_objectnet("pixels", imagenet, objectnet, protocol={"methods": ["scan"]}, results=tmp_path / "lb.csv",
                         progress=False)
    with pytest.raises(ValueError, match="reduce by PCA at given k only, not reduce 'none'"):
        on.run_objectnet("pixels", imagenet, objectnet, protocol={"reduce": "none"}, results=tmp_path / "lb.csv",
                         progress=False)
    assert calls == [] and not (tmp_path / "lb.csv").exists()
