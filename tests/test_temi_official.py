"""TEMI's loss against numbers of the official implementation, and benchmarks/official_temi.py's input check."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from ssl_cluster_bench.heads.temi import temi_loss, update_prior

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# Written by `python benchmarks/official_temi.py --official <checkout of HHU-MMBS/TEMI-official-BMVC2023>
# --emit-reference`: reference_table(173) (logits of 2 heads x 3 pairs x 4 clusters and a prior) and what the
# official losses.TEMI (beta 0.6, student and teacher temperature 0.1, probs_momentum 0.9) returns on it. The
# table holds a pair on which student and teacher disagree strongly (its PMI sum is ~1e-9): a floor on that
# sum (the earlier EPS = 1e-8) moved this loss by 2e-3.
STUDENT_X = [[[-1.2600518450, 0.3772266496, 1.1823676521, 0.9652439817],
              [-2.1464229183, -0.4773212978, 0.7793559922, 2.3613633066],
              [-0.9011012771, 1.0811643738, -0.2754013584, 0.0506330278]],
             [[0.5309782749, 1.6946632486, 0.5102867705, -0.0183914791],
              [-0.0472206285, -0.5174879219, 2.7192500687, 0.6235450681],
              [0.8873864364, 0.6188840069, -0.5993718090, -0.0756119832]]]
STUDENT_N = [[[1.0214513634, 1.7708910016, -0.2421431090, -0.7558414869],
              [2.4250509266, -1.3503457111, -0.2173849043, -0.5040180284],
              [0.3516352267, -1.3667264312, 0.2862750313, -0.9523586461]],
             [[0.7474736189, 0.7035039564, -0.0300510849, -1.1833663467],
              [-0.5749444819, -1.8321647139, -1.2602308020, 1.6645043368],
              [0.0171317089, 0.1356480997, 0.4503297654, -1.4714827041]]]
TEACHER_X = [[[0.1306984592, 1.6484572226, 0.8821381295, -0.9045972251],
              [-0.6074077177, 0.6808632386, 0.8169053982, -1.4872978666],
              [-1.7471560086, -0.4205307558, 2.4502884643, -0.3037138345]],
             [[-1.6458523918, 0.1797269457, 0.3098603216, -0.8925039771],
              [-0.9342685671, -1.0553202057, -0.6073479397, -0.4023469648],
              [0.0890081025, -0.0525042816, 0.6787851388, -1.3021833366]]]
TEACHER_N = [[[0.5541273439, -0.8884329878, 0.1760890576, 0.7214523549],
              [2.2662340728, -0.4645844234, 0.0358513133, -1.4497728453],
              [-0.0733358170, -0.3371032630, 1.1666611940, 1.9174570812]],
             [[-2.3035864787, 1.3068780918, -0.8396929675, -0.6265375321],
              [-1.5533032380, 0.0337653241, -1.1039355974, -0.3400602733],
              [-0.0429234185, 0.2780588421, 0.9357080431, 0.5078767549]]]
PRIOR = [[0.5989096604, 0.0409055986, 0.3091655036, 0.0510192374],
         [0.1625969767, 0.4762737040, 0.2802028600, 0.0809264593]]
OFFICIAL_LOSS = [0.2309084834, 0.1975042172]
OFFICIAL_PRIOR = [[0.5583091057, 0.0568767375, 0.3082562406, 0.0765579161],
                  [0.1464557050, 0.4652131355, 0.3001991540, 0.0881320056]]


def _probs(logits, temperature=0.1, dtype=torch.float64):
    return torch.softmax(torch.tensor(logits, dtype=dtype) / temperature, dim=-1)


def test_temi_loss_and_prior_equal_the_official_numbers():
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-5)):
        s_x, s_n, t_x, t_n = (_probs(v, dtype=dtype) for v in (STUDENT_X, STUDENT_N, TEACHER_X, TEACHER_N))
        # The official loss updates p̄ with this batch's teachers before dividing by it; so do our loops.
        prior = update_prior(torch.tensor(PRIOR, dtype=dtype), t_x, t_n, momentum=0.9)
        loss, _ = temi_loss(s_x, s_n, t_x, t_n, prior, beta=0.6)
        assert torch.allclose(prior.double(), torch.tensor(OFFICIAL_PRIOR, dtype=torch.float64), atol=tol, rtol=0)
        assert torch.allclose(loss.double(), torch.tensor(OFFICIAL_LOSS, dtype=torch.float64), atol=tol, rtol=0), \
            (loss, OFFICIAL_LOSS)
    # The floors that remain only guard 0: fully confident, disagreeing student and teacher (every product
    # s_c * t_c is 0) still give a finite loss and finite gradients.
    s = torch.tensor([[[1.0, 0.0]]], requires_grad=True)
    t = torch.tensor([[[0.0, 1.0]]])
    loss, _ = temi_loss(s, s, t, t, torch.full((1, 2), 0.5), beta=0.6)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(s.grad).all()


def test_official_temi_rejects_a_folder_that_is_not_the_official_checkout(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(BENCH.parent), str(BENCH)])}
    done = subprocess.run([sys.executable, str(BENCH / "official_temi.py"), "--official", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"--official {tmp_path}" in lines[0] and "git" in lines[0], done.stderr
    assert list(tmp_path.iterdir()) == []
