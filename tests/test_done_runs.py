"""One resume rule for run, suite and objectnet: a leaderboard row counts as done only when its cluster assignment
is stored next to the leaderboard (``predictions.done_runs``)."""
import json
import shutil

import numpy as np

from ssl_cluster_bench import objectnet as on
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.predictions import done_runs, has_predictions, load_predictions
from ssl_cluster_bench.protocol import KMeansSettings, Protocol

from test_objectnet import trees  # noqa: F401  (fixture: tiny ImageNet + ObjectNet folder trees)

SUITE = """
name: tiny
backbones: [pixels]
protocol: {methods: [kmeans], overcluster: [1.0], seeds: 1, pca_dim: 8, kmeans: {backend: sklearn, n_iter: 3}}
datasets:
  - {id: digits, dataset: digits}
"""


def test_suite_reruns_committed_rows_without_their_assignment(tmp_path, capsys):
    """A fresh clone has the committed leaderboard but no predictions/: the suite makes those rows again, as
    `sscb run` would, instead of saying "already in leaderboard" (and leaving the report without a confusion
    matrix)."""
    suite = tmp_path / "tiny.yaml"
    suite.write_text(SUITE)
    results = tmp_path / "res" / "lb.csv"
    args = ["-q", "suite", str(suite), "--results", str(results), "--cache-dir", str(tmp_path / "cache"),
            "--no-report"]

    def status():
        return json.loads((results.parent / "suite.json").read_text())["entries"][-1]

    assert main(args) == 0, capsys.readouterr().err
    first = read_leaderboard(results)
    assert len(first) == 1 and len(done_runs(results)) == 1
    shutil.rmtree(results.parent / "predictions")  # what a fresh clone of a repository with results/ looks like
    assert done_runs(results).empty and len(read_leaderboard(results)) == 1

    assert main(args) == 0, capsys.readouterr().err
    assert status()["status"] == "ran"
    assert all(has_predictions(results, run_id) for run_id in first.run_id)
    again = done_runs(results).drop_duplicates("run_id").set_index("run_id")
    assert np.allclose(again.loc[first.run_id, "acc"], first.acc)  # same runs, same numbers
    assert main(args) == 0
    assert status()["status"] == "already in leaderboard"


def test_objectnet_rows_have_run_ids_assignments_and_resume(tmp_path, trees):  # noqa: F811
    imagenet, objectnet = trees
    results = tmp_path / "res" / "lb.csv"
    options = dict(results=results, cache=tmp_path / "cache", num_workers=0, device="cpu", progress=False,
                   protocol=Protocol(overcluster=(1.0,), seeds=2, pca_dim=2,
                                     kmeans=KMeansSettings(backend="sklearn", n_iter=3)))
    first = on.run_objectnet("pixels", imagenet, objectnet, **options)
    assert first.attrs["new_rows"] == 4 and first.run_id.is_unique
    board = read_leaderboard(results)
    assert len(done_runs(results)) == 4
    entry_labels = {}
    for row in board.itertuples():
        pred = load_predictions(results, row.run_id)
        # the assignment of every ObjectNet sample (20 of them); transfer: -1 where the class has no ImageNet
        # counterpart (Air freshener, 4 images), so it scores the 16 overlap samples as the row says
        assert pred.shape == (20,)
        entry_labels[row.protocol] = pred
    assert (entry_labels["objectnet-transfer"] == -1).sum() == 4 and (entry_labels["objectnet-direct"] >= 0).all()

    again = on.run_objectnet("pixels", imagenet, objectnet, **options)  # done: nothing is clustered or appended
    assert again.attrs["new_rows"] == 0 and len(read_leaderboard(results)) == 4
    assert sorted(again.run_id) == sorted(board.run_id)

    shutil.rmtree(results.parent / "predictions")  # rows without their assignment are made again, same numbers
    remade = on.run_objectnet("pixels", imagenet, objectnet, **options)
    # appended again, as `sscb run` does with rows copied without their assignment (the latest row of a run id wins)
    assert remade.attrs["new_rows"] == 4 and done_runs(results).run_id.nunique() == 4
    assert np.allclose(remade.sort_values("run_id").acc.to_numpy(), first.sort_values("run_id").acc.to_numpy())
