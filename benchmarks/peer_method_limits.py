"""Time and peak memory of the Lowe et al. clusterers against the number of samples, on this machine.

    python benchmarks/peer_method_limits.py                     # every method at 1000, 2000, 4000, 8000 samples
    python benchmarks/peer_method_limits.py --methods agglomerative --sizes 4000,16000

Each (method, n) is fitted in a fresh child process (its peak RSS is its own) on n points of 10 Gaussian blobs in 50
dimensions (UMAP's output dimension), with the registry's class and default options. The last columns extrapolate
the measured time with the exponent fitted between the two largest sizes to the method's ``max_samples`` and to
ImageNet-1k train (1,281,167 samples); those limits (ssl_cluster_bench/methods.py) are where one fit passes about
ten minutes here, or where its dense matrices pass half the memory.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys

import pandas as pd

CHILD = r"""
import json, resource, sys, time, warnings
import numpy as np
warnings.filterwarnings("ignore")
from ssl_cluster_bench.methods import MethodInputs, get_method
from ssl_cluster_bench.protocol import Protocol
name, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
x = (rng.normal(size=(n, 50)) + 4 * rng.normal(size=(10, 50))[rng.integers(0, 10, n)]).astype(np.float32)
p = Protocol(methods=(name,), reduce="none")
inputs = MethodInputs(x, p, progress=False)
inputs.reduced
t = time.perf_counter()
est = get_method(name).from_protocol(p, 10, 0).fit(inputs)
print(json.dumps({"seconds": time.perf_counter() - t,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "clusters": int(len(set(est.labels_.tolist()) - {-1})), "flag": getattr(est, "flag_", "")}))
"""


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="agglomerative,hdbscan,spectral,affinity")
    parser.add_argument("--sizes", default="1000,2000,4000,8000")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per fit before it counts as too slow")
    parser.add_argument("--quick", action="store_true", help="smoke size: agglomerative at 200 and 400")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.methods, args.sizes = "agglomerative", "200,400"
    from ssl_cluster_bench.methods import get_method

    rows = []
    for name in args.methods.split(","):
        measured = []
        for n in (int(s) for s in args.sizes.split(",")):
            try:
                out = subprocess.run([sys.executable, "-c", CHILD, name, str(n)], capture_output=True, text=True,
                                     timeout=args.timeout)
                result = json.loads(out.stdout.strip().splitlines()[-1])
            except subprocess.TimeoutExpired:
                result = {"seconds": math.inf, "peak_rss_mib": math.nan, "clusters": None, "flag": "timeout"}
            measured.append((n, result["seconds"]))
            rows.append({"method": name, "n": n, "seconds": round(result["seconds"], 2),
                         "peak RSS (MiB)": round(result["peak_rss_mib"]), "clusters": result["clusters"],
                         "flag": result["flag"]})
        (n1, t1), (n2, t2) = measured[-2:]
        exponent = math.log(t2 / t1) / math.log(n2 / n1) if t1 > 0 and math.isfinite(t2) else math.nan
        limit = get_method(name).max_samples
        for row in rows[-len(measured):]:
            row["time exponent"] = round(exponent, 2)
            row["limit"] = limit
            row["est. s at limit"] = round(t2 * (limit / n2) ** exponent) if limit else None
            row["est. h at ImageNet"] = round(t2 * (1281167 / n2) ** exponent / 3600, 1)
    table = pd.DataFrame(rows)
    print(table.to_markdown(index=False))
    return table


if __name__ == "__main__":
    main()
