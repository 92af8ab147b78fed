"""``sscb``: command-line interface, a thin layer over :mod:`ssl_cluster_bench.api`."""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path

from .version import __version__


class _Parser(argparse.ArgumentParser):
    """argparse with its errors in the CLI's form: one line naming the flag, exit status 1 (no usage block).

    No abbreviated flags: argparse would read a mistyped `--k 1` as `--kmeans-iter 1` and run with it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(1, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _factors(text: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    # float() also reads "inf" and "nan", which make no number of clusters
    if not values or not all(0 < v < math.inf for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive finite numbers, got {text!r}")
    return values


def _float_where(accept, expected: str):
    """An argparse type: a number for which ``accept(value)`` holds (NaN never does), else one line."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_fraction = _float_where(lambda v: 0 < v < 1, "a number between 0 and 1 (e.g. 0.95)")
_non_negative_float = _float_where(lambda v: 0 <= v < math.inf, "a finite number >= 0")


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _joint_groups(text: str) -> list[list[str]]:
    groups = [[b.strip() for b in g.split("+") if b.strip()] for g in text.split(",") if g.strip()]
    bad = [g for g in groups if len(g) < 2]
    if bad or not groups:
        raise argparse.ArgumentTypeError(f"expected comma-separated groups of '+'-joined backbones "
                                         f"(e.g. pixels+random-resnet18), got {text!r}")
    return groups


def _int_at_least(minimum: int, expected: str):
    """An argparse type: an integer >= ``minimum``, else one line saying what was ``expected``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive = _int_at_least(1, "a positive integer")
_non_negative = _int_at_least(0, "an integer >= 0")
_n_clusters = _int_at_least(2, "a number of clusters >= 2")


def _pca_dim(text: str):
    if text.lower() in ("none", "0", "off"):
        return None
    return _int_at_least(1, "a positive integer or 'none' (no PCA)")(text)


def _k_or_auto(text: str):
    """``--k`` of run: "auto" (picked by a label-free criterion) or comma-separated numbers of clusters."""
    if text.strip() == "auto":
        return "auto"
    try:
        return [_n_clusters(x.strip()) for x in text.split(",") if x.strip()] or _n_clusters("")
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or comma-separated numbers of clusters >= 2 (e.g. 10,15), "
                                         f"got {text!r}") from None


def _k_grid(text: str) -> list[int]:
    """``--k-grid``: comma-separated k values, or a range LOW-HIGH (e.g. 2-20)."""
    try:
        if "-" in text and "," not in text:
            low, high = (int(x) for x in text.split("-"))
            values = list(range(low, high + 1))
        else:
            values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 2:
        raise argparse.ArgumentTypeError(f"expected comma-separated k values >= 2 or a range such as 2-20, got {text!r}")
    return values


def _n_init(text: str):
    return "auto" if text == "auto" else _positive(text)


def _add_data(p, dataset_default="digits", required=False):
    p.add_argument("--dataset", default=None if required else dataset_default, required=required,
                   help="dataset name (see `sscb datasets`) or the path of an image folder (a flat folder of images "
                        "is unlabelled)" + ("" if required else f"; default {dataset_default}"))
    p.add_argument("--data-root", default=None, help="local dataset folder (not needed for digits)")
    p.add_argument("--split", default=None, help="dataset split (default: the dataset's usual one)")
    p.add_argument("--subset", default=None, help="imagenet only: class-list file (one wnid per line)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $SSCB_CACHE_DIR or ~/.cache/ssl_cluster_bench/features)")


def _add_backbone_options(p):
    """The backbone's loading options, one group shared by every command that extracts (fields of BackboneSpec)."""
    g = p.add_argument_group("backbone loading options")
    g.add_argument("--checkpoint", default=None, help="local path or URL of SSL weights to benchmark (with --arch)")
    g.add_argument("--arch", default=None, help="timm/torchvision architecture of --checkpoint, e.g. resnet50")
    g.add_argument("--checkpoint-key", default=None, help="where the state dict sits in the checkpoint (default: searched)")
    g.add_argument("--momentum-encoder", action="store_true", default=None,
                   help="load the MoCo-style momentum (key) encoder instead of the query encoder")
    g.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling (torch.load weights_only=False): only for files you trust")
    g.add_argument("--key-match", choices=["name", "order"], default="name",
                   help="how the checkpoint's tensors meet the architecture's: by name (default) or by position, "
                        "each shape checked (order: for files saved by an older library version whose names differ)")


def _loading_options(args) -> dict:
    """The BackboneSpec fields the loading flags give (the card aside)."""
    return {"checkpoint": args.checkpoint, "arch": args.arch, "weights_only": not args.trust_checkpoint,
            "momentum_encoder": args.momentum_encoder, "checkpoint_key": args.checkpoint_key,
            "key_match": args.key_match}


def _backbone_spec(args, card=None):
    """The BackboneSpec of ``card`` (None: the checkpoint) with this command's loading options."""
    from .specs import BackboneSpec

    return BackboneSpec(card=card, **_loading_options(args))


def _add_extract(p, views: bool = False):
    """The extraction options, one group shared by every command that extracts (fields of ExtractSettings)."""
    g = p.add_argument_group("extraction options")
    g.add_argument("--batch-size", type=_positive, default=128)
    g.add_argument("--workers", type=_non_negative, default=None, help="DataLoader workers (default: by dataset size)")
    g.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1 ... for extraction, k-means, neighbour mining and heads (default: cuda "
                        "when available; faiss needs the faiss-gpu build, else k-means runs on the CPU, said once)")
    g.add_argument("--chunk-size", type=_positive, default=8192, help="images per resumable cache chunk")
    g.add_argument("--verify-content", action="store_true",
                   help="key cached features on the bytes of every data file, not on their sizes and modification "
                        "times (for copies or filesystems whose times cannot be trusted; reads every file)")
    if views:  # only `extract` stores views: the other commands cluster the plain features
        g.add_argument("--views", type=_non_negative, default=0, help="also store N seeded augmented views per image")


def _extract_settings(args):
    from .specs import ExtractSettings

    return ExtractSettings(batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                           chunk_size=args.chunk_size, views=getattr(args, "views", 0),
                           verify_content=args.verify_content)


def _run_specs(args, cards):
    """One BackboneSpec per card of a run (the checkpoint alone when one is given), validated before any work."""
    from .api import DEFAULT_BACKBONES

    if args.checkpoint:
        return [_backbone_spec(args)]
    return [_backbone_spec(args, card) for card in (cards or DEFAULT_BACKBONES)]


def _add_rerun(p) -> None:
    p.add_argument("--rerun", action="store_true",
                   help="run and append rows the leaderboard already holds (same entry, method, k, seed and "
                        "protocol); by default they are skipped, so repeating a command resumes it")


def _add_protocol(p):
    # Protocol flags default to SUPPRESS: only the flags given change the protocol (the file given with
    # --protocol, else Protocol()'s defaults), and `--pca-dim none` stays distinct from "not given".
    p.add_argument("--protocol", default=None, metavar="YAML",
                   help="protocol file (a Protocol as YAML); the flags below override its fields")
    p.add_argument("--overcluster", type=_factors, default=argparse.SUPPRESS,
                   help="k = round(factor × #classes), comma-separated (default 1,1.5)")
    p.add_argument("--seeds", type=_positive, default=argparse.SUPPRESS, help="seeds per configuration (default 5)")
    p.add_argument("--pca-dim", type=_pca_dim, default=argparse.SUPPRESS,
                   help="PCA output dim, or 'none' (also 0 or off): no PCA (default 256)")
    p.add_argument("--reduce", choices=["pca", "zscore+pca", "umap", "none"], default=argparse.SUPPRESS,
                   help="the space methods cluster: pca (default), zscore+pca (features z-scored first), umap (50 "
                        "dims, 30 neighbours, min_dist 0; one seeded fit per seed, needs umap-learn) or none")
    p.add_argument("--whiten", action="store_true", default=argparse.SUPPRESS, help="whiten the PCA output")
    p.add_argument("--l2-normalize", action="store_true", default=argparse.SUPPRESS,
                   help="L2-normalise the reduced features")
    p.add_argument("--backend", choices=["faiss", "sklearn"], default=argparse.SUPPRESS,
                   help="k-means backend (sklearn = the reference MiniBatchKMeans protocol; default faiss)")
    p.add_argument("--n-init", type=_n_init, default=argparse.SUPPRESS,
                   help="k-means restarts, lowest inertia kept, or 'auto': as many as the training budget allows "
                        "(10 on small data, 1 at ImageNet size; default auto)")
    p.add_argument("--kmeans-iter", type=_positive, default=argparse.SUPPRESS,
                   help="Lloyd iterations per restart (default 20, fewer on ImageNet-size data)")
    p.add_argument("--max-points-per-centroid", type=_positive, default=argparse.SUPPRESS,
                   help="k-means trains on at most this many sampled rows per cluster (default 256, fewer on "
                        "ImageNet-size data)")
    p.add_argument("--results", default=None, help="leaderboard CSV (default results/leaderboard.csv)")


# argparse dest -> Protocol field, and -> protocol.kmeans field
_PROTOCOL_FLAGS = {"methods": "methods", "overcluster": "overcluster", "seeds": "seeds", "pca_dim": "pca_dim",
                   "whiten": "whiten", "l2_normalize": "l2_normalize", "reduce": "reduce", "k_grid": "k_grid",
                   "k_criterion": "k_criterion"}
_KMEANS_FLAGS = {"backend": "backend", "n_init": "n_init", "kmeans_iter": "n_iter",
                 "max_points_per_centroid": "max_points_per_centroid"}


def _protocol(args, **changes):
    """The Protocol of this command: --protocol's file (or the defaults), the flags given, then ``changes``."""
    import dataclasses

    from .protocol import resolve_protocol

    base = resolve_protocol(args.protocol)
    fields = {field: getattr(args, flag) for flag, field in _PROTOCOL_FLAGS.items() if hasattr(args, flag)}
    kmeans = {field: getattr(args, flag) for flag, field in _KMEANS_FLAGS.items() if hasattr(args, flag)}
    if kmeans:
        fields["kmeans"] = dataclasses.replace(base.kmeans, **kmeans)
    return base.replace(**{**fields, **changes})


def _add_launch(p, unit: str = "(backbone, dataset)"):
    g = p.add_argument_group("cluster", f"one job per {unit} through submitit (pip install "
                                        "'ssl_cluster_bench[cluster]'); see docs: Running on a cluster")
    g.add_argument("--launcher", choices=["local", "slurm"], default=None,
                   help=f"run each {unit} as a job: local subprocesses or a SLURM job array")
    g.add_argument("--launch-config", default=None, metavar="YAML",
                   help="YAML of job settings (partition, account, gpus_per_node, cpus_per_task, mem_gb, timeout_min, "
                        "slurm_additional_parameters); the flags below win over it")
    g.add_argument("--partition", default=None, help="SLURM partition")
    g.add_argument("--account", default=None, help="SLURM account")
    g.add_argument("--gpus-per-node", type=_non_negative, default=None, help="GPUs per job (default 0)")
    g.add_argument("--cpus-per-task", type=_positive, default=None, help="CPU cores per job")
    g.add_argument("--mem-gb", type=_float_where(lambda v: 0 < v < math.inf, "a positive number of GB"),
                   default=None, help="memory per job, GB")
    g.add_argument("--timeout-min", type=_positive, default=None,
                   help="time limit per job in minutes (default 240); a job reaching it is requeued and resumes")
    g.add_argument("--wait", action="store_true",
                   help="with --launcher: wait for all jobs, then write suite.json and the report")
    g.add_argument("--status", action="store_true",
                   help="list the jobs of the last launch (state, log); writes the report once all have ended")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="sscb", description="Benchmark image backbones by clustering their frozen features.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--debug", action="store_true",
                        help="on an error, show the Python traceback instead of the one-line message")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="extract what is missing, cluster, append to the leaderboard "
                                   "(no arguments: the embedded digits benchmark)")
    p.add_argument("--backbones", type=_names, default=None,
                   help="comma-separated model-card ids (default: pixels,random-resnet18,efficientnet-lite0-96)")
    _add_backbone_options(p)
    p.add_argument("--methods", type=_names, default=argparse.SUPPRESS,
                   help="comma-separated method names (see `sscb methods`; default kmeans)")
    p.add_argument("--joint", type=_joint_groups, default=[], metavar="A+B[,C+D]",
                   help="also cluster these backbones' aligned features together with the multi-space "
                        "methods among --methods (turtle); rows name the group, e.g. backbone pixels+random-resnet18")
    p.add_argument("--k", type=_k_or_auto, default=argparse.SUPPRESS,
                   help="numbers of clusters, comma-separated (default: #classes × --overcluster), or 'auto': "
                        "picked per backbone and method by --k-criterion over --k-grid; required for data without labels)")
    p.add_argument("--k-grid", type=_k_grid, default=argparse.SUPPRESS,
                   help="with --k auto: the k values tried, e.g. 2-20 or 5,10,20 (default 2 .. 2 × #classes)")
    p.add_argument("--k-criterion", choices=["silhouette", "calinski_harabasz", "davies_bouldin"],
                   default=argparse.SUPPRESS, help="with --k auto: the label-free criterion (default silhouette)")
    p.add_argument("--rank-by", choices=["acc", "nmi", "ami", "ari", "fmi", "homogeneity", "completeness"],
                   default="acc", help="metric the printed table is ranked by (default acc)")
    p.add_argument("--assignments", action="store_true",
                   help="also write each row's cluster assignment as a table: <results dir>/assignments/<run_id>.csv "
                        "(sample_id, path, cluster, confidence, distance to the cluster centre)")
    p.add_argument("--unlabelled", action="store_true",
                   help="cluster as if the data had no labels (as a folder of images without class folders has "
                        "none): label metrics left empty, label-free ones filled; needs --k")
    _add_rerun(p)
    _add_data(p)
    _add_extract(p)
    _add_protocol(p)
    _add_launch(p, "backbone")

    p = sub.add_parser("scan", help="SCAN clustering heads (+ self-labeling) on cached features, beside k-means")
    p.add_argument("--backbone", default=None, help="model-card id (features are extracted if missing)")
    _add_backbone_options(p)
    p.add_argument("--k", type=_n_clusters, default=None,
                   help="number of clusters (default: #classes × --overcluster)")
    p.add_argument("--heads", type=_positive, default=10, help="heads trained at once; the lowest-loss one is kept")
    p.add_argument("--head", choices=["linear", "mlp"], default="linear")
    p.add_argument("--entropy-weight", type=_non_negative_float, default=None,
                   help="λ of the entropy term (default: SCAN's)")
    p.add_argument("--epochs", type=_positive, default=None, help="SCAN epochs (default: SCAN's)")
    p.add_argument("--neighbors", type=_positive, default=20, help="K nearest neighbours mined per sample")
    p.add_argument("--self-label", action="store_true", help="also run the self-labeling step")
    p.add_argument("--with-kmeans", action="store_true", help="also add k-means rows for the same k")
    _add_rerun(p)
    _add_data(p, required=True)
    _add_extract(p)
    _add_protocol(p)
    p.set_defaults(overcluster=[1.0])

    p = sub.add_parser("extract", help="extract frozen features into the cache (resumable)")
    p.add_argument("--backbone", default=None, help="model-card id or card YAML path")
    _add_backbone_options(p)
    _add_data(p, required=True)
    _add_extract(p, views=True)

    p = sub.add_parser("import-features", help="store precomputed features (.npy) in the cache")
    p.add_argument("--features", required=True, help=".npy file, shape (n, dim)")
    p.add_argument("--labels", required=True, help=".npy file, shape (n,), int (-1 = unlabelled)")
    p.add_argument("--backbone", required=True, help="name to file the features under")
    p.add_argument("--dataset", required=True)
    p.add_argument("--split", default="all")
    p.add_argument("--cache-dir", default=None)

    p = sub.add_parser("leaderboard", help="print the aggregated leaderboard (mean ± std over seeds; best per "
                                           "dataset × method × k in bold, rows within one std of it in italics)")
    p.add_argument("csv", nargs="?", default=None, help="leaderboard CSV (default results/leaderboard.csv)")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--intervals", action="store_true",
                   help="also print 95%% intervals for ACC / NMI (bootstrap over images with each clustering fixed, "
                        "plus the spread over seeds; needs the stored predictions and the feature cache)")
    p.add_argument("--no-mark", action="store_true", help="no bold / italic marking of the best rows")
    p.add_argument("--rank-by", choices=["acc", "nmi", "ami", "ari", "fmi", "homogeneity", "completeness"],
                   default="acc", help="metric the rows are ranked by, best first (default acc; Lowe et al. rank "
                                       "by ami)")
    p.add_argument("--level", type=_fraction, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--n-boot", type=_positive, default=200, help="bootstrap resamples of the images (default 200)")
    p.add_argument("--cache-dir", default=None, help="feature cache the rows were made from (for the labels)")
    p.add_argument("--reported", action="store_true",
                   help="also show the published clustering numbers of the model cards next to matching rows")
    p.add_argument("--criteria", action="store_true",
                   help="also show how each label-free criterion (silhouette, the method's own score) tracks ACC: "
                        "Spearman ρ over the rows and the configuration it would pick")

    p = sub.add_parser("compare", help="do two backbones differ beyond seed and sample noise on a dataset?")
    p.add_argument("backbone_a")
    p.add_argument("backbone_b")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", default="kmeans")
    p.add_argument("--k", type=_n_clusters, default=None, help="number of clusters (default: the number of classes)")
    p.add_argument("--results", default=None, help="leaderboard CSV (default results/leaderboard.csv)")
    p.add_argument("--level", type=_fraction, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--n-boot", type=_positive, default=200, help="bootstrap resamples of the images (default 200)")
    p.add_argument("--cache-dir", default=None, help="feature cache the rows were made from (for the labels)")

    p = sub.add_parser("objectnet", help="ObjectNet: direct clustering and ImageNet -> ObjectNet transfer")
    p.add_argument("--backbone", default=None, help="model-card id or card YAML path")
    _add_backbone_options(p)
    p.add_argument("--imagenet-root", required=True, help="ImageNet folder with train/ (and val/) wnid folders")
    p.add_argument("--objectnet-root", required=True, help="ObjectNet folder (objectnet-1.0/ or images/ + mappings/)")
    p.add_argument("--imagenet-split", default="train", choices=["train", "val"],
                   help="ImageNet split the transfer clusters are trained on (default train)")
    p.add_argument("--cache-dir", default=None)
    _add_extract(p)
    _add_protocol(p)
    p.set_defaults(overcluster=[1.0])

    p = sub.add_parser("suite", help="run a benchmark suite over backbones or a new checkpoint and write the report",
                       description="Run a suite (shipped: standard, local; or a suite YAML file). Datasets whose "
                                   "data root is not given are listed in the report as not run, with the reason.")
    p.add_argument("suite", help="shipped suite name (see `sscb suites`) or the path of a suite YAML file")
    p.add_argument("--backbones", type=_names, default=None, help="comma-separated model-card ids "
                                                                  "(default: the suite's)")
    _add_backbone_options(p)
    p.add_argument("--data-root", action="append", default=[], metavar="NAME=PATH",
                   help="where data-root NAME lives, e.g. imagenet=~/data/imagenet (repeat for each)")
    p.add_argument("--data-roots", action="append", default=[], metavar="FILE",
                   help="YAML file of 'NAME: PATH' lines (--data-root wins where both name a root)")
    p.add_argument("--only", type=_names, default=None, help="comma-separated dataset ids of the suite to run")
    p.add_argument("--sweep", action="store_true", help="also run the suite's PCA-dim and k grids (Figure 2 ablation)")
    p.add_argument("--seeds", type=_positive, default=None, help="seeds per configuration (default: the suite's)")
    p.add_argument("--results", default=None, help="leaderboard CSV (default results/leaderboard.csv); the "
                                                   "report is written next to it")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $SSCB_CACHE_DIR or "
                                                     "~/.cache/ssl_cluster_bench/features)")
    p.add_argument("--no-report", action="store_true", help="only append rows; write no report")
    _add_extract(p)
    _add_launch(p)

    p = sub.add_parser("jobs", help="the jobs of the last `sscb suite --launcher` into a results folder: state and "
                                    "log of each (the suite's report is written once all have ended)")
    p.add_argument("csv", nargs="?", default=None, help="leaderboard CSV (default results/leaderboard.csv)")

    p = sub.add_parser("report", help="(re)write report.md and report.html next to a leaderboard")
    p.add_argument("csv", nargs="?", default=None, help="leaderboard CSV (default results/leaderboard.csv)")
    p.add_argument("--cache-dir", default=None, help="feature cache the rows came from (for confusion matrices)")
    p.add_argument("--check", action="store_true",
                   help="render report.html in headless Chromium and check that every image loads and shows data")
    p.add_argument("--screenshot", default=None, metavar="PNG", help="with --check: save a full-page screenshot")
    p.add_argument("--feature-map", choices=["umap", "pca", "none"], default="auto",
                   help="the 2-D map of the features: umap (default, or $SSCB_FEATURE_MAP), pca (instant), none")

    sub.add_parser("suites", help="list the shipped suites")
    sub.add_parser("models", help="list the model cards")
    sub.add_parser("methods", help="list the clustering methods (the method registry)")
    sub.add_parser("datasets", help="list the datasets")
    p = sub.add_parser("cache", help="list the feature-cache entries (and partial or damaged ones)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--verify", action="store_true",
                   help="re-hash every entry against its manifest; exit 1 if any is damaged")
    p.add_argument("--remove", metavar="NAME", default=None,
                   help="delete one entry (name as listed) with its partial extraction")
    for command in sub.choices.values():
        # also after the command (`sscb run ... --debug`); SUPPRESS keeps a --debug given before it
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _cmd_run(args):
    from . import api

    # run's --k (scan's --k is one k, handled by scan)
    changes = {"n_clusters": args.k if args.k == "auto" else tuple(args.k)} if hasattr(args, "k") else {}
    if args.launcher or args.status or args.wait:
        from .launch import cli_run

        return cli_run(args, _run_specs(args, args.backbones), _protocol(args, **changes), _extract_settings(args))
    df = api.run(_run_specs(args, args.backbones), args.dataset, args.data_root, args.split,
                 protocol=_protocol(args, **changes),
                 joint=[[_backbone_spec(args, b) for b in group] for group in args.joint], results=args.results,
                 cache=args.cache_dir, subset=args.subset, settings=_extract_settings(args), progress=not args.quiet,
                 rerun=args.rerun, unlabelled=args.unlabelled, assignments=args.assignments)
    _print_run(df, args.results, rank_by=args.rank_by)


def _print_run(df, results, rank_by: str = "acc") -> None:
    """The run's configurations as a table, and how many rows were new."""
    from .leaderboard import aggregate, default_results_path, to_markdown

    results = Path(results) if results else default_results_path()
    if df.empty:
        print(f"nothing to run; leaderboard {results}")
        return
    print(to_markdown(aggregate(df, rank_by=rank_by)))
    new = df.attrs.get("new_rows", len(df))
    already = f" ({len(df) - new} were already there: same run ids, not run again; --rerun runs them anew)" \
        if len(df) > new else ""
    print(f"\n{new} rows appended to {results}{already}; table: {results.with_suffix('.md')}")
    if df.attrs.get("assignments"):
        print(f"assignments: {len(df.attrs['assignments'])} tables in {df.attrs['assignments'][0].parent}")


def _cmd_scan(args):
    from . import api

    if args.backbone is None and not args.checkpoint:
        raise ValueError("pass --backbone CARD_ID, or --checkpoint PATH with --arch ARCH")
    if args.k is not None and args.k < 2:
        raise ValueError(f"--k must be >= 2, got {args.k}")
    methods = (["kmeans"] if args.with_kmeans else []) + ["scan"] + (["scan+selflabel"] if args.self_label else [])
    scan_options = {"n_heads": args.heads, "head": args.head, "n_neighbors": args.neighbors}
    if args.entropy_weight is not None:
        scan_options["entropy_weight"] = args.entropy_weight
    if args.epochs is not None:
        scan_options["epochs"] = args.epochs
    changes = {"methods": tuple(methods), "method_options": {"scan": scan_options, "scan+selflabel": scan_options}}
    if args.k:
        changes["n_clusters"] = (args.k,)
    df = api.run(_run_specs(args, [args.backbone] if args.backbone else None), args.dataset, args.data_root,
                 args.split, protocol=_protocol(args, **changes), results=args.results, cache=args.cache_dir,
                 subset=args.subset, settings=_extract_settings(args), progress=not args.quiet, rerun=args.rerun)
    _print_run(df, args.results)


def _cmd_extract(args):
    from . import api

    if args.backbone is None and not args.checkpoint:
        raise ValueError("pass --backbone CARD_ID, or --checkpoint PATH with --arch ARCH")
    entry = api.extract(_backbone_spec(args, args.backbone), args.dataset, args.data_root, args.split,
                        args.cache_dir, subset=args.subset, settings=_extract_settings(args), progress=not args.quiet)
    m = entry.manifest
    print(f"{entry.path}\n  shape {tuple(m['shape'])} float16, skipped {m['skipped']['count']} unreadable file(s)")


def _cmd_import(args):
    from . import api

    entry = api.import_features(args.features, args.labels, args.backbone, args.dataset, args.split, args.cache_dir)
    print(f"{entry.path}\n  {entry.count} × {entry.feature_dim}")


def _cmd_leaderboard(args):
    from .leaderboard import aggregate, default_results_path, read_leaderboard, to_markdown

    path = args.csv or default_results_path()
    df = read_leaderboard(path)
    if df.empty:
        raise ValueError(f"leaderboard {path} holds no rows yet: `sscb run --results {path}` adds some")
    if args.dataset:
        df = df[df["dataset"] == args.dataset]
        if df.empty:
            raise ValueError(f"no rows for dataset {args.dataset!r}")
    agg = aggregate(df, rank_by=args.rank_by)
    intervals = None
    if args.intervals:
        from .significance import leaderboard_intervals

        intervals = leaderboard_intervals(df, path, args.cache_dir, level=args.level, n_boot=args.n_boot,
                                          progress=not args.quiet)
    print(to_markdown(agg, mark=not args.no_mark, intervals=intervals))
    if intervals is not None:
        missing = intervals[intervals["interval_note"] != ""]["interval_note"]
        for note in sorted(set(missing)):
            print(f"no interval for {int((missing == note).sum())} configuration(s): {note}", file=sys.stderr)
    if args.reported:
        from .published import section

        print("\n" + (section(agg) or "No measured row matches a published result of the model cards "
                                      "(`sscb models` lists which cards have them)."))
    if args.criteria:
        from .criteria import LEGEND, criteria_correlations, criteria_markdown

        print(f"\nLabel-free criteria ({LEGEND})\n")
        print(criteria_markdown(criteria_correlations(df)))


def _cmd_compare(args):
    from .leaderboard import default_results_path, read_leaderboard
    from .significance import compare_backbones

    path = args.results or default_results_path()
    results = compare_backbones(read_leaderboard(path), path, args.backbone_a, args.backbone_b, args.dataset,
                                args.cache_dir, method=args.method, n_clusters=args.k, level=args.level,
                                n_boot=args.n_boot)
    print(f"{args.backbone_a} (A) vs {args.backbone_b} (B) on {args.dataset}, {args.method}; "
          f"{results[0].level:.0%} intervals of A - B from seed noise and a paired bootstrap over images")
    for c in results:
        verdict = "A better" if c.low > 0 else "B better" if c.high < 0 else "no difference beyond noise"
        print(f"{c.metric.upper():4s} A {100 * c.mean_a:5.1f}  B {100 * c.mean_b:5.1f}  A - B {100 * c.diff:+5.1f} "
              f"[{100 * c.low:+.1f}, {100 * c.high:+.1f}]  p = {c.p_value:.3g}  -> {verdict}")


def _cmd_objectnet(args):
    from .objectnet import run_objectnet, summary_table

    if args.backbone is None and not args.checkpoint:
        raise ValueError("pass --backbone CARD_ID, or --checkpoint PATH with --arch ARCH")
    rows = run_objectnet(_backbone_spec(args, args.backbone), args.imagenet_root, args.objectnet_root,
                         imagenet_split=args.imagenet_split, results=args.results, cache=args.cache_dir,
                         protocol=_protocol(args), settings=_extract_settings(args), progress=not args.quiet)
    print(summary_table(rows))


def _cmd_suite(args):
    from .suite import load_suite, parse_data_roots, run_suite

    if args.launcher or args.status or args.wait:
        from .launch import cli_suite

        return cli_suite(args, _extract_settings(args), _loading_options(args))
    suite = load_suite(args.suite)
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
        suite = suite.with_protocol(seeds=args.seeds)
    roots = parse_data_roots(args.data_root, args.data_roots)
    results = Path(args.results) if args.results else None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: all ranks extract, rank 0 alone goes on
        from .launch import extract_on_all_ranks

        if not extract_on_all_ranks(suite, args.backbones, roots, only=args.only, cache=args.cache_dir,
                                    settings=_extract_settings(args), progress=not args.quiet,
                                    **_loading_options(args)):
            return 0
    # the suite makes one BackboneSpec per backbone (or the checkpoint) with these options, for every entry
    state = run_suite(suite, args.backbones, roots, results=results, cache=args.cache_dir, sweep=args.sweep,
                      only=args.only, settings=_extract_settings(args), progress=not args.quiet,
                      report=not args.no_report, interface="cli", **_loading_options(args))
    table = state.status_table()
    print(table.to_markdown(index=False))
    from .leaderboard import default_results_path

    where = (results or default_results_path()).parent
    if not args.no_report:
        print(f"\nreport: {where / 'report.html'} (markdown: {where / 'report.md'})")
    failed = table[table.status == "failed"]
    if len(failed):
        raise RuntimeError(f"{len(failed)} dataset run(s) failed (listed above with the reason); the other rows "
                           "and the report were written")


def _cmd_jobs(args):
    from .launch import cli_jobs

    return cli_jobs(args)


def _cmd_report(args):
    from .leaderboard import default_results_path
    from .report import write_report
    from .suite import SuiteState

    csv = Path(args.csv) if args.csv else default_results_path()
    if not csv.is_file():
        raise FileNotFoundError(f"no leaderboard at {csv}: run `sscb suite` or `sscb run` first, or pass the CSV path")
    if (csv.parent / "jobs.json").is_file():  # a launched suite: its state comes from its jobs once all ended
        from .launch import launch_status

        launch_status(csv, report=False)
    paths = write_report(csv, SuiteState.load(csv), args.cache_dir, feature_map=args.feature_map)
    print(f"{paths.html}\n{paths.markdown}")
    if args.check:
        _check_report(paths.html, args.screenshot)


def _check_report(html_path, screenshot=None):
    import shutil

    from .report import check_images

    if shutil.which("chromium") is None:
        raise RuntimeError("--check renders the report with headless Chromium, which is not installed: install the "
                           "chromium package, or drop --check")
    checks = check_images(html_path, screenshot=screenshot)
    bad = [c for c in checks if c["blank"] or not c.get("width")]
    for c in checks:
        state = "BROKEN" if not c.get("width") else "EMPTY" if c["blank"] else "ok"
        print(f"  {state:6s} {c['name']} ({c.get('width', 0)}x{c.get('height', 0)} px)")
    if screenshot:
        print(f"screenshot: {screenshot}")
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(checks)} report images are broken or empty: "
                           f"{', '.join(c['name'] for c in bad)}")


def _cmd_suites(args):
    from .suite import list_suites, load_suite

    for name in list_suites():
        suite = load_suite(name)
        print(f"{name:12s} {', '.join(e.id for e in suite.entries)}")


def _cmd_models(args):
    from .backbones import card_dirs, list_cards
    from .published import summarize

    cards = list_cards()
    if not cards:
        searched = ", ".join(str(d) for d in card_dirs()) or "no folder (none of them exists)"
        raise RuntimeError(f"no model cards found (searched: {searched}). The cards shipped with the package are "
                           f"missing: reinstall it (pip install ssl_cluster_bench, or pip install . from a source "
                           f"checkout), or point SSCB_MODEL_CARDS at a folder of card YAML files.")
    for card in cards:
        published = summarize(card)
        print(f"{card.id:32s} {card.architecture:24s} {card.pretraining_method:14s} dim={str(card.feature_dim):5s} "
              f"{card.source:11s}" + (" [unverified URL]" if card.status == "unverified" else "")
              + (f"  reported {published}" if published else ""))
    n_reported = sum(1 for c in cards if c.reported_clustering)
    print(f"\n{len(cards)} cards, {n_reported} with published clustering numbers "
          f"(compare: sscb leaderboard --reported)")


def _cmd_methods(args):
    from .methods import get_method, list_methods

    for name in list_methods():
        doc = (get_method(name).__doc__ or "").strip().splitlines()
        print(f"{name:16s} {doc[0] if doc else ''}")


def _cmd_datasets(args):
    from .data import list_datasets

    print("\n".join(list_datasets()))


def _cmd_cache(args):
    from .cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    if args.remove:
        for name in cache.remove(args.remove):
            print(f"removed {cache.root / name}")
        return 0
    if cache.root.exists() and not cache.root.is_dir():
        raise NotADirectoryError(f"--cache-dir {cache.root} is a file, not a feature cache folder")
    rows = cache.status(full=args.verify)
    foreign = cache.foreign()
    some = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    if not rows and foreign:
        raise ValueError(f"{cache.root} is not a feature cache: none of its {len(foreign)} files and folders "
                         f"({some}) was made by sscb; pass the cache folder as --cache-dir (default: "
                         "$SSCB_CACHE_DIR or ~/.cache/ssl_cluster_bench/features)")
    if not rows:
        print(f"no entries under {cache.root}")
    for s in rows:
        shape = f"  {tuple(s.entry.manifest['shape'])}  skipped={s.entry.manifest['skipped']['count']}" \
            if s.entry is not None else ""
        print(f"{s.name}  {s.state}  {s.nbytes / 2**20:.1f} MiB{shape}"
              + (f"\n    {s.describe('cli')}" if s.detail else ""))
    if foreign:
        print(f"{len(foreign)} other file(s)/folder(s) under {cache.root} were not made by sscb: not listed, never "
              f"removed ({some})")
    bad = [s for s in rows if s.state == "damaged"]
    if args.verify:
        n_ok = sum(s.state == "ok" for s in rows)
        print(f"{n_ok} entr{'y' if n_ok == 1 else 'ies'} verified, {len(bad)} damaged under {cache.root}",
              file=sys.stderr if bad else sys.stdout)
    return 1 if bad and args.verify else 0


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, taken the way Ctrl-C is: finished work kept, temporary files removed on the way out."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _stop_on_signals() -> dict:
    """Make SIGTERM (a scheduler's time limit, `kill`) and SIGHUP (a closed terminal) raise :class:`Stopped` in
    the main thread; returns the handlers they replace. Signals set to be ignored (nohup) stay ignored. The
    first signal disarms both, so that a second one cannot cut the clean-up short."""
    import signal

    def stop(signum, frame):
        for s in handlers:
            signal.signal(s, signal.SIG_IGN)
        raise Stopped(signum)

    handlers = {}
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or signal.getsignal(signum) == signal.SIG_IGN:
            continue
        try:
            handlers[signum] = signal.signal(signum, stop)
        except ValueError:  # not the main thread (main() called from a worker thread): leave them alone
            break
    return handlers


def _restore_signals(handlers: dict) -> None:
    import signal

    for signum, handler in handlers.items():
        signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


COMMANDS = {"run": _cmd_run, "scan": _cmd_scan, "extract": _cmd_extract, "import-features": _cmd_import,
            "leaderboard": _cmd_leaderboard, "compare": _cmd_compare, "objectnet": _cmd_objectnet,
            "suite": _cmd_suite, "report": _cmd_report, "suites": _cmd_suites, "models": _cmd_models,
            "methods": _cmd_methods, "datasets": _cmd_datasets, "cache": _cmd_cache,
            "jobs": _cmd_jobs}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    handlers = _stop_on_signals()
    # -q: no bar at all, also the dataset indexing's, which takes no progress flag (datasets are built deep inside
    # every command); restored on the way out, as main() may be called in-process
    quiet_before = os.environ.get("SSCB_QUIET")
    if args.quiet:
        os.environ["SSCB_QUIET"] = "1"
    # --device also places k-means, neighbour mining and the heads (cluster.compute_device); restored on the way out
    device_before = os.environ.get("SSCB_DEVICE")
    if getattr(args, "device", "auto") not in (None, "auto"):
        os.environ["SSCB_DEVICE"] = args.device
    try:
        rc = COMMANDS[args.command](args)
    except KeyboardInterrupt as e:
        import signal

        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"sscb {args.command}: stopped by {signal.Signals(signum).name}: finished cache chunks and appended "
              "rows are kept, temporary files removed; re-run the same command to resume", file=sys.stderr)
        return 128 + signum
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        # inputs are checked where they enter and refused with these types: one message, no traceback
        if args.debug:
            raise
        from .errors import message_for

        print(f"sscb {args.command}: error: {message_for(e, 'cli')}", file=sys.stderr)
        return 1
    except Exception as e:
        # anything else is a bug or an input no check caught yet: one line still, the traceback on request
        if args.debug:
            raise
        first = (str(e).strip().splitlines() or [""])[0]
        print(f"sscb {args.command}: error: unexpected {type(e).__name__}: {first} (run again with --debug for the "
              f"traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        _restore_signals(handlers)
        if device_before is None:
            os.environ.pop("SSCB_DEVICE", None)
        else:
            os.environ["SSCB_DEVICE"] = device_before
        if args.quiet:
            if quiet_before is None:
                os.environ.pop("SSCB_QUIET", None)
            else:
                os.environ["SSCB_QUIET"] = quiet_before
    return rc or 0


if __name__ == "__main__":
    sys.exit(main())
