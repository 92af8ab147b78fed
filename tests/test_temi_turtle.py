"""TEMI and TURTLE heads, their registry entries, joint (multi-backbone) runs and the label-free row scores."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import make_blobs
from sklearn.metrics import silhouette_score

from ssl_cluster_bench import api
from ssl_cluster_bench.cache import CacheKey, FeatureCache
from ssl_cluster_bench.cli import build_parser
from ssl_cluster_bench.heads.temi import TEMI, TEMIHeads, temi_loss, update_prior
from ssl_cluster_bench.heads.turtle import TURTLE, TaskEncoder, _train_inner, generalization_score, turtle_step
from ssl_cluster_bench.methods import get_method, list_methods
from ssl_cluster_bench.metrics import cluster_accuracy, silhouette
from ssl_cluster_bench.protocol import Protocol

TEMI_FAST = dict(n_heads=3, n_neighbors=10, n_layers=0, epochs=30, batch_size=64, lr=1e-2, warmup_epochs=1, momentum=0.9,
                 verbose=False, device="cpu")


@pytest.fixture(scope="module")
def blobs():
    X, y = make_blobs(n_samples=240, centers=4, n_features=8, cluster_std=1.0, random_state=3)
    return X.astype(np.float32), y


def _two_blob_spaces(n=120, seed=0, dims=(16, 24)):
    """Two well-separated blobs seen in two spaces, rows aligned: the labeling is obvious in each."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    spaces = []
    for d in dims:
        centre = rng.normal(size=d)
        centre *= 4.0 / np.linalg.norm(centre)
        spaces.append((rng.normal(scale=0.5, size=(n, d)) + np.where(y[:, None] == 0, centre, -centre)))
    return spaces[0].astype(np.float32), spaces[1].astype(np.float32), y


# ----------------------------------------------------------------------------- TEMI loss
def test_temi_loss_matches_hand_computation():
    s_x, s_n = torch.tensor([[[0.8, 0.2]]]), torch.tensor([[[0.6, 0.4]]])
    t_x, t_n = torch.tensor([[[0.7, 0.3]]]), torch.tensor([[[0.5, 0.5]]])
    prior = torch.tensor([[0.6, 0.4]])
    beta = 0.6
    loss, weight = temi_loss(s_x, s_n, t_x, t_n, prior, beta)
    w = 0.7 * 0.5 + 0.3 * 0.5
    pmi_1 = -math.log((0.8 * 0.5) ** beta / 0.6 + (0.2 * 0.5) ** beta / 0.4)
    pmi_2 = -math.log((0.6 * 0.7) ** beta / 0.6 + (0.4 * 0.3) ** beta / 0.4)
    assert weight.item() == pytest.approx(w)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(w * (pmi_1 + pmi_2) / 2, rel=1e-6)
    # β = 1 and a uniform prior: the plain symmetric −log⟨s, t⟩ (plus log k), weighted by w.
    loss1, _ = temi_loss(s_x, s_n, t_x, t_n, torch.tensor([[0.5, 0.5]]), 1.0)
    expected = -(math.log(2 * (0.8 * 0.5 + 0.2 * 0.5)) + math.log(2 * (0.6 * 0.7 + 0.4 * 0.3))) / 2
    assert loss1.item() == pytest.approx(w * expected, rel=1e-6)


def test_temi_weight_is_the_teacher_ensemble_mean_and_gradients_reach_students_only():
    t_x = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 1.0], [0.9, 0.1]]])  # 2 heads, 2 pairs
    t_n = torch.tensor([[[1.0, 0.0], [0.2, 0.8]], [[0.0, 1.0], [0.9, 0.1]]])
    s = torch.full((2, 2, 2), 0.5, requires_grad=True)
    loss, weight = temi_loss(s, s, t_x.requires_grad_(), t_n, torch.full((2, 2), 0.5), 0.6)
    # pair 0: both heads' teachers agree fully -> 1; pair 1: (0.5·0.2 + 0.5·0.8 + 0.9·0.9 + 0.1·0.1) / 2
    np.testing.assert_allclose(weight.numpy(), [1.0, (0.5 + 0.82) / 2], rtol=1e-6)
    loss.sum().backward()
    assert s.grad is not None and t_x.grad is None
    with pytest.raises(ValueError, match="same shape"):
        temi_loss(s, s[:, :1], t_x, t_n, torch.full((2, 2), 0.5))


def test_prior_update_is_an_ema_of_the_teachers_batch_mean():
    prior = torch.tensor([[0.5, 0.5]])
    new = update_prior(prior, torch.tensor([[[0.9, 0.1]]]), torch.tensor([[[0.7, 0.3]]]), momentum=0.9)
    np.testing.assert_allclose(new.numpy(), [[0.9 * 0.5 + 0.1 * 0.8, 0.9 * 0.5 + 0.1 * 0.2]], rtol=1e-6)


def test_temi_heads_are_cosines_times_gain():
    heads = TEMIHeads(4, 3, n_heads=2, n_layers=0, generator=torch.Generator().manual_seed(0))
    x = torch.randn(5, 4)
    cos = F.normalize(x, dim=-1) @ F.normalize(heads.direction, dim=1)
    torch.testing.assert_close(heads(x), cos)  # gains start at 1
    for n_layers in (1, 2):
        h = TEMIHeads(4, 3, n_heads=2, n_layers=n_layers, hidden_dim=6, bottleneck_dim=5)
        assert h(x).shape == (2, 5, 3) and h(x).abs().max() <= 1.0 + 1e-6
        again = TEMIHeads.from_state_dict(h.state_dict())
        torch.testing.assert_close(again(x), h(x))


# ----------------------------------------------------------------------------- TEMI estimator
def test_temi_recovers_blobs_seeded_and_scores_its_kept_head(blobs):
    X, y = blobs
    a = TEMI(4, random_state=0, **TEMI_FAST).fit(X)
    b = TEMI(4, random_state=0, **TEMI_FAST).fit(X)
    assert cluster_accuracy(y, a.labels_) > 0.97
    np.testing.assert_array_equal(a.probs_, b.probs_)
    assert a.best_head_ == int(np.argmin(a.head_losses_)) and a.score_ == a.head_losses_[a.best_head_]
    assert a.neighbors_.shape == (X.shape[0], 10) and a.prior_.shape == (3, 4)
    np.testing.assert_allclose(a.prior_.sum(axis=1), 1.0, atol=1e-5)
    # Labels passed as y are ignored.
    c = TEMI(4, random_state=0, **TEMI_FAST).fit(X, y=np.zeros_like(y))
    np.testing.assert_array_equal(c.probs_, a.probs_)


def test_temi_predicts_new_rows_and_refuses_other_dims(blobs):
    # save/load: tests/test_method_contract.py
    X, y = blobs
    train, new = np.arange(0, 240, 2), np.arange(1, 240, 2)
    est = TEMI(4, random_state=1, **{**TEMI_FAST, "n_neighbors": 5}).fit(X[train])
    assert cluster_accuracy(y[new], est.predict(X[new])) > 0.95
    with pytest.raises(ValueError, match="fitted on dim 8"):
        est.predict(X[:, :3])
    with pytest.raises(ValueError, match="n_neighbors=50 must be smaller"):
        TEMI(2, verbose=False, device="cpu").fit(X[:30])


# ----------------------------------------------------------------------------- TURTLE pieces
def test_inner_loop_equals_torch_adam_on_cross_entropy():
    gen = torch.Generator().manual_seed(0)
    z = [torch.randn(30, 4, generator=gen), torch.randn(30, 6, generator=gen)]
    target = torch.softmax(torch.randn(30, 3, generator=gen), dim=1)
    init = [[torch.randn(4, 3, generator=gen), torch.randn(3, generator=gen)],
            [torch.randn(6, 3, generator=gen), torch.randn(3, generator=gen)]]
    ours = [[p.clone() for p in wb] for wb in init]
    _train_inner(z, target, ours, steps=10, lr=1e-2)
    ref = [p.clone().requires_grad_() for wb in init for p in wb]
    opt = torch.optim.Adam(ref, lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        sum(F.cross_entropy(zi @ ref[2 * i] + ref[2 * i + 1], target) for i, zi in enumerate(z)).backward()
        opt.step()
    for got, want in zip([p for wb in ours for p in wb], ref):
        torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-6)


def test_turtle_step_reports_the_entropy_and_error_it_stepped_on():
    a, b, _ = _two_blob_spaces()
    spaces = [torch.from_numpy(a / 4), torch.from_numpy(b / 4)]
    enc = TaskEncoder([16, 24], 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        labels, per_space = enc(spaces)
    expected_entropy = sum(float(-(p.mean(0) * p.mean(0).log()).sum()) for p in per_space)
    np.testing.assert_allclose(labels.numpy(), ((per_space[0] + per_space[1]) / 2).numpy())
    opt = torch.optim.Adam(enc.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in enc.parameters()]
    error, entropy = turtle_step(enc, opt, spaces, gamma=10.0, inner_steps=10, inner_lr=1e-3,
                                 generator=torch.Generator().manual_seed(1))
    assert entropy == pytest.approx(expected_entropy, rel=1e-5)
    assert 0 < error < 2 * math.log(2) + 0.5  # two spaces, each a CE of near-uniform 2-class labels
    assert any(not torch.equal(p, q) for p, q in zip(before, enc.parameters()))


def test_turtle_finds_the_obvious_labeling_in_two_spaces():
    a, b, y = _two_blob_spaces()
    est = TURTLE(2, n_steps=150, score_folds=5, random_state=0, verbose=False, device="cpu").fit([a, b])
    assert cluster_accuracy(y, est.labels_) == 1.0
    # Both spaces' mean predictions stay balanced: the entropy term ends near its maximum 2 · log 2.
    assert est.history_[-1, 1] == pytest.approx(2 * math.log(2), abs=0.01)
    assert est.history_[-1, 0] < est.history_[0, 0]
    assert est.score_ == 1.0
    assert est.space_dims_.tolist() == [16, 24] and est.probs_.shape == (120, 2)


def test_generalization_score_on_true_random_and_single_labels():
    a, b, y = _two_blob_spaces()
    assert generalization_score([a, b], y, n_folds=5) == 1.0
    shuffled = np.random.default_rng(0).permutation(y)
    assert generalization_score([a, b], shuffled, n_folds=5) < 0.75
    assert math.isnan(generalization_score(a, np.zeros(120, dtype=int)))
    with pytest.raises(ValueError, match="one row per label"):
        generalization_score([a, b[:10]], y)


def test_turtle_predicts_new_rows_and_refuses_misaligned_spaces():
    # save/load: tests/test_method_contract.py
    a, b, y = _two_blob_spaces()
    est = TURTLE(2, n_steps=200, score_folds=3, random_state=2, verbose=False, device="cpu").fit([a[::2], b[::2]])
    assert cluster_accuracy(y[1::2], est.predict([a[1::2], b[1::2]])) == 1.0
    with pytest.raises(ValueError, match="not aligned"):
        TURTLE(2, verbose=False, device="cpu").fit([a, b[:-1]])
    with pytest.raises(ValueError, match=r"space dims \[16\]"):
        est.predict([a])


# ----------------------------------------------------------------------------- TURTLE against the official code
# Printed by `python benchmarks/official_heads.py --turtle-repo <checkout of github.com/mlbio-epfl/turtle>
# --emit-reference` (its run_turtle.py at commit 4674efa, torch 2.14, CPU, seed 0): the outer losses
# (prediction error − γ · entropy) of its first 3 steps on _reference_problem() and its encoder after them
# (weight norm folded in), with its defaults otherwise (inner and outer lr 1e-3, M = 10, γ = 10, cold start).
OFFICIAL_LOSSES = [-17.0750504, -17.5515327, -17.9203472]
OFFICIAL_W = [[[-0.00075673, 0.26922005, -0.41144994, -0.3623444],
               [-0.19449063, 0.13612442, -0.0125479, 0.39125642],
               [-0.04746171, 0.1318758, -0.15188755, -0.1029489]],
              [[0.01257429, 0.16337341, 0.24090937, -0.27236882, -0.17954487, 0.15002386],
               [0.3405985, -0.08553033, 0.30614483, -0.06864035, 0.04042634, 0.37184113],
               [-0.37928802, -0.25506574, -0.10122176, -0.16234504, 0.35338977, -0.26704177]]]
OFFICIAL_B = [[-0.4806522, -0.3281396, -0.20335408], [-0.19091049, -0.28222284, -0.38267905]]


def _reference_problem():
    """benchmarks/official_heads.py reference_problem(): 3 clusters, 60 rows, spaces of 4 and 6 dims."""
    gen = torch.Generator().manual_seed(20)
    y = torch.arange(60) % 3
    a = torch.randn(3, 4, generator=gen)[y] * 2 + torch.randn(60, 4, generator=gen)
    b = torch.randn(3, 6, generator=gen)[y] * 2 + torch.randn(60, 6, generator=gen)
    return [a, b]


def _official_replay(spaces, k, seed, steps, inner_lr=1e-3):
    """run_turtle.py's first ``steps`` outer steps with its own draws (torch.manual_seed / np.random.seed(seed);
    encoder layers as torch.nn.Linear then weight norm; one discarded set of classifiers; per step a batch from
    np.random.choice and fresh nn.Linear classifiers), each step computed by turtle_step from those classifiers.
    Returns the encoder and each step's outer loss."""
    dims = [z.shape[1] for z in spaces]
    torch.manual_seed(seed)
    np.random.seed(seed)
    starts = [torch.nn.Linear(d, k) for d in dims]
    state = torch.get_rng_state()
    encoder = TaskEncoder(dims, k, generator=torch.Generator())
    torch.set_rng_state(state)
    with torch.no_grad():
        for layer, start in zip(encoder.layers, starts):
            layer.weight = start.weight.detach().clone()
            layer.bias.copy_(start.bias)
    opt = torch.optim.Adam(encoder.parameters(), lr=1e-3)
    [torch.nn.Linear(d, k) for d in dims]
    n, losses = spaces[0].shape[0], []
    for _ in range(steps):
        idx = torch.from_numpy(np.random.choice(n, size=n, replace=False))
        inner = [torch.nn.Linear(d, k) for d in dims]
        error, entropy = turtle_step(encoder, opt, [z[idx] for z in spaces], gamma=10.0, inner_steps=10,
                                     inner_lr=inner_lr,
                                     classifiers=[[c.weight.detach().T, c.bias.detach()] for c in inner])
        losses.append(error - 10.0 * entropy)
    return encoder, losses


def test_turtle_steps_equal_the_official_update():
    encoder, losses = _official_replay(_reference_problem(), 3, seed=0, steps=3)
    np.testing.assert_allclose(losses, OFFICIAL_LOSSES, rtol=0, atol=1e-5)
    for layer, w, b in zip(encoder.layers, OFFICIAL_W, OFFICIAL_B):
        np.testing.assert_allclose(layer.weight.detach().numpy(), w, rtol=0, atol=1e-6)
        np.testing.assert_allclose(layer.bias.detach().numpy(), b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_turtle_draws_the_official_initialisation(seed):
    # The same seed gives the official script's draws: on features it would see unchanged (already centred and
    # scaled, as ours standardises them), TURTLE.fit follows run_turtle.py step for step.
    spaces = [(z - z.mean(0)) / z.var(0).mean().sqrt() for z in _reference_problem()]
    official, _ = _official_replay(spaces, 3, seed, steps=3)
    ours = TURTLE(3, n_steps=3, inner_lr=1e-3, random_state=seed, score_folds=2, verbose=False,
                  device="cpu").fit([z.numpy() for z in spaces])
    # Adam moves a weight by at most about lr = 1e-3 per step, so float rounding (our re-standardising, rows in
    # order instead of a permutation) can move a weight whose gradient is near zero by up to 3e-3 in 3 steps;
    # another seed's draws are 0.1 or more away.
    other, _ = _official_replay(spaces, 3, seed + 1, steps=3)
    for a, b, c in zip(ours.encoder_.layers, official.layers, other.layers):
        np.testing.assert_allclose(a.weight.detach().numpy(), b.weight.detach().numpy(), rtol=0, atol=3e-3)
        np.testing.assert_allclose(a.bias.detach().numpy(), b.bias.detach().numpy(), rtol=0, atol=3e-3)
        assert (a.weight - c.weight).abs().max() > 0.1
    # and the encoder's initial draws are torch.nn.Linear's, bit for bit
    torch.manual_seed(seed)
    linear = torch.nn.Linear(4, 3)
    fresh = TaskEncoder([4], 3, generator=torch.Generator().manual_seed(seed))
    v = fresh.layers[0].parametrizations.weight.original1  # weight = g · v / ‖v‖, with g = ‖v‖ at the start
    assert torch.equal(v, linear.weight) and torch.equal(fresh.layers[0].bias, linear.bias)


# The official defaults' labels (T = 6000, seed 0, raw features) on _regression_problem(), printed by the same
# --emit-reference run: the list it printed is [0, 2, 1] repeated 30 times (the true partition).
OFFICIAL_LABELS = [0, 2, 1] * 30


def _regression_problem():
    """benchmarks/official_heads.py regression_problem(): 3 clusters, 90 rows, spaces of 384 and 512 dims."""
    gen = torch.Generator().manual_seed(21)
    y = torch.arange(90) % 3
    return [(torch.randn(3, d, generator=gen)[y] * 0.3 + torch.randn(90, d, generator=gen)).numpy()
            for d in (384, 512)]


def test_turtle_defaults_reach_the_official_labelling_in_two_wide_spaces():
    # More dims than rows: a fixed inner lr of 1e-2 (the old default) overshoots here (ACC 0.867 for seed 0, at
    # T = 300 and at the default 1,000); "auto" scales it by the rows' L1 norm. T = 300 and 3 score folds keep the
    # test short (about 1.5 CPU s); the default T = 1,000 reaches the same labelling.
    spaces = _regression_problem()
    est = TURTLE(3, n_steps=300, score_folds=3, random_state=0, verbose=False, device="cpu").fit(spaces)
    assert cluster_accuracy(np.array(OFFICIAL_LABELS), est.labels_) == 1.0
    # "auto" on two spaces trains with c = 0.75 and c = 3 over the mean L1 norm of the rows as the encoder sees
    # them (centred, one RMS scale) and keeps the better generalisation score: here c = 0.75, which reaches the
    # official labelling (score 1.0); c = 3 overshoots (score 0.85).
    seen = [(z - z.mean(0)) / np.sqrt(z.var(0).mean()) for z in spaces]
    np.testing.assert_allclose(est.inner_lr_, [0.75 / np.abs(z).sum(1).mean() for z in seen], rtol=1e-4)
    assert est.inner_lr_scores_.shape == (2,) and est.score_ == est.inner_lr_scores_.max() == 1.0
    assert est.inner_lr_scores_[1] == pytest.approx(0.85, abs=0.01)
    single = TURTLE(3, n_steps=20, score_folds=3, random_state=0, verbose=False, device="cpu").fit(spaces[0])
    assert single.inner_lr_scores_.shape == (1,)
    np.testing.assert_allclose(single.inner_lr_, [0.75 / np.abs(seen[0]).sum(1).mean()], rtol=1e-4)


def test_turtle_inner_lr_is_a_positive_number_or_auto():
    a, b, _ = _two_blob_spaces()
    for bad in ("fast", "1e-3", -1e-3):
        with pytest.raises(ValueError, match="inner_lr must be"):
            TURTLE(2, inner_lr=bad, verbose=False, device="cpu").fit([a, b])
    est = TURTLE(2, inner_lr=5e-3, n_steps=2, score_folds=2, verbose=False, device="cpu").fit([a, b])
    assert est.inner_lr_.tolist() == [5e-3, 5e-3]


def test_official_heads_benchmark_refuses_a_folder_without_the_official_code(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "benchmarks" / "official_heads.py"), "--turtle-repo",
                           str(tmp_path), "--scratch", str(tmp_path / "scratch"), "--emit-reference"],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"--turtle-repo {tmp_path}: no run_turtle.py there; pass a checkout of github.com/mlbio-epfl/turtle"]
    assert not (tmp_path / "scratch").exists()  # nothing copied, nothing written


# ----------------------------------------------------------------------------- registry, joint runs, row scores
def test_registry_has_temi_and_turtle_and_explains_unknown_names():
    assert {"temi", "turtle"} <= set(list_methods())
    assert get_method("turtle").multi_space and not get_method("temi").multi_space
    with pytest.raises(ValueError, match="Did you mean turtle"):
        get_method("turtel")


def _entry(cache, backbone, X, y, dataset="blobs", indices=None):
    key = CacheKey(backbone=backbone, dataset=dataset, split="all", weights="w", transform="imported")
    return cache.put(key, X, y, indices=indices)


def test_joint_run_names_all_backbones_and_misaligned_entries_are_refused(tmp_path):
    a, b, y = _two_blob_spaces()
    cache = FeatureCache(tmp_path / "cache")
    ea, eb = _entry(cache, "a", a, y), _entry(cache, "b", b, y)
    protocol = Protocol(methods=("kmeans", "turtle"), seeds=2, overcluster=(1.0,),
                        method_options={"turtle": {"n_steps": 60, "score_folds": 3}})
    df = api.cluster_entries([ea, eb], protocol, progress=False)
    assert df["backbone"].unique().tolist() == ["a+b"] and df["method"].unique().tolist() == ["turtle"]
    assert (df["acc"] == 1.0).all() and (df["score"] == 0.0).all()
    assert df["pca_dim"].unique().tolist() == [40] and df["run_id"].is_unique
    # silhouette on the first space's reduced features, the same number as scikit-learn's
    assert df["silhouette"].iloc[0] == pytest.approx(silhouette_score(a, y), abs=1e-3)

    shuffled = _entry(cache, "c", b, y, indices=np.random.default_rng(0).permutation(120))
    with pytest.raises(ValueError, match="not aligned.*different sample indices"):
        api.cluster_entries([ea, shuffled], protocol, progress=False)
    with pytest.raises(ValueError, match=r"not aligned \(120 vs 60 samples\)"):
        api.cluster_entries([ea, _entry(cache, "d", b[:60], y[:60])], protocol, progress=False)
    with pytest.raises(ValueError, match="not aligned.*blobs/all vs other/all"):
        api.cluster_entries([ea, _entry(cache, "a", a, y, dataset="other")], protocol, progress=False)
    with pytest.raises(ValueError, match="needs a multi-space method"):
        api.cluster_entries([ea, eb], protocol.replace(methods=("kmeans",)), progress=False)


def test_every_row_gets_score_and_silhouette(blobs):
    X, y = blobs
    protocol = Protocol(methods=("kmeans", "temi"), seeds=1, overcluster=(1.0,), pca_dim=4,
                        method_options={"temi": {k: v for k, v in TEMI_FAST.items() if k not in ("verbose", "device")}})
    df = api.cluster_features(X, y, protocol, progress=False)
    assert set(df["method"]) == {"kmeans", "temi"}
    assert df["score"].notna().all() and df["silhouette"].between(-1, 1).all()
    assert isinstance(df, pd.DataFrame)


def test_silhouette_matches_scikit_learn_and_samples_large_inputs():
    X, y = make_blobs(n_samples=300, centers=3, n_features=5, random_state=0)
    assert silhouette(X, y) == pytest.approx(silhouette_score(X, y), rel=1e-5)
    assert math.isnan(silhouette(X, np.zeros(300, dtype=int)))
    sampled = silhouette(X, y, sample_size=100, random_state=0)
    rows = np.sort(np.random.default_rng(0).choice(300, 100, replace=False))
    assert sampled == pytest.approx(silhouette_score(X[rows], y[rows]), rel=1e-5)


def test_cli_parses_joint_groups():
    args = build_parser().parse_args(["run", "--methods", "turtle", "--backbones", "a,b", "--joint", "a+b,a+b+c"])
    assert args.joint == [["a", "b"], ["a", "b", "c"]]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--joint", "a"])
