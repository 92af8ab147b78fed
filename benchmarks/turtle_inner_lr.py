"""How TURTLE's inner learning rate "auto" was chosen: the label-free generalisation score over a grid of c.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/turtle_inner_lr.py \
        --sets digits-pixels+random-resnet18,fashion-pixels+lite0 --c 0.75,1.5,3,7.5 --seeds 2 --csv c.csv

``inner_lr="auto"`` gives every space the Adam learning rate c / ‖z‖₁ (‖z‖₁: the mean L1 norm of the space's
rows as the encoder sees them), so one logit moves by up to about c per inner step whatever the space's width
and scale; c is one constant for a single space and another for several spaces clustered jointly. This script
fits our TURTLE at several c (the module constants are set for the run; nothing else changes) and prints, per feature set and c, TURTLE's own generalisation score (the criterion: higher is better;
no label is read to compute it), the prediction error of the training curve at T/4, T/2 and T (is T long
enough?), and, in separate columns read only after the choice, ACC and NMI against the labels.
Feature sets are those of benchmarks/official_heads.py plus the digits joint space (pixels + random-resnet18);
Fashion-MNIST needs ``--data-root``. ``--csv`` keeps every fit and a re-run skips the fits already there.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import official_heads  # noqa: E402  (feature sets and their loading, shared with the official comparison)

from ssl_cluster_bench.heads import turtle as turtle_module  # noqa: E402
from ssl_cluster_bench.heads.turtle import TURTLE  # noqa: E402
from ssl_cluster_bench.metrics import evaluate  # noqa: E402

SETS = {**official_heads.FEATURE_SETS,
        "digits-pixels+random-resnet18": ("digits", None, ("pixels", "random-resnet18"))}
official_heads.FEATURE_SETS.update(SETS)
COLUMNS = ["set", "c", "seed", "n_spaces", "l1_norms", "inner_lrs", "score", "error_q1", "error_half",
           "error_end", "acc", "nmi", "cpu_s"]


def fit_one(spaces, labels, c: float, seed: int) -> dict:
    """One TURTLE fit at library defaults except the inner step constant c."""
    saved = turtle_module._INNER_LOGIT_STEP, turtle_module._INNER_LOGIT_STEP_JOINT
    turtle_module._INNER_LOGIT_STEP = turtle_module._INNER_LOGIT_STEP_JOINT = float(c)
    try:
        start = time.process_time()
        est = TURTLE(int(labels.max()) + 1, random_state=seed, verbose=False, device="cpu")
        est.fit(spaces if len(spaces) > 1 else spaces[0])
        cpu = time.process_time() - start
    finally:
        turtle_module._INNER_LOGIT_STEP, turtle_module._INNER_LOGIT_STEP_JOINT = saved
    error = est.history_[:, 0]
    t = len(error)
    # smoothed over 20 steps: the error of a single step wanders with the fresh inner classifiers
    at = lambda i: float(error[max(0, i - 20):i].mean())  # noqa: E731
    metrics = evaluate(labels, est.labels_)
    return {"n_spaces": len(spaces), "l1_norms": " ".join(f"{c / lr:.1f}" for lr in est.inner_lr_),
            "inner_lrs": " ".join(f"{lr:.3g}" for lr in est.inner_lr_), "score": float(est.score_),
            "error_q1": at(t // 4), "error_half": at(t // 2), "error_end": at(t),
            "acc": metrics["acc"], "nmi": metrics["nmi"], "cpu_s": cpu}


def table(rows: pd.DataFrame) -> pd.DataFrame:
    def fmt(s):
        return f"{s.mean():.3f}" + (f" ± {s.std(ddof=0):.3f}" if len(s) > 1 else "")
    out = []
    for (name, c), g in rows.groupby(["set", "c"], sort=True):
        out.append({"set": name, "c": c, "seeds": len(g), "inner lrs": g["inner_lrs"].iloc[0],
                    "score (criterion)": fmt(g["score"]),
                    "error T/4 · T/2 · T": f"{g['error_q1'].mean():.2f} · {g['error_half'].mean():.2f} · "
                                           f"{g['error_end'].mean():.2f}",
                    "ACC (read after)": fmt(g["acc"]), "NMI": fmt(g["nmi"]), "CPU s": f"{g['cpu_s'].mean():.0f}"})
    return pd.DataFrame(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", default="digits-pixels+random-resnet18,fashion-pixels+lite0",
                        help=f"comma-separated, of {', '.join(SETS)}")
    parser.add_argument("--c", default="0.75,1.5,3,7.5", help="comma-separated values of the inner step c")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1")
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST folder")
    parser.add_argument("--csv", type=Path, default=None, help="one row per fit; a re-run skips fits already there")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    grid = [float(c) for c in args.c.split(",")]
    rows = pd.read_csv(args.csv) if args.csv and args.csv.exists() else pd.DataFrame(columns=COLUMNS)
    for name in args.sets.split(","):
        if name not in SETS:
            raise SystemExit(f"unknown feature set {name!r}; choose from {', '.join(SETS)}")
        spaces, labels = official_heads.load_set(name, args.data_root)
        for c in grid:
            for seed in range(args.seeds):
                if ((rows["set"] == name) & (rows["c"].astype(float) == c) & (rows["seed"] == seed)).any():
                    continue
                row = {"set": name, "c": c, "seed": seed, **fit_one(spaces, labels, c, seed)}
                print(f"{name} c={c} seed={seed}: score {row['score']:.4f} (ACC {row['acc']:.3f}, "
                      f"{row['cpu_s']:.0f} CPU s)", flush=True)
                rows = pd.concat([rows, pd.DataFrame([row])], ignore_index=True)
                if args.csv:
                    rows.to_csv(args.csv, index=False)
    print(table(rows[rows["set"].isin(args.sets.split(","))]).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
