"""The report's pictures of what the clusters hold: the prototype grid (images read back from the dataset by
sample id) and the 2-D map of the features coloured by cluster and by class."""
from __future__ import annotations

import base64
import io
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import ssl_cluster_bench as sscb
from ssl_cluster_bench.assignments import assignment_table
from ssl_cluster_bench.report import check_images, embed_2d, prototypes, resolve_feature_map, write_report


def test_prototypes_hand_checked():
    # cluster 1 has 3 members, cluster 0 has 2, position 5 is noise. By distance: cluster 1's nearest are
    # positions 4 (0.1) then 1 (0.5) (position 3 at 0.9 is third); cluster 0's are 2 (0.2) then 0 (0.7).
    table = pd.DataFrame({"cluster": [0, 1, 0, 1, 1, -1], "distance": [0.7, 0.5, 0.2, 0.9, 0.1, np.nan]})
    assert prototypes(table, 2) == {1: [4, 1], 0: [2, 0]}  # largest cluster first
    assert prototypes(table, 5) == {1: [4, 1, 3], 0: [2, 0]}
    # with a confidence (a head's probabilities) the most confident come first, whatever the distance
    table["confidence"] = [0.6, 0.3, 0.95, 0.8, 0.4, np.nan]
    assert prototypes(table, 2) == {1: [3, 4], 0: [2, 0]}
    # equal keys keep the dataset order
    assert prototypes(pd.DataFrame({"cluster": [2, 2, 2], "distance": [1.0, 1.0, 0.5]}), 3) == {2: [2, 0, 1]}
    with pytest.raises(ValueError, match="neither confidence nor distance"):
        prototypes(pd.DataFrame({"cluster": [0, 1]}))


def test_kmeans_prototypes_are_the_digits_nearest_each_centroid(tmp_path):
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    df = sscb.run(["pixels"], "digits", protocol=sscb.Protocol(seeds=(0,), overcluster=(1.0,), pca_dim=16),
                  results=results, cache=cache, progress=False)
    table = assignment_table(results, df["run_id"].iloc[0], cache)
    # the clustered space again (PCA to 16 of the cached pixels), and each cluster's own mean in it
    from ssl_cluster_bench.methods import MethodInputs

    from ssl_cluster_bench.cache import FeatureCache

    (entry,) = FeatureCache(cache).entries()
    reduced = MethodInputs(np.asarray(entry.features), sscb.Protocol(pca_dim=16), progress=False).reduced
    clusters = table["cluster"].to_numpy()
    for c, chosen in prototypes(table, 3).items():
        members = np.flatnonzero(clusters == c)
        dist = np.linalg.norm(reduced[members] - reduced[members].mean(axis=0), axis=1)
        assert chosen == list(members[np.argsort(dist, kind="stable")[:3]])


def test_report_of_a_digits_run_shows_prototype_grid_and_map(tmp_path):
    results, cache = tmp_path / "res" / "lb.csv", tmp_path / "cache"
    sscb.run(["pixels"], "digits", protocol=sscb.Protocol(seeds=(0, 1), overcluster=(1.0,), pca_dim=16),
             results=results, cache=cache, progress=False)
    paths = write_report(results, cache=cache, feature_map="pca")
    checks = check_images(paths.html, chromium=None)
    assert [c["name"] for c in checks] == ["bars-digits", "confusion-digits", "prototypes-digits", "map-digits"]
    assert not any(c["blank"] for c in checks)
    html = paths.html.read_text()
    grid_png = base64.b64decode(re.search(r'data-name="prototypes-digits" src="data:image/png;base64,([^"]+)"',
                                          html).group(1))
    grid = np.asarray(Image.open(io.BytesIO(grid_png)).convert("L"))
    # ten rows of eight white-on-black digits: mostly dark tiles, with the digits' white strokes
    assert grid.shape[0] > 500 and (grid < 40).mean() > 0.2 and (grid > 200).mean() > 0.05
    md = paths.markdown.read_text()
    assert "![digits: prototypes of pixels, kmeans k=10" in md and "nearest their cluster's centre" in md
    assert "mostly" not in md  # the majority class is drawn in the grid, not written to the text
    assert (results.parent / "report_files" / "prototypes-digits.png").is_file()
    assert "PCA (first two components) of 1797 pixels features" in md


def test_report_of_an_unlabelled_folder_has_pictures_but_no_confusion_matrix(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        colour = [(200, 40, 40), (40, 200, 40), (40, 40, 200)][i % 3]
        arr = np.clip(rng.normal(colour, 10, (12, 12, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(data / f"p{i:02d}.png")
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    sscb.run(["pixels"], str(data), protocol=sscb.Protocol(seeds=(0,), n_clusters=(3,)), results=results,
             cache=cache, progress=False, num_workers=0)
    paths = write_report(results, cache=cache, feature_map="pca")
    names = [c["name"] for c in check_images(paths.html, chromium=None)]
    assert names == ["prototypes-photos", "map-photos"]
    md = paths.markdown.read_text()
    assert "photos: no confusion matrix (the data has no labels)" in md
    header = next(line for line in md.splitlines() if line.startswith("| backbone"))
    assert header.split("|")[-3].strip() == "silhouette"  # the one score of unlabelled rows, before "seeds"


def test_feature_map_choice():
    assert resolve_feature_map("pca") == "pca"
    with pytest.raises(ValueError, match="feature_map must be one of umap, pca, none, got 'tsne'"):
        resolve_feature_map("tsne")
    coords, how = embed_2d(np.random.default_rng(0).normal(size=(30, 5)), "pca")
    assert coords.shape == (30, 2) and how.startswith("PCA")
