"""Progress bars of a real `sscb run` process: one bar per stage (extraction, reduction, each method over its
fits), none of the inner loops' (k-means restarts, head epochs, neighbour mining), and no bar at all with -q."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# a tqdm line: "<desc>: 50%|██   | 1/2 [00:01<00:01, ...]" or, without a total, "<desc>: 3fit [00:01, ...]"
BAR = re.compile(r"^(?P<desc>[^\[\]|]+?): +(?:\d+%\|[^|]*\| +)?[\d.]+\S*(?:/\S+)? +\[\d\d:\d\d")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _bars(stderr: str) -> dict[str, list[str]]:
    """Bar description -> the totals it showed ("?": none yet), in order, from every refresh tqdm wrote (split on
    \\r and \\n)."""
    bars: dict[str, list[str]] = {}
    for piece in re.split(r"[\r\n]", ANSI.sub("", stderr)):
        m = BAR.match(piece.strip())
        if m:
            total = re.search(r"\| +\d+/(\d+) ", piece)
            bars.setdefault(m["desc"], []).append(total[1] if total else "?")
    return bars


def _run(tmp_path: Path, name: str, *extra: str) -> str:
    protocol = tmp_path / "protocol.yaml"
    # few SCAN epochs: the run stays short, and an epoch bar would still show on the original code
    protocol.write_text("method_options:\n  scan:\n    epochs: 3\n    self_label_epochs: 1\n    n_neighbors: 5\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("SSCB_QUIET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_cluster_bench", *extra, "run", "--backbones", "pixels", "--dataset", "digits",
         "--methods", "kmeans,scan", "--seeds", "2", "--k", "10", "--protocol", str(protocol),
         "--results", str(tmp_path / f"{name}.csv"), "--cache-dir", str(tmp_path / f"cache-{name}")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| scan " in proc.stdout and "| kmeans " in proc.stdout  # both methods ran and were tabled
    return proc.stderr


def test_run_shows_one_bar_per_stage_and_none_with_quiet(tmp_path):
    bars = _bars(_run(tmp_path, "default"))
    # extraction of the one entry, its PCA once, and one bar per method over its 2 seeds × 1 k; no k-means
    # restart, SCAN epoch, self-label or neighbour-mining bar of its own
    assert set(bars) == {"extract pixels on digits/all", "reduce pca", "kmeans", "scan"}, bars
    assert set(bars["kmeans"]) == {"2"} and set(bars["scan"]) == {"2"}, bars
    assert set(bars["reduce pca"]) == {str(2 * 1797)}, bars  # the fit and the transform pass over the rows, one bar

    quiet = _run(tmp_path, "quiet", "-q")
    assert _bars(quiet) == {} and "\r" not in quiet and "it/s" not in quiet, quiet[-2000:]


def test_k_selection_advances_the_method_bar(capfd):
    from sklearn.datasets import load_digits

    from ssl_cluster_bench.api import cluster_features

    x, y = load_digits(return_X_y=True)
    df = cluster_features(x[:600].astype("float32"), y[:600], methods=["kmeans"], n_clusters="auto", k_grid=[8, 10], seeds=[0, 1])
    assert len(df) == 2
    bars = _bars(capfd.readouterr().err)
    # one bar for the method, whose total grows to the 2 k values tried + the 2 seeds at the chosen k, and one
    # for the PCA; none per k-means fit
    assert set(bars) == {"reduce pca", "kmeans"} and bars["kmeans"][-1] == "4", bars
