"""``sscb``: command-line interface, a thin layer over :mod:`ssl_cluster_bench.api`."""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _pca_dim(text: str):
    if text.lower() in ("none", "0", "off"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--pca-dim takes an integer or 'none', got {text!r}") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _n_init(text: str):
    return "auto" if text == "auto" else _positive(text)


def _add_data(p, dataset_default="digits", required=False):
    p.add_argument("--dataset", default=None if required else dataset_default, required=required,
                   help="dataset name (see `sscb datasets`)" + ("" if required else f"; default {dataset_default}"))
    p.add_argument("--data-root", default=None, help="local dataset folder (not needed for digits)")
    p.add_argument("--split", default=None, help="dataset split (default: the dataset's usual one)")
    p.add_argument("--subset", default=None, help="imagenet only: class-list file (one wnid per line)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default $SSCB_CACHE_DIR or ~/.cache/ssl_cluster_bench/features)")


def _add_checkpoint(p):
    p.add_argument("--checkpoint", default=None, help="local path or URL of SSL weights to benchmark (with --arch)")
    p.add_argument("--arch", default=None, help="timm/torchvision architecture of --checkpoint, e.g. resnet50")
    p.add_argument("--checkpoint-key", default=None, help="where the state dict sits in the checkpoint (default: searched)")
    p.add_argument("--momentum-encoder", action="store_true", default=None,
                   help="load the MoCo-style momentum (key) encoder instead of the query encoder")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="allow full unpickling (torch.load weights_only=False): only for files you trust")


def _checkpoint_options(args) -> dict:
    return {"checkpoint": args.checkpoint, "arch": args.arch, "checkpoint_key": args.checkpoint_key,
            "momentum_encoder": args.momentum_encoder, "weights_only": not args.trust_checkpoint}


def _add_extract(p):
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: by dataset size)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: cuda when available)")


def _add_protocol(p):
    p.add_argument("--overcluster", type=_floats, default=[1.0, 1.5],
                   help="k = round(factor × #classes), comma-separated (default 1,1.5)")
    p.add_argument("--seeds", type=int, default=5, help="seeds per configuration (default 5)")
    p.add_argument("--pca-dim", type=_pca_dim, default=256, help="PCA output dim, or 'none' (default 256)")
    p.add_argument("--whiten", action="store_true", help="whiten the PCA output")
    p.add_argument("--l2-normalize", action="store_true", help="L2-normalise the reduced features")
    p.add_argument("--backend", choices=["faiss", "sklearn"], default="faiss",
                   help="k-means backend (sklearn = the reference MiniBatchKMeans protocol)")
    p.add_argument("--n-init", type=_n_init, default="auto",
                   help="k-means restarts, lowest inertia kept, or 'auto': as many as the training budget allows "
                        "(10 on small data, 1 at ImageNet size; default auto)")
    p.add_argument("--kmeans-iter", type=_positive, default=None,
                   help="Lloyd iterations per restart (default 20, fewer on ImageNet-size data)")
    p.add_argument("--max-points-per-centroid", type=_positive, default=None,
                   help="k-means trains on at most this many sampled rows per cluster (default 256, fewer on "
                        "ImageNet-size data)")
    p.add_argument("--results", default=None, help="leaderboard CSV (default results/leaderboard.csv)")


def _kmeans_options(args) -> dict:
    return {"n_init": args.n_init, "kmeans_iter": args.kmeans_iter,
            "max_points_per_centroid": args.max_points_per_centroid}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sscb", description="Benchmark image backbones by clustering their frozen features.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="extract what is missing, cluster, append to the leaderboard "
                                   "(no arguments: the embedded digits benchmark)")
    p.add_argument("--backbones", type=_names, default=None,
                   help="comma-separated model-card ids (default: pixels,random-resnet18)")
    _add_checkpoint(p)
    p.add_argument("--methods", type=_names, default=["kmeans"],
                   help="comma-separated: kmeans,scan,scan+selflabel,mmdc,twostage (default kmeans)")
    _add_data(p)
    _add_extract(p)
    _add_protocol(p)

    p = sub.add_parser("scan", help="SCAN clustering heads (+ self-labeling) on cached features, beside k-means")
    p.add_argument("--backbone", default=None, help="model-card id (features are extracted if missing)")
    _add_checkpoint(p)
    p.add_argument("--k", type=int, default=None, help="number of clusters (default: #classes × --overcluster)")
    p.add_argument("--heads", type=int, default=10, help="heads trained at once; the lowest-loss one is kept")
    p.add_argument("--head", choices=["linear", "mlp"], default="linear")
    p.add_argument("--entropy-weight", type=float, default=None, help="λ of the entropy term (default: SCAN's)")
    p.add_argument("--epochs", type=int, default=None, help="SCAN epochs (default: SCAN's)")
    p.add_argument("--neighbors", type=int, default=20, help="K nearest neighbours mined per sample")
    p.add_argument("--self-label", action="store_true", help="also run the self-labeling step")
    p.add_argument("--with-kmeans", action="store_true", help="also add k-means rows for the same k")
    _add_data(p, required=True)
    _add_extract(p)
    _add_protocol(p)
    p.set_defaults(overcluster=[1.0])

    p = sub.add_parser("extract", help="extract frozen features into the cache (resumable)")
    p.add_argument("--backbone", default=None, help="model-card id or card YAML path")
    _add_checkpoint(p)
    p.add_argument("--views", type=int, default=0, help="also store N seeded augmented views per image")
    p.add_argument("--chunk-size", type=int, default=8192, help="images per resumable chunk")
    _add_data(p, required=True)
    _add_extract(p)

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
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the images (default 200)")
    p.add_argument("--cache-dir", default=None, help="feature cache the rows were made from (for the labels)")

    p = sub.add_parser("compare", help="do two backbones differ beyond seed and sample noise on a dataset?")
    p.add_argument("backbone_a")
    p.add_argument("backbone_b")
    p.add_argument("--dataset", required=True)
    p.add_argument("--method", default="kmeans")
    p.add_argument("--k", type=int, default=None, help="number of clusters (default: the number of classes)")
    p.add_argument("--results", default=None, help="leaderboard CSV (default results/leaderboard.csv)")
    p.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples of the images (default 200)")
    p.add_argument("--cache-dir", default=None, help="feature cache the rows were made from (for the labels)")

    p = sub.add_parser("objectnet", help="ObjectNet: direct clustering and ImageNet -> ObjectNet transfer")
    p.add_argument("--backbone", default=None, help="model-card id or card YAML path")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--arch", default=None)
    p.add_argument("--imagenet-root", required=True, help="ImageNet folder with train/ (and val/) wnid folders")
    p.add_argument("--objectnet-root", required=True, help="ObjectNet folder (objectnet-1.0/ or images/ + mappings/)")
    p.add_argument("--imagenet-split", default="train", choices=["train", "val"],
                   help="ImageNet split the transfer clusters are trained on (default train)")
    p.add_argument("--cache-dir", default=None)
    _add_extract(p)
    _add_protocol(p)
    p.set_defaults(overcluster=[1.0])

    sub.add_parser("models", help="list the model cards")
    sub.add_parser("datasets", help="list the datasets")
    p = sub.add_parser("cache", help="list the feature-cache entries")
    p.add_argument("--cache-dir", default=None)
    return parser


def _cmd_run(args):
    from . import api

    df = api.run(args.backbones, args.dataset, args.data_root, args.split, results=args.results,
                 cache=args.cache_dir, subset=args.subset, methods=args.methods,
                 overcluster=args.overcluster, seeds=args.seeds, pca_dim=args.pca_dim, whiten=args.whiten,
                 l2_normalize=args.l2_normalize, backend=args.backend, batch_size=args.batch_size,
                 num_workers=args.workers, device=args.device, progress=not args.quiet,
                 **_kmeans_options(args), **_checkpoint_options(args))
    from .leaderboard import aggregate, default_results_path, to_markdown

    print(to_markdown(aggregate(df)))
    results = Path(args.results) if args.results else default_results_path()
    print(f"\n{len(df)} rows appended to {results}; table: {results.with_suffix('.md')}")


def _cmd_scan(args):
    from . import api
    from .leaderboard import aggregate, to_markdown

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
    df = api.run([args.backbone] if args.backbone else None, args.dataset, args.data_root, args.split,
                 results=args.results, cache=args.cache_dir, subset=args.subset, methods=methods,
                 n_clusters=[args.k] if args.k else None, overcluster=args.overcluster, seeds=args.seeds,
                 pca_dim=args.pca_dim, whiten=args.whiten, l2_normalize=args.l2_normalize, backend=args.backend,
                 batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                 progress=not args.quiet, scan_options=scan_options, **_kmeans_options(args),
                 **_checkpoint_options(args))
    print(to_markdown(aggregate(df)))


def _cmd_extract(args):
    from . import api

    if args.backbone is None and not args.checkpoint:
        raise ValueError("pass --backbone CARD_ID, or --checkpoint PATH with --arch ARCH")
    entry = api.extract(args.backbone, args.dataset, args.data_root, args.split, args.cache_dir,
                        subset=args.subset, views=args.views, batch_size=args.batch_size,
                        num_workers=args.workers, chunk_size=args.chunk_size, device=args.device,
                        progress=not args.quiet, **_checkpoint_options(args))
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
    if args.dataset:
        df = df[df["dataset"] == args.dataset]
        if df.empty:
            raise ValueError(f"no rows for dataset {args.dataset!r}")
    intervals = None
    if args.intervals:
        from .significance import leaderboard_intervals

        intervals = leaderboard_intervals(df, path, args.cache_dir, level=args.level, n_boot=args.n_boot,
                                          progress=not args.quiet)
    print(to_markdown(aggregate(df), mark=not args.no_mark, intervals=intervals))
    if intervals is not None:
        missing = intervals[intervals["interval_note"] != ""]["interval_note"]
        for note in sorted(set(missing)):
            print(f"no interval for {int((missing == note).sum())} configuration(s): {note}", file=sys.stderr)


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
    if args.whiten or args.l2_normalize:
        raise ValueError("--whiten / --l2-normalize are not supported by the ObjectNet protocols")
    rows = run_objectnet(args.backbone, args.imagenet_root, args.objectnet_root,
                         imagenet_split=args.imagenet_split, results=args.results, cache=args.cache_dir,
                         overcluster=args.overcluster, seeds=args.seeds, pca_dim=args.pca_dim,
                         backend=args.backend, checkpoint=args.checkpoint, arch=args.arch,
                         batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                         progress=not args.quiet)
    print(summary_table(rows))


def _cmd_models(args):
    from .backbones import list_cards

    for card in list_cards():
        print(f"{card.id:32s} {card.architecture:28s} {card.pretraining_method:14s} dim={card.feature_dim}")


def _cmd_datasets(args):
    from .data import list_datasets

    print("\n".join(list_datasets()))


def _cmd_cache(args):
    from .cache import FeatureCache

    cache = FeatureCache(args.cache_dir)
    entries = cache.entries()
    if not entries:
        print(f"no entries under {cache.root}")
    for e in entries:
        print(f"{e.path.name}  {tuple(e.manifest['shape'])}  skipped={e.manifest['skipped']['count']}")


COMMANDS = {"run": _cmd_run, "scan": _cmd_scan, "extract": _cmd_extract, "import-features": _cmd_import,
            "leaderboard": _cmd_leaderboard, "compare": _cmd_compare, "objectnet": _cmd_objectnet, "models": _cmd_models, "datasets": _cmd_datasets, "cache": _cmd_cache}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("interrupted: finished cache chunks and appended rows are kept; re-run to resume", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        if args.verbose:
            raise
        print(f"sscb {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
