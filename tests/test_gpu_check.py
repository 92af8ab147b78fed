"""benchmarks/gpu_check.py --smoke runs every step at tiny sizes and prints one table of finite numbers."""
import os
import subprocess
import sys
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_smoke_prints_one_row_per_measurement():
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), "--smoke"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [[c.strip() for c in ln.split("|")[1:-1]] for ln in done.stdout.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert [r[0].split()[0] + (" " + r[0].split()[1] if r[0].startswith("extract") else "") for r in rows] == [
        "extract resnet50", "extract vit_small_patch16_224", "k-means", "scan", "temi", "turtle"]
    for what, size, ref, ref_value, measured, unit, ratio in rows:
        assert float(ref_value) > 0, what
        if torch.cuda.is_available() or what.startswith("extract"):
            assert float(measured) > 0 and float(ratio) > 0, what
        else:  # no GPU: the GPU column stays empty rather than repeating the CPU number
            assert measured == "n/a" and ratio == "n/a", what
