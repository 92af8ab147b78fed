"""Label-free criteria against ACC over one or more leaderboards (e.g. digits and Fashion-MNIST together).

    python benchmarks/label_free.py results/leaderboard.csv results/fashion-mnist/leaderboard.csv
    python benchmarks/label_free.py results/leaderboard.csv --json out.json

Reads the leaderboard CSVs, keeps the rows with a silhouette or a method score, and prints
:func:`ssl_cluster_bench.criteria.criteria_correlations` as markdown: per dataset × k, the Spearman ρ of the
silhouette (all methods and backbones) and of each method's own score with ACC, signed so that positive means
the criterion agrees with ACC, and the configuration each criterion would pick beside the best one; then the
same correlations pooled over the datasets at k = #classes. Nothing is run: the numbers are those of the rows.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from ssl_cluster_bench.leaderboard import read_leaderboard
from ssl_cluster_bench.criteria import LEGEND, criteria_correlations, criteria_markdown


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csv", nargs="+", type=Path, help="leaderboard CSV(s)")
    parser.add_argument("--target", default="acc", help="metric the criteria are compared with (default acc)")
    parser.add_argument("--json", type=Path, default=None, help="also write the table here")
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry; nothing is shown")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    df = pd.concat([read_leaderboard(p) for p in args.csv], ignore_index=True)
    df = df[df["silhouette"].notna() | df["score"].notna()]
    if df.empty:
        raise SystemExit("no row has a silhouette or a score (leaderboards from before these columns existed)")
    table = criteria_correlations(df, target=args.target)
    counts = df.groupby(["dataset", "method"]).size().rename("rows").reset_index()
    print(f"{len(df)} rows from {len(args.csv)} leaderboard(s):\n")
    print(counts.to_markdown(index=False))
    print(f"\n{LEGEND.replace('ACC', args.target.upper())}\n")
    print(criteria_markdown(table, target=args.target))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(json.loads(table.to_json(orient="records")), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
