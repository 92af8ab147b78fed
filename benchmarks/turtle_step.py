"""Cost of TURTLE's inner step: the weight gradient as zᵀ·residual (before) against (residualᵀ·z)ᵀ (now).

    python benchmarks/turtle_step.py                 # batch 10,000 at d = 64, 512, 784, 1280, 2064; k = 10
    python benchmarks/turtle_step.py --quick         # batch 2,000, d = 64 and 512

Both give the same gradient (checked here to float32 tolerance). The inner loop of every TURTLE outer step does
M = 10 of these per space, so this product dominates a fit on 10k-row data. Prints CPU ms per gradient for
each form, the ratio, and the CPU seconds of one whole outer step (``turtle_step``) with the library as it is.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from ssl_cluster_bench.heads.turtle import TaskEncoder, turtle_step


def _cpu_ms(fn, repeats: int) -> float:
    fn()  # warm-up
    start = time.process_time()
    for _ in range(repeats):
        fn()
    return 1000 * (time.process_time() - start) / repeats


def measure(n: int, dims: list[int], k: int = 10, repeats: int = 10, seed: int = 0) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for d in dims:
        z = torch.randn(n, d, generator=gen)
        residual = torch.randn(n, k, generator=gen)
        before, after = z.T @ residual, (residual.T @ z).T
        if not torch.allclose(before, after, rtol=1e-4, atol=1e-3):
            raise AssertionError(f"the two forms differ at d = {d}")
        t_before = _cpu_ms(lambda: z.T @ residual, repeats)
        t_after = _cpu_ms(lambda: (residual.T @ z).T, repeats)
        encoder = TaskEncoder([d], k, generator=gen)
        optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-3)
        step_ms = _cpu_ms(lambda: turtle_step(encoder, optimizer, [z], 10.0, 10, 1e-2, gen), max(1, repeats // 5))
        rows.append({"batch": n, "dim": d, "zᵀ·r ms": round(t_before, 2), "(rᵀ·z)ᵀ ms": round(t_after, 2),
                     "ratio before/after": round(t_before / t_after, 1), "outer step now, s": round(step_ms / 1000, 3)})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="batch 2,000 at d = 64 and 512")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-progress", action="store_true", help="accepted for symmetry; nothing is shown")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    n, dims = (2000, [64, 512]) if args.quick else (10000, [64, 512, 784, 1280, 2064])
    table = measure(n, dims, seed=args.seed, repeats=5 if args.quick else 10)
    print(f"TURTLE inner-step weight gradient, CPU time, {args.threads} torch thread(s), k = 10\n")
    print(table.to_markdown(index=False))
    if args.json:
        args.json.write_text(json.dumps(table.to_dict("records"), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
