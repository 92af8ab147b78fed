"""Official clustering heads against ours on the same cached features (issue 20): one table with ratios.

    python benchmarks/official_heads.py --turtle-repo /tmp/turtle [--heads turtle] [--sets digits-pixels,...]
    python benchmarks/official_heads.py --heads temi --temi-repo /tmp/temi    # official TEMI (official_temi.py)
        [--seeds 3] [--steps 1000] [--csv rows.csv]
    python benchmarks/official_heads.py --turtle-repo /tmp/turtle --emit-reference   # numbers of the tests

The official code is never vendored: ``--turtle-repo`` is a checkout of github.com/mlbio-epfl/turtle, whose
Python files are copied at run time into a scratch folder outside this repository (``--scratch``, default a
temporary folder), next to our cached features written in the file layout its ``run_turtle.py`` reads
(``representations/<space>/<dataset>_{train,val}.npy`` and ``labels/<dataset>_val.npy``; train = val = the rows
we cluster, as the issue's comparison did). Every official run is a child process (``OMP_NUM_THREADS`` as set
here), seeded with the same seed as ours; its saved task encoder labels the rows, scored by our metrics.

Feature sets (the cache entries of ``sscb extract``; Fashion-MNIST needs ``--data-root``):
digits-pixels, digits-random-resnet18, fashion-lite0 (test split, efficientnet-lite0-96) and
fashion-pixels+lite0 (the joint space). For each set and head: ``--seeds`` seeds of the official code and of
ours, mean ± std of ACC / NMI / ARI and wall seconds; ours/official ratios; for TURTLE the loss-equality check
(5 outer steps of both from identical weights, classifiers and batches on our standardised features: largest
|Δ loss| and |Δ weight|). ``--steps`` gives both the same number of outer steps T (default: each its own
default, official T = 6000, ours "auto"). ``--official-input standardised`` runs only the official code, fed
the features as our TURTLE sees them (centred, one RMS scale per space): rows "official-std", which separate
the preprocessing from the other differences. Rows are written to ``--csv`` after every run, and a re-run with the
same ``--csv`` skips the runs already there. Heads are one function each (``HEADS``): ``turtle`` here; another
head adds its own ``run_<head>`` and ``equality_<head>``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_cluster_bench.metrics import evaluate

# name -> (dataset, split or None, backbones aligned row by row)
FEATURE_SETS = {
    "digits-pixels": ("digits", None, ("pixels",)),
    "digits-random-resnet18": ("digits", None, ("random-resnet18",)),
    "fashion-lite0": ("fashion-mnist", "test", ("efficientnet-lite0-96",)),
    "fashion-pixels+lite0": ("fashion-mnist", "test", ("pixels", "efficientnet-lite0-96")),
}
# run_turtle.py accepts only its own space and dataset names; ours are written under these slot names.
TURTLE_SLOTS = ("clipRN50", "clipRN101", "clipRN50x4", "clipRN50x16")
TURTLE_DATASET = "sscb"
EQUALITY_STEPS = 5

# A child process that imports the official run_turtle from the scratch copy, registers our dataset's number of
# clusters, records the value of every backward() call (M inner losses, then the outer loss, per step) and runs.
_TURTLE_CHILD = r"""
import json, sys, torch
sys.path.insert(0, sys.argv[1])
import utils, run_turtle
utils.datasets_to_c[sys.argv[2]] = int(sys.argv[3])
values = []
_backward = torch.Tensor.backward
def _recorded(self, *args, **kwargs):
    values.append(float(self.detach()))
    return _backward(self, *args, **kwargs)
torch.Tensor.backward = _recorded
run_turtle.run(sys.argv[5:])
with open(sys.argv[4], "w") as f:
    json.dump(values, f)
"""


# ----------------------------------------------------------------------------- features
def load_set(name: str, data_root: str | None) -> tuple[list[np.ndarray], np.ndarray]:
    """The set's spaces (float32, rows aligned) and labels, from the feature cache (extracted on first use)."""
    from ssl_cluster_bench.api import extract

    dataset, split, backbones = FEATURE_SETS[name]
    spaces, labels = [], None
    for backbone in backbones:
        entry = extract(backbone, dataset, data_root=data_root if dataset != "digits" else None, split=split,
                        progress=False)
        if labels is not None and not np.array_equal(entry.labels, labels):
            raise RuntimeError(f"{name}: the cache entries of {backbones} are not aligned row by row")
        labels = np.asarray(entry.labels)
        spaces.append(np.asarray(entry.features, dtype=np.float32))
    return spaces, labels


def standardised(spaces: list[np.ndarray]) -> list[np.ndarray]:
    """Every space as our TURTLE sees it (standardize="global"): centred, divided by one RMS spread."""
    return [((z - z.mean(axis=0)) / np.sqrt(z.var(axis=0).mean())).astype(np.float32) for z in spaces]


# ----------------------------------------------------------------------------- official TURTLE
def turtle_scratch(repo: Path, scratch: Path) -> Path:
    """Copy the official repository's Python files into ``scratch/turtle_code`` (never into this repository)."""
    if not (repo / "run_turtle.py").is_file():
        raise SystemExit(f"--turtle-repo {repo}: no run_turtle.py there; pass a checkout of "
                         "github.com/mlbio-epfl/turtle")
    code = scratch / "turtle_code"
    code.mkdir(parents=True, exist_ok=True)
    for path in repo.glob("*.py"):
        shutil.copy2(path, code / path.name)
    return code


def run_official_turtle(code: Path, root: Path, spaces: list[np.ndarray], labels: np.ndarray, k: int, seed: int,
                        steps: int | None, extra: list[str] = ()) -> dict:
    """One official run_turtle.py run on ``spaces`` (written under ``root``); returns its task encoder
    (weights and biases per space, weight norm folded in), the recorded backward values and the wall seconds."""
    if root.exists():
        shutil.rmtree(root)
    phis = list(TURTLE_SLOTS[:len(spaces)])
    for phi, z in zip(phis, spaces):
        (root / "representations" / phi).mkdir(parents=True)
        for part in ("train", "val"):
            np.save(root / "representations" / phi / f"{TURTLE_DATASET}_{part}.npy", z)
    (root / "labels").mkdir(parents=True)
    np.save(root / "labels" / f"{TURTLE_DATASET}_val.npy", labels)
    values = root / "backward_values.json"
    args = ["--dataset", TURTLE_DATASET, "--phis", *phis, "--device", "cpu", "--root_dir", str(root),
            "--seed", str(seed), *([] if steps is None else ["--T", str(steps)]), *extra]
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _TURTLE_CHILD, str(code), TURTLE_DATASET, str(k), str(values),
                           *args], capture_output=True, text=True, env=os.environ.copy())
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"official run_turtle.py failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    (checkpoint,) = (root / "task_checkpoints").rglob("*.pt")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    layers = [(state[f"phi{i + 1}"]["weight"].numpy(), state[f"phi{i + 1}"]["bias"].numpy())
              for i in range(len(spaces))]
    return {"layers": layers, "backward": json.loads(values.read_text()), "wall": wall}


def official_turtle_labels(layers, spaces: list[np.ndarray]) -> np.ndarray:
    """The official encoder's labels: argmax of the mean over spaces of softmax(z Wᵀ + b)."""
    probs = [torch.softmax(torch.from_numpy(z) @ torch.from_numpy(w).T + torch.from_numpy(b), dim=1)
             for (w, b), z in zip(layers, spaces)]
    return torch.stack(probs).mean(dim=0).argmax(dim=1).numpy()


def replay_turtle(spaces: list[np.ndarray], k: int, seed: int, steps: int, gamma: float = 10.0,
                  inner_steps: int = 10, inner_lr: float = 1e-3, lr: float = 1e-3,
                  batch_size: int = 10000) -> tuple[list[float], list[tuple[np.ndarray, np.ndarray]]]:
    """Our ``turtle_step`` from the official code's starting point: the same seeds of torch and numpy, the
    encoder layers and the cold-started inner classifiers drawn as ``torch.nn.Linear`` in the official order,
    the same batches (``np.random.choice``). Returns the outer losses (error − γ · entropy) and the encoder's
    weights (k, d) and biases after the last step."""
    from ssl_cluster_bench.heads.turtle import TaskEncoder, turtle_step

    torch.manual_seed(seed)
    np.random.seed(seed)
    dims = [z.shape[1] for z in spaces]
    starts = [torch.nn.Linear(d, k) for d in dims]
    state = torch.get_rng_state()  # building our encoder must not consume the global stream
    encoder = TaskEncoder(dims, k, generator=torch.Generator())
    torch.set_rng_state(state)
    with torch.no_grad():
        for layer, start in zip(encoder.layers, starts):
            layer.weight = start.weight.detach().clone()   # weight norm's right inverse: g = ‖w‖ per row, v = w
            layer.bias.copy_(start.bias)
    optimizer = torch.optim.Adam(encoder.parameters(), lr=lr)
    [torch.nn.Linear(d, k) for d in dims]  # the official code draws one set of classifiers before its loop
    n = spaces[0].shape[0]
    losses = []
    for _ in range(steps):
        idx = np.random.choice(n, size=min(batch_size, n), replace=False)
        start = [torch.nn.Linear(d, k) for d in dims]
        classifiers = [[c.weight.detach().T.contiguous(), c.bias.detach().clone()] for c in start]
        error, entropy = turtle_step(encoder, optimizer, [torch.from_numpy(z[idx]) for z in spaces], gamma,
                                     inner_steps, inner_lr, classifiers=classifiers)
        losses.append(error - gamma * entropy)
    with torch.no_grad():
        layers = [(layer.weight.detach().numpy().copy(), layer.bias.detach().numpy().copy())
                  for layer in encoder.layers]
    return losses, layers


def equality_turtle(code: Path, scratch: Path, spaces: list[np.ndarray], labels: np.ndarray, k: int,
                    seed: int = 0, steps: int = EQUALITY_STEPS) -> dict:
    """``steps`` outer steps of the official code and of ours from identical weights, classifiers and batches on
    our standardised features: the largest differences of the outer losses and of the encoder weights."""
    spaces = standardised(spaces)
    official = run_official_turtle(code, scratch / "equality", spaces, labels, k, seed, steps)
    outer = official["backward"][10::11]  # M = 10 inner backward() calls, then the outer one, per step
    losses, layers = replay_turtle(spaces, k, seed, steps)
    return {"max_loss_diff": float(np.max(np.abs(np.array(outer) - np.array(losses)))),
            "max_weight_diff": float(max(np.abs(a - b).max() for ours, theirs in zip(layers, official["layers"])
                                         for a, b in zip(ours, theirs)))}


def run_turtle(code: Path, scratch: Path, spaces, labels, k: int, seed: int, steps: int | None,
               impls=("official", "ours")) -> list[dict]:
    """One seed of the official TURTLE and of ours (library defaults) on the same cached features. The official
    code gets them raw (as it is meant to be used); "official-std" is the official code fed them as our TURTLE
    sees them (centred, one RMS scale per space), to separate the preprocessing from the other differences."""
    from ssl_cluster_bench.heads.turtle import TURTLE

    rows = []
    if "official-std" in impls:
        seen = standardised(spaces)
        official = run_official_turtle(code, scratch / "run", seen, labels, k, seed, steps)
        rows.append({"impl": "official-std", "wall_s": official["wall"],
                     **evaluate(labels, official_turtle_labels(official["layers"], seen))})
    if "official" in impls:
        official = run_official_turtle(code, scratch / "run", spaces, labels, k, seed, steps)
        rows.append({"impl": "official", "wall_s": official["wall"],
                     **evaluate(labels, official_turtle_labels(official["layers"], spaces))})
    if "ours" in impls:
        start = time.perf_counter()
        est = TURTLE(k, n_steps="auto" if steps is None else steps, random_state=seed, verbose=False,
                     device="cpu").fit(spaces if len(spaces) > 1 else spaces[0])
        rows.append({"impl": "ours", "wall_s": time.perf_counter() - start, "score": est.score_,
                     **evaluate(labels, est.labels_)})
    return rows


HEADS = {"turtle": (run_turtle, equality_turtle), "temi": None}  # TEMI: official_temi.py (run_temi_sets)
# official_temi.py names its spaces differently; TEMI has no joint spaces
TEMI_SPACES = {"digits-pixels": "pixels", "digits-random-resnet18": "random-resnet18",
               "fashion-lite0": "fashion-efficientnet-lite0-96"}


def run_temi_sets(args: argparse.Namespace) -> None:
    """Official TEMI against ours on the chosen feature sets: official_temi.py's run, its table printed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from official_temi import run_temi

    spaces = [TEMI_SPACES[s] for s in args.sets if s in TEMI_SPACES]
    csv = args.csv.with_name(f"{args.csv.stem}.temi.csv") if args.csv else None
    run_temi(argparse.Namespace(official=args.temi_repo, spaces=",".join(spaces), seeds=args.seeds,
                                data_root=Path(args.data_root), csv=csv))


# ----------------------------------------------------------------------------- reference numbers of the tests
def reference_problem() -> tuple[list[np.ndarray], np.ndarray]:
    """Tiny two-space problem of the step-equality test (tests/test_temi_turtle.py builds it the same way):
    3 clusters, 60 rows, spaces of 4 and 6 dims, each a noisy view of the cluster means."""
    gen = torch.Generator().manual_seed(20)
    y = torch.arange(60) % 3
    a = torch.randn(3, 4, generator=gen)[y] * 2 + torch.randn(60, 4, generator=gen)
    b = torch.randn(3, 6, generator=gen)[y] * 2 + torch.randn(60, 6, generator=gen)
    return [a.numpy(), b.numpy()], y.numpy()


def regression_problem() -> tuple[list[np.ndarray], np.ndarray]:
    """Small two-space problem of the labelling test: 3 clusters, 90 rows, spaces of 384 and 512 dims with
    cluster means 0.3 noise-sd apart per dim (more dims than rows, as in real features of small datasets)."""
    gen = torch.Generator().manual_seed(21)
    y = torch.arange(90) % 3
    spaces = [(torch.randn(3, d, generator=gen)[y] * 0.3 + torch.randn(90, d, generator=gen)).numpy()
              for d in (384, 512)]
    return spaces, y.numpy()


def emit_reference(code: Path, scratch: Path) -> None:
    """Print, as Python literals, what the official code gives: on reference_problem() the outer losses and
    encoder weights after 3 steps (seed 0); on regression_problem() its labels with its defaults (seed 0)."""
    spaces, y = reference_problem()
    short = run_official_turtle(code, scratch / "reference", spaces, y, 3, 0, 3)
    np.set_printoptions(precision=8, suppress=False, linewidth=110)
    print(f"OFFICIAL_LOSSES = {[round(v, 7) for v in short['backward'][10::11]]}")
    for i, (w, b) in enumerate(short["layers"]):
        print(f"OFFICIAL_W{i} = {np.array2string(w, separator=', ')}")
        print(f"OFFICIAL_B{i} = {np.array2string(b, separator=', ')}")
    spaces, y = regression_problem()
    full = run_official_turtle(code, scratch / "reference", spaces, y, 3, 0, None)
    print(f"OFFICIAL_LABELS = {official_turtle_labels(full['layers'], spaces).tolist()}  "
          f"# T = 6000, {full['wall']:.0f} s")


# ----------------------------------------------------------------------------- table
def summary(rows: pd.DataFrame, checks: dict) -> str:
    """One markdown table: mean ± std per head × set × implementation, the ours/official ratios of mean ACC and
    mean wall time, and the equality check; the ratios are ours / official on raw input."""
    lines = ["| head | features | T | seeds | official ACC | official ACC, standardised input (seeds) | ours ACC | "
             "ACC ratio | official NMI | ours NMI | official wall s | ours wall s | time ratio | "
             "max Δloss / ΔW (5 steps) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (head, name, steps), group in rows.groupby(["head", "set", "steps"], sort=False):
        stat = {impl: g for impl, g in group.groupby("impl")}
        if not {"official", "ours"} <= set(stat):
            continue
        o, u = stat["official"], stat["ours"]
        fmt = lambda s: f"{s.mean():.3f} ± {s.std(ddof=1) if len(s) > 1 else 0:.3f}"  # noqa: E731
        std = stat.get("official-std")
        check = checks.get((head, name))
        lines.append(f"| {head} | {name} | {steps} | {len(u)} | {fmt(o['acc'])} | "
                     f"{fmt(std['acc']) + f' ({len(std)})' if std is not None else '–'} | {fmt(u['acc'])} | "
                     f"{u['acc'].mean() / o['acc'].mean():.3f} | {fmt(o['nmi'])} | {fmt(u['nmi'])} | "
                     f"{o['wall_s'].mean():.0f} | {u['wall_s'].mean():.0f} | "
                     f"{u['wall_s'].mean() / o['wall_s'].mean():.2f} | "
                     + (f"{check['max_loss_diff']:.1e} / {check['max_weight_diff']:.1e} |" if check else "– |"))
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--heads", default="turtle", help=f"comma-separated, of {', '.join(HEADS)}")
    parser.add_argument("--turtle-repo", type=Path, default=None, help="checkout of mlbio-epfl/turtle")
    parser.add_argument("--temi-repo", type=Path, default=None,
                        help="checkout of HHU-MMBS/TEMI-official-BMVC2023 (for --heads temi)")
    parser.add_argument("--sets", default=",".join(FEATURE_SETS), help="comma-separated feature sets")
    parser.add_argument("--data-root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST folder")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1")
    parser.add_argument("--steps", type=int, default=None, help="outer steps T for both (default: each its own)")
    parser.add_argument("--csv", type=Path, default=None, help="per-run rows, written after every run; resumes")
    parser.add_argument("--scratch", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--no-check", action="store_true", help="skip the loss-equality check")
    parser.add_argument("--impls", default="official,ours",
                        help="comma-separated, of official (raw features), ours, official-std (the official code "
                             "on our standardised features); with --csv only the missing ones run")
    parser.add_argument("--official-input", choices=("raw", "standardised"), default="raw",
                        help="standardised: the same as --impls official-std")
    parser.add_argument("--emit-reference", action="store_true", help="print the numbers of the tests and stop")
    args = parser.parse_args(argv)
    args.heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    args.sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    for option, given, known in (("--heads", args.heads, HEADS), ("--sets", args.sets, FEATURE_SETS)):
        unknown = [g for g in given if g not in known]
        if unknown:
            parser.error(f"{option}: unknown {unknown}; choose from {', '.join(known)}")
    if "temi" in args.heads and args.temi_repo is None:
        parser.error("--temi-repo is required for the temi head (a checkout of github.com/HHU-MMBS/TEMI-official-BMVC2023)")
    if "turtle" in args.heads and args.turtle_repo is None:
        parser.error("--turtle-repo is required for the turtle head (a checkout of github.com/mlbio-epfl/turtle)")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    args.impls = ["official-std"] if args.official_input == "standardised" else \
        [i.strip() for i in args.impls.split(",") if i.strip()]
    unknown = [i for i in args.impls if i not in ("official", "ours", "official-std")]
    if unknown or not args.impls:
        parser.error(f"--impls: unknown {unknown}; choose from official, ours, official-std")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="sscb_official_"))
    repo_root = Path(__file__).resolve().parents[1]
    if scratch.resolve().is_relative_to(repo_root):
        raise SystemExit(f"--scratch {scratch}: must lie outside this repository (the official code is never "
                         "copied into it)")
    try:
        return _run(args, scratch)
    finally:
        if args.scratch is None:  # our own temporary folder: the copied official code and the written features
            shutil.rmtree(scratch, ignore_errors=True)


def _run(args: argparse.Namespace, scratch: Path) -> int:
    code = turtle_scratch(args.turtle_repo.resolve(), scratch) if "turtle" in args.heads else None
    if args.emit_reference:
        emit_reference(code, scratch)
        return 0
    done = pd.read_csv(args.csv) if args.csv and args.csv.is_file() else pd.DataFrame()
    rows = done.to_dict("records")
    # Equality checks are kept beside the CSV, so a resumed run (--no-check) still shows them in its table.
    checks_file = args.csv.with_name(f"{args.csv.stem}.checks.json") if args.csv else None
    checks = {tuple(key.split("/")): value for key, value in
              (json.loads(checks_file.read_text()) if checks_file and checks_file.is_file() else {}).items()}
    steps_label = "default" if args.steps is None else str(args.steps)
    if "temi" in args.heads:
        run_temi_sets(args)
    for head in [h for h in args.heads if h != "temi"]:
        run_head, equality = HEADS[head]
        for name in args.sets:
            spaces, labels = load_set(name, args.data_root)
            k = int(np.unique(labels).size)
            if not args.no_check:
                checks[(head, name)] = equality(code, scratch, spaces, labels, k)
                print(f"{head} {name}: equality over {EQUALITY_STEPS} steps {checks[(head, name)]}", flush=True)
                if checks_file:
                    checks_file.write_text(json.dumps({"/".join(key): v for key, v in checks.items()}, indent=1))
            for seed in range(args.seeds):
                missing = [i for i in args.impls if not any(
                    r["head"] == head and r["set"] == name and r["seed"] == seed and str(r["steps"]) == steps_label
                    and r["impl"] == i for r in rows)]
                if not missing:
                    continue
                for row in run_head(code, scratch, spaces, labels, k, seed, args.steps, missing):
                    rows.append({"head": head, "set": name, "steps": steps_label, "seed": seed, **row})
                    print(f"{head} {name} T={steps_label} seed {seed} {row['impl']}: ACC {row['acc']:.3f} "
                          f"NMI {row['nmi']:.3f} ({row['wall_s']:.0f} s)", flush=True)
                if args.csv:
                    tmp = args.csv.with_name(f".{args.csv.name}.tmp")
                    pd.DataFrame(rows).to_csv(tmp, index=False)
                    tmp.replace(args.csv)
    table = pd.DataFrame(rows)
    if table.empty:  # only TEMI was asked for: official_temi.py printed its own table
        return 0
    table["steps"] = table["steps"].astype(str)
    print(f"\nthreads: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, seeds {args.seeds}\n")
    print(summary(table[table["head"].isin(args.heads) & table["set"].isin(args.sets)], checks))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
