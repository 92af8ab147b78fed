import numpy as np
import pandas as pd
import pytest

from ssl_cluster_bench.leaderboard import MARK_LEGEND, aggregate, mark_best, to_markdown
from ssl_cluster_bench.significance import compare_predictions, metric_interval


def _rows(backbone, accs, k=10, dataset="digits"):
    return [{"backbone": backbone, "dataset": dataset, "split": "all", "method": "kmeans", "n_clusters": k,
             "seed": s, "acc": a, "nmi": 0.5} for s, a in enumerate(accs)]


def test_marking_best_and_within_one_std():
    df = pd.DataFrame(_rows("a", [0.79, 0.81])           # mean .80, std .01414
                      + _rows("b", [0.794, 0.796])       # .795: .005 below, within a's std
                      + _rows("c", [0.65, 0.75])         # .70: .10 below, std .0707 -> not within
                      + _rows("d", [0.76, 0.80])         # .78: .02 below, its own std .0283 covers it
                      + _rows("e", [0.5, 0.5], k=15)     # another k: its own group, best there
                      + _rows("f", [0.9, 0.9], dataset="other"))
    agg = aggregate(df)
    marks = mark_best(agg).assign(backbone=agg.backbone).set_index("backbone")["acc"]
    assert marks.to_dict() == {"a": "best", "b": "within", "c": "", "d": "within", "e": "best", "f": "best"}
    nmi = mark_best(agg)["nmi"]
    assert (nmi[agg.n_clusters == 10] == "best").all()  # equal means: all tie for best
    md = to_markdown(agg)
    assert "**80.0 ± 1.4**" in md and "*79.5 ± 0.1*" in md and "| 70.0 ± 7.1 " in md and MARK_LEGEND in md
    assert "**" not in to_markdown(agg, mark=False)


def test_markdown_shows_intervals():
    agg = aggregate(pd.DataFrame(_rows("a", [0.79, 0.81])))
    intervals = pd.DataFrame({"acc_low": [0.70], "acc_high": [0.90]}, index=agg.index)
    assert "80.0 ± 1.4 [70.0, 90.0]" in to_markdown(agg, intervals=intervals)


def _noisy_copy(y, keep, n_classes, rng):
    return np.where(rng.random(y.size) < keep, y, rng.integers(n_classes, size=y.size))


def test_interval_hand_computed_parts():
    y = np.repeat(np.arange(4), 50)  # 200 images, 4 classes
    perfect = metric_interval(y, [y, y], n_boot=50)
    assert (perfect.mean, perfect.low, perfect.high, perfect.se) == (1.0, 1.0, 1.0, 0.0)
    # seed 0 gets 120/200 right, seed 1 160/200 (wrong ones moved to the next class, so matching is identity)
    p0, p1 = y.copy(), y.copy()
    p0[np.arange(200) % 50 < 20] += 1
    p1[np.arange(200) % 50 < 10] += 1
    p0 %= 4
    p1 %= 4
    iv = metric_interval(y, [p0, p1], n_boot=200)
    assert iv.mean == pytest.approx(0.7)
    assert iv.seed_se == pytest.approx(np.std([0.6, 0.8], ddof=1) / np.sqrt(2))  # 0.1
    assert 0.02 < iv.sample_se < 0.05  # binomial-like: sqrt(.7 * .3 / 200) = 0.032
    assert iv.se == pytest.approx(np.hypot(iv.seed_se, iv.sample_se))
    assert iv.low < 0.7 - iv.se < 0.7 + iv.se < iv.high
    with pytest.raises(ValueError, match="same images"):
        metric_interval(y, [y[:-1]])
    with pytest.raises(ValueError, match="metric"):
        metric_interval(y, [y], metric="ari")


def test_interval_covers_truth_at_nominal_rate():
    """Population: seed s keeps a label with prob q_s ~ N(q, tau); true mean ACC = q + (1 - q) / C."""
    n_classes, n, n_seeds, q, tau, reps = 5, 300, 5, 0.6, 0.05, 100
    truth = q + (1 - q) / n_classes
    rng = np.random.default_rng(7)
    hits = 0
    for r in range(reps):
        y = rng.integers(n_classes, size=n)
        preds = [_noisy_copy(y, q + tau * rng.standard_normal(), n_classes, rng) for _ in range(n_seeds)]
        iv = metric_interval(y, preds, n_boot=50, random_state=r)
        hits += iv.low <= truth <= iv.high
    assert 0.88 <= hits / reps <= 0.995  # nominal 0.95; binomial sd over 100 reps is 0.022


def test_compare_paired():
    rng = np.random.default_rng(3)
    y = rng.integers(10, size=2000)
    good = [_noisy_copy(y, 0.8, 10, rng) for _ in range(5)]
    bad = [_noisy_copy(y, 0.7, 10, rng) for _ in range(5)]
    same = [_noisy_copy(y, 0.8, 10, rng) for _ in range(5)]
    c = compare_predictions(y, good, bad, n_boot=100)
    assert c.significant and c.low > 0 and c.diff == pytest.approx(c.mean_a - c.mean_b) and c.p_value < 0.001
    c = compare_predictions(y, good, same, n_boot=100)
    assert not c.significant and c.low < 0 < c.high and c.p_value > 0.05
    assert compare_predictions(y, bad, good, metric="nmi", n_boot=50).diff < 0


def test_cli_intervals_and_compare_from_stored_predictions(tmp_path, capsys):
    from ssl_cluster_bench import api
    from ssl_cluster_bench.cli import main

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 100)
    centres = rng.normal(size=(4, 8)) * 4
    for name, noise in (("sharp", 1.0), ("blurry", 3.5)):
        x = (centres[y] + noise * rng.normal(size=(400, 8))).astype(np.float32)
        api.import_features(x, y, name, "toy", cache=tmp_path / "cache")
    results = tmp_path / "lb.csv"
    common = ["--cache-dir", str(tmp_path / "cache"), "--results", str(results)]
    assert main(["-q", "run", "--backbones", "sharp,blurry", "--dataset", "toy", "--split", "all", "--seeds", "3",
                 "--overcluster", "1", "--n-init", "2", "--kmeans-iter", "15", *common]) == 0
    from ssl_cluster_bench.leaderboard import read_leaderboard

    lb = read_leaderboard(results)
    assert (lb.n_init == 2).all() and (lb.kmeans_iter == 15).all() and (lb.max_points_per_centroid == 256).all()
    capsys.readouterr()
    assert main(["-q", "leaderboard", str(results), "--intervals", "--n-boot", "40",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    out = capsys.readouterr().out
    sharp = next(line for line in out.splitlines() if line.startswith("| sharp"))
    assert sharp.count("[") == 2 and "**" in sharp  # ACC and NMI intervals; the best row is bold
    assert main(["compare", "sharp", "blurry", "--dataset", "toy", "--n-boot", "40", *common]) == 0
    out = capsys.readouterr().out
    assert "ACC" in out and "-> A better" in out
