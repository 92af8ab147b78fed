"""`sscb run` keeps every row as it is done and resumes instead of duplicating rows."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd

import ssl_cluster_bench as sscb
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.predictions import load_predictions


def test_repeating_a_run_resumes_without_duplicates(tmp_path):
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    first = sscb.run(["pixels"], results=results, cache=cache, protocol={"seeds": 2, "overcluster": [1.0]}, progress=False)
    assert first.attrs["new_rows"] == 2 and len(read_leaderboard(results)) == 2
    again = sscb.run(["pixels"], results=results, cache=cache, protocol={"seeds": 2, "overcluster": [1.0]}, progress=False)
    # nothing new: the rows come back as the leaderboard holds them, the file is unchanged
    assert again.attrs["new_rows"] == 0 and len(read_leaderboard(results)) == 2
    assert sorted(again["run_id"]) == sorted(first["run_id"])
    assert np.allclose(again.sort_values("seed")["acc"], first.sort_values("seed")["acc"])
    more = sscb.run(["pixels"], results=results, cache=cache, protocol={"seeds": 3, "overcluster": [1.0]}, progress=False)
    assert more.attrs["new_rows"] == 1 and sorted(more["seed"]) == [0, 1, 2]
    board = read_leaderboard(results)
    assert sorted(board["seed"]) == [0, 1, 2] and board["run_id"].is_unique
    forced = sscb.run(["pixels"], results=results, cache=cache, protocol={"seeds": 1, "overcluster": [1.0]},
                      progress=False, rerun=True)
    assert forced.attrs["new_rows"] == 1 and len(read_leaderboard(results)) == 4


def test_rows_without_a_stored_assignment_run_again(tmp_path):
    # A leaderboard copied without its predictions/ (as the committed one on a fresh clone): nothing to resume
    import shutil

    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    sscb.run(["pixels"], results=results, cache=cache, protocol={"seeds": 2, "overcluster": [1.0]}, progress=False)
    shutil.rmtree(tmp_path / "predictions")
    again = sscb.run(["pixels"], results=results, cache=cache, protocol={"seeds": 2, "overcluster": [1.0]},
                     progress=False)
    assert again.attrs["new_rows"] == 2 and len(read_leaderboard(results)) == 4
    for run_id in again["run_id"]:
        assert load_predictions(results, run_id).shape == (1797,)


def test_an_interrupted_run_keeps_its_finished_rows_and_the_rerun_completes(tmp_path, capsys):
    results, cache = tmp_path / "lb.csv", tmp_path / "cache"
    # A real process, stopped by a real SIGINT (as Ctrl-C) in the middle of its third fit.
    script = textwrap.dedent(f"""
        import os, signal
        import ssl_cluster_bench as sscb
        from ssl_cluster_bench.methods import KMeansMethod, register_method

        # Python's Ctrl-C handler, also where the test runner was started with SIGINT ignored (nohup, `&`)
        signal.signal(signal.SIGINT, signal.default_int_handler)

        @register_method("kmeans-interrupted")
        class Interrupted(KMeansMethod):
            def fit(self, inputs):
                if self.random_state == 2:
                    os.kill(os.getpid(), signal.SIGINT)
                return super().fit(inputs)

        sscb.run(["pixels"], results={str(results)!r}, cache={str(cache)!r}, progress=False,
                 protocol={{"methods": ["kmeans-interrupted"], "seeds": 4, "overcluster": [1.0]}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "KeyboardInterrupt" in proc.stderr
    board = read_leaderboard(results)
    assert sorted(board["seed"]) == [0, 1]  # the two finished fits are kept, each with its assignment
    for run_id in board["run_id"]:
        assert load_predictions(results, run_id).shape == (1797,)

    # The same command again (the method registered under the same name, so the run ids match) runs only
    # the two missing seeds.
    from ssl_cluster_bench.methods import KMeansMethod, _REGISTRY, register_method

    register_method("kmeans-interrupted")(type("Resumed", (KMeansMethod,), {}))
    try:
        assert main(["-q", "run", "--backbones", "pixels", "--methods", "kmeans-interrupted", "--seeds", "4",
                     "--overcluster", "1", "--results", str(results), "--cache-dir", str(cache)]) == 0
    finally:
        _REGISTRY.pop("kmeans-interrupted")
    out = capsys.readouterr().out
    assert "2 rows appended" in out and "2 were already there" in out
    board = read_leaderboard(results)
    assert sorted(board["seed"]) == [0, 1, 2, 3] and board["run_id"].is_unique
    # the resumed seeds are the seeds a plain k-means run gives (same fits, same numbers)
    plain = sscb.run(["pixels"], results=tmp_path / "plain.csv", cache=cache, protocol={"seeds": 4, "overcluster": [1.0]},
                     progress=False)
    merged = pd.merge(board, plain, on="seed", suffixes=("", "_plain"))
    assert np.allclose(merged["acc"], merged["acc_plain"])
