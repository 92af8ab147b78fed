"""Our TEMI against the official TEMI code (HHU-MMBS/TEMI-official-BMVC2023) on the same cached features.

    python benchmarks/official_temi.py --official /tmp/temi_official                       # digits pixels, 3 seeds
    python benchmarks/official_temi.py --official /tmp/temi_official --spaces pixels,random-resnet18 \
        --epochs 30 --csv official_temi.csv
    python benchmarks/official_temi.py --official /tmp/temi_official --emit-reference      # the numbers of the test

``--official`` is a checkout of the official repository (e.g. ``git archive HEAD | tar -x -C /tmp/temi_official``
of the mirror); the project never vendors it. Its own modules are imported from that folder and its own
training function (``train_main.train_dino``) trains the heads; this adapter replaces only what reads data
(``load_model``'s embedding/statistics files and ``EmbedNN``'s dataset) and the CUDA-only calls (``.cuda()``,
``torch.cuda.synchronize``, a TensorBoard writer when ``tensorboard`` is not installed), so the heads, loss,
optimiser, schedules, EMA and head selection are the official code's. The official run follows the README's
command for precomputed embeddings (``--precomputed --lr=1e-4 --min_lr=1e-4 --warmup_epochs=20
--max_momentum_teacher=0.996 --knn=50 --num_heads=16 --loss TEMI --loss-args beta=0.6``; the head is the default
2-layer MLP 512/256), at the same batch size and number of epochs as ours (its code scales the lr by
batch/256) and with the same neighbour lists (cosine, self excluded, K = 50: the official ``gen_embeds`` recipe).
Its clusters are those of the last checkpoint's teacher, best head (lowest mean training loss of the last epoch),
as ``eval_experiment.py`` builds them; it also reports the best ACC over checkpoints, which reads the labels, so
that is not used.

Every row (space × implementation × seed) is appended to ``--csv`` as soon as it ends. The final table gives
ACC mean ± std, wall seconds, and ours/official ratios; the loss-equality check (official ``TEMI`` loss module
against ``ssl_cluster_bench.heads.temi.temi_loss`` on random probability tables) is printed first.
``run_temi(args)`` is the entry point for ``benchmarks/official_heads.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ssl_cluster_bench.heads.neighbors import mine_neighbors
from ssl_cluster_bench.heads.temi import TEMI, temi_loss, update_prior
from ssl_cluster_bench.metrics import evaluate

SPACES = ("pixels", "random-resnet18", "fashion-efficientnet-lite0-96")


# ---------------------------------------------------------------------------------------------- official code
def load_official(path: Path) -> types.SimpleNamespace:
    """Import the official modules from ``path`` (losses, train_main, multi_head, loaders, utils, augs)."""
    path = Path(path).expanduser().resolve()
    if not (path / "train_main.py").is_file() or not (path / "losses" / "multihead_losses.py").is_file():
        raise SystemExit(f"--official {path}: not a TEMI-official-BMVC2023 checkout (no train_main.py / "
                         "losses/multihead_losses.py); extract one with `git --git-dir=<mirror> archive HEAD | "
                         "tar -x -C <dir>`")
    sys.path.insert(0, str(path))
    # model_builders/__init__ also imports the backbone zoo (clip, timm weights); embeddings need only the head
    # module, so the package is registered without running its __init__.
    package = types.ModuleType("model_builders")
    package.__path__ = [str(path / "model_builders")]
    package.load_model = _no_backbone_zoo  # train_main imports it; official_fit puts the embedding version in
    sys.modules["model_builders"] = package
    try:
        importlib.import_module("torch.utils.tensorboard")
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = _NullWriter
        sys.modules["torch.utils.tensorboard"] = stub
    # CPU shims: the official training loop calls .cuda() and torch.cuda.synchronize() unconditionally.
    if not torch.cuda.is_available():
        torch.Tensor.cuda = lambda self, *a, **k: self
        torch.nn.Module.cuda = lambda self, *a, **k: self
        torch.cuda.synchronize = lambda *a, **k: None
    mods = types.SimpleNamespace()
    for name in ("utils", "losses", "loaders", "loaders.embedNN", "model_builders.multi_head", "main_args",
                 "train_main", "augs.augs"):
        setattr(mods, name.replace(".", "_"), importlib.import_module(name))
    return mods


def _no_backbone_zoo(*args, **kwargs):
    raise RuntimeError("the official backbone zoo is not loaded: official_fit trains on precomputed features only")


class _NullWriter:
    """Stands in for TensorBoard's SummaryWriter (the official loop logs scalars and histograms to it)."""

    def __init__(self, *args, **kwargs):
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class _Embeddings(torch.utils.data.Dataset):
    """Our features in the shape of the official PrecomputedEmbeddingDataset (targets are -1: never read)."""

    def __init__(self, features: np.ndarray):
        self.emb = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        self.targets = torch.full((len(self.emb),), -1, dtype=torch.long)

    def __getitem__(self, index):
        return self.emb[index], self.targets[index]

    def __len__(self):
        return len(self.emb)


def official_args(mods, n_clusters: int, seed: int, batch: int, epochs: int, out_dir: Path, knn_path: Path,
                  embed_norm: bool, lr: float = 1e-4) -> argparse.Namespace:
    """The README's precomputed-embedding TEMI command, with our batch size, epochs and paths."""
    argv = ["--precomputed", "--disable_ddp", "--arch", "ours", f"--batch_size={batch}", "--use_fp16=false",
            "--max_momentum_teacher=0.996", f"--lr={lr}", "--warmup_epochs=20", f"--min_lr={lr}",
            f"--epochs={epochs}", "--output_dir", str(out_dir), "--dataset", "CIFAR10", "--knn=50",
            f"--out_dim={n_clusters}", "--num_heads=16", "--loss", "TEMI", "--loss-args", "beta=0.6",
            f"--seed={seed}", "--num_workers=0", "--knn_path", str(knn_path), "--saveckp_freq=0"]
    if embed_norm:
        argv.append("--embed_norm")
    args = mods.main_args.process_args(mods.main_args.get_args_parser().parse_args(argv))
    args.warmup_epochs = warmup_epochs(epochs)
    # The teacher temperature's warm-up goes from 0.1 to 0.1 (defaults): its length changes nothing.
    args.warmup_teacher_temp_epochs = min(args.warmup_teacher_temp_epochs, epochs)
    return args


def warmup_epochs(epochs: int) -> int:
    """The README's 20 warm-up epochs of 100, kept at the same fraction when a run is shortened."""
    return int(round(20 * epochs / 100))


def official_fit(mods, features: np.ndarray, neighbors: np.ndarray, n_clusters: int, seed: int, batch: int,
                 epochs: int, embed_norm: bool = False, log: Path | None = None, lr: float = 1e-4) -> np.ndarray:
    """Train with the official ``train_dino`` and return the last teacher's best-head clusters of every row."""
    with tempfile.TemporaryDirectory(prefix="temi_official_") as scratch:
        scratch = Path(scratch)
        knn_path = scratch / "knn.pt"
        torch.save(torch.from_numpy(neighbors.astype(np.int64)), knn_path)
        args = official_args(mods, n_clusters, seed, batch, epochs, scratch / "run", knn_path, embed_norm, lr)
        (scratch / "run").mkdir()
        data = _Embeddings(features)
        multi_head = mods.model_builders_multi_head

        def load_model(config, head=True, split_preprocess=False):
            # What the official load_model does for --precomputed, fed from memory instead of data/embeddings/.
            config = mods.main_args.set_default_args(config)
            config.embed_dim = features.shape[1]
            params = inspect.signature(multi_head.MultiHeadClassifier).parameters
            model = multi_head.MultiHeadClassifier(config.arch, **{k: v for k, v in vars(config).items()
                                                                   if k in params})
            if config.embed_norm:
                model.set_mean_std(data.emb.mean(dim=0), data.emb.std(dim=0))
            return (model, None, None) if split_preprocess else (model, None)

        mods.train_main.load_model = load_model
        mods.loaders_embedNN.get_dataset = lambda *a, **k: data
        stream = open(log, "a") if log else io.StringIO()
        with stream, contextlib.redirect_stdout(stream):
            mods.train_main.train_dino(args, _NullWriter())
            teacher, _ = load_model(args)
            teacher.load_state_dict(torch.load(scratch / "run" / "checkpoint.pth", map_location="cpu",
                                               weights_only=False)["teacher"], strict=False)
        teacher.eval()
        with torch.no_grad():
            return teacher(data.emb).argmax(dim=1).numpy()


# ---------------------------------------------------------------------------------------------- loss check
def reference_table(seed: int = 0, heads: int = 2, batch: int = 3, k: int = 4) -> dict[str, torch.Tensor]:
    """A tiny fixed problem: student/teacher logits of anchors and neighbours and a non-uniform prior."""
    g = torch.Generator().manual_seed(seed)
    logits = {name: torch.randn(heads, batch, k, generator=g, dtype=torch.float64)
              for name in ("student_x", "student_n", "teacher_x", "teacher_n")}
    prior = torch.softmax(torch.randn(heads, k, generator=g, dtype=torch.float64), dim=-1)
    return {**logits, "prior": prior}


def official_loss(mods, table: dict, beta: float = 0.6, student_temp: float = 0.1, teacher_temp: float = 0.1,
                  probs_momentum: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head loss and the updated prior from the official ``losses.TEMI`` on ``table`` (two crops: x, n)."""
    heads, batch, k = table["student_x"].shape
    loss = mods.losses.TEMI(beta=beta, num_heads=heads, out_dim=k, batchsize=batch, warmup_teacher_temp=teacher_temp,
                            teacher_temp=teacher_temp, warmup_teacher_temp_epochs=0, nepochs=1,
                            student_temp=student_temp, probs_momentum=probs_momentum).double()
    loss.pk.copy_(table["prior"])
    student = [torch.cat([table["student_x"][h], table["student_n"][h]]) for h in range(heads)]
    teacher = [torch.cat([table["teacher_x"][h], table["teacher_n"][h]]) for h in range(heads)]
    return loss(student, teacher, epoch=0).detach(), loss.pk.detach().clone()


def our_loss(table: dict, beta: float = 0.6, student_temp: float = 0.1, teacher_temp: float = 0.1,
             probs_momentum: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """The same with ``temi_loss``/``update_prior`` (prior updated first, as both training loops do)."""
    s = {n: torch.softmax(table[f"student_{n}"] / student_temp, dim=-1) for n in "xn"}
    t = {n: torch.softmax(table[f"teacher_{n}"] / teacher_temp, dim=-1) for n in "xn"}
    prior = update_prior(table["prior"], t["x"], t["n"], probs_momentum)
    loss, _ = temi_loss(s["x"], s["n"], t["x"], t["n"], prior, beta)
    return loss.detach(), prior


def loss_check(mods, seeds: int = 20) -> float:
    """Largest |official − ours| over per-head losses and priors of ``seeds`` random tables and several β."""
    worst = 0.0
    for seed in range(seeds):
        table = reference_table(seed, heads=3, batch=8, k=5)
        for beta in (0.6, 1.0, 0.3):
            (lo, po), (lu, pu) = official_loss(mods, table, beta), our_loss(table, beta)
            worst = max(worst, float((lo - lu).abs().max()), float((po - pu).abs().max()))
    return worst


# Seed of the test's table: among seeds 0-199 of reference_table() it has the pair on which the students and
# teachers disagree most (the sum of the PMI is ~1e-9), where any floor larger than the smallest float shows.
REFERENCE_SEED = 173


def emit_reference(mods) -> str:
    """Python text of the reference numbers for tests/test_temi_official.py (official loss on the table)."""
    table = reference_table(REFERENCE_SEED)
    loss, prior = official_loss(mods, table)
    fmt = lambda t: np.array2string(t.numpy(), precision=10, separator=", ", floatmode="fixed")  # noqa: E731
    lines = [f"{name} = {fmt(value)}" for name, value in table.items()]
    lines += [f"official_loss = {fmt(loss)}  # per head, beta 0.6, tau_s = tau_t = 0.1",
              f"official_prior = {fmt(prior)}  # p̄ after the update with momentum 0.9"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- features
def load_space(name: str, data_root: Path | None) -> tuple[np.ndarray, np.ndarray]:
    if name in ("pixels", "random-resnet18"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from heads_digits import load_spaces

        spaces, y = load_spaces({name})
        return spaces[name], y
    if name == "fashion-efficientnet-lite0-96":
        from ssl_cluster_bench.api import extract

        entry = extract("efficientnet-lite0-96", "fashion-mnist", data_root=data_root, split="test", progress=False)
        return np.asarray(entry.features, dtype=np.float32), np.asarray(entry.labels)
    raise SystemExit(f"--spaces: unknown {name!r}; choose from {', '.join(SPACES)}")


# ---------------------------------------------------------------------------------------------- benchmark
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="checkout of HHU-MMBS/TEMI-official-BMVC2023")
    parser.add_argument("--spaces", default="pixels", help=f"comma-separated subset of {', '.join(SPACES)}")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per implementation")
    parser.add_argument("--epochs", type=int, default=100, help="epochs for both implementations")
    parser.add_argument("--impls", default="official,ours", help="which implementations to run")
    parser.add_argument("--ours", default="", help="extra TEMI keyword arguments for ours, e.g. n_layers=2,lr=4e-4")
    parser.add_argument("--official-lr", type=float, default=1e-4,
                        help="the official --lr (its code multiplies it by batch/256; the README uses 1e-4)")
    parser.add_argument("--data-root", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--csv", type=Path, default=None, help="per-seed rows, rewritten after every row")
    parser.add_argument("--log", type=Path, default=None, help="the official code's console output goes here")
    parser.add_argument("--emit-reference", action="store_true", help="print the test's reference numbers and exit")
    args = parser.parse_args(argv)
    for option, value, choices in (("--spaces", args.spaces, SPACES), ("--impls", args.impls, ("official", "ours"))):
        unknown = [v for v in (s.strip() for s in value.split(",")) if v and v not in choices]
        if unknown:
            parser.error(f"{option}: unknown {unknown}; choose from {', '.join(choices)}")
    if args.seeds < 1 or args.epochs < 1:
        parser.error(f"--seeds and --epochs must be >= 1, got {args.seeds} and {args.epochs}")
    return args


def _kwargs(text: str) -> dict:
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, _, value = item.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else float(value) if value[:1].isdigit() else value
    return out


def summary(rows: pd.DataFrame) -> str:
    stats = rows.groupby(["space", "impl"], sort=False)[["acc", "nmi", "wall_s"]].agg(["mean", "std"]).fillna(0.0)
    lines = ["| space | impl | seeds | ACC | NMI | wall s | ACC ratio ours/official | time ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for (space, impl), s in stats.iterrows():
        n = int(((rows["space"] == space) & (rows["impl"] == impl)).sum())
        ratio = time_ratio = ""
        if impl != "official" and (space, "official") in stats.index:
            ref = stats.loc[(space, "official")]
            ratio = f"{s[('acc', 'mean')] / ref[('acc', 'mean')]:.3f}"
            time_ratio = f"{s[('wall_s', 'mean')] / ref[('wall_s', 'mean')]:.3f}"
        lines.append(f"| {space} | {impl} | {n} | {s[('acc', 'mean')]:.3f} ± {s[('acc', 'std')]:.3f} | "
                     f"{s[('nmi', 'mean')]:.3f} ± {s[('nmi', 'std')]:.3f} | {s[('wall_s', 'mean')]:.0f} | "
                     f"{ratio} | {time_ratio} |")
    return "\n".join(lines)


def run_temi(args: argparse.Namespace) -> pd.DataFrame:
    """Loss check, then every space × implementation × seed; returns the rows (also in ``args.csv``).

    ``args`` needs only ``official``; any other option of this script it lacks takes this script's default, so
    ``benchmarks/official_heads.py`` can pass its own namespace.
    """
    args = argparse.Namespace(**{**vars(parse_args(["--official", str(args.official)])), **vars(args)})
    torch.set_num_threads(1)
    mods = load_official(args.official)
    if getattr(args, "emit_reference", False):
        print(emit_reference(mods))
        return pd.DataFrame()
    gap = loss_check(mods)
    print(f"loss check: max |official - ours| = {gap:.2e} over 60 tables (per-head loss and prior)", flush=True)
    if gap > 1e-5:
        raise SystemExit(f"loss check failed: {gap:.2e} > 1e-5")
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    extra = _kwargs(getattr(args, "ours", ""))
    rows = []
    for space in [s.strip() for s in args.spaces.split(",") if s.strip()]:
        X, y = load_space(space, getattr(args, "data_root", None))
        k = int(len(np.unique(y)))
        neighbors = mine_neighbors(X, 50, verbose=False)
        batch = TEMI(k)._effective_batch(len(X))
        for impl in impls:
            for seed in range(args.seeds):
                start = time.perf_counter()
                score = float("nan")
                if impl == "official":
                    labels = official_fit(mods, X, neighbors, k, seed, batch, args.epochs, log=args.log,
                                          lr=getattr(args, "official_lr", 1e-4))
                else:
                    est = TEMI(k, **{"epochs": args.epochs, "warmup_epochs": warmup_epochs(args.epochs), **extra},
                               random_state=seed, verbose=False, device="cpu")
                    labels = est.fit(X, neighbors=neighbors).labels_
                    score = est.score_  # TEMI's label-free criterion: full-set loss of the kept head
                wall = time.perf_counter() - start
                scores = evaluate(y, labels)
                name = "ours" + (f" {args.ours}" if extra else "") if impl != "official" else \
                    "official" + ("" if getattr(args, "official_lr", 1e-4) == 1e-4 else f" lr={args.official_lr:g}")
                row = {"space": space, "impl": name, "seed": seed, "epochs": args.epochs, "batch": batch,
                       "acc": scores["acc"], "nmi": scores["nmi"], "ari": scores["ari"], "score": score,
                       "wall_s": wall, "loss_gap": gap}
                rows.append(row)
                print(f"{space:>30} {row['impl']:>10} seed {seed}: ACC {row['acc']:.3f} NMI {row['nmi']:.3f} "
                      f"score {score:.4f} {wall:.0f} s", flush=True)
                if args.csv:
                    args.csv.parent.mkdir(parents=True, exist_ok=True)
                    tmp = args.csv.with_name(f".{args.csv.name}.tmp")
                    pd.DataFrame(rows).to_csv(tmp, index=False)
                    tmp.replace(args.csv)
    table = pd.DataFrame(rows)
    if len(table):
        print()
        print(summary(table))
    return table


def main(argv: list[str] | None = None) -> int:
    run_temi(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
