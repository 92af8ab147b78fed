"""Every input is checked where it enters: a mistake is one line naming the input and the fix, never a traceback.

Real files throughout; real ``sscb`` processes where the contract is about what a user sees (stderr, exit status),
and a real HTTP server on 127.0.0.1 for downloads.
"""
import functools
import hashlib
import http.server
import logging
import math
import os
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
import yaml

import ssl_cluster_bench as sscb
from ssl_cluster_bench.backbones import create_backbone, load_card
from ssl_cluster_bench.backbones.cards import CardError
from ssl_cluster_bench.cache import FeatureCache
from ssl_cluster_bench.cli import main
from ssl_cluster_bench.protocol import Protocol
from ssl_cluster_bench.suite import SuiteError, load_suite

REPO = Path(__file__).resolve().parents[1]


def _sscb(*argv, cwd) -> subprocess.CompletedProcess:
    """``sscb ARGV`` as a user runs it: a separate process importing this checkout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "ssl_cluster_bench", "-q", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    """The error of a failed ``sscb`` process; fails unless it is exactly one line, exit status 1, no traceback."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sscb "), proc.stderr
    return lines[0]


# --- protocol and suite fields ------------------------------------------------------------------------------

def test_string_boolean_in_a_protocol_file_is_refused_naming_field_and_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text('whiten: "no"\nseeds: 1\n')  # quoted: a string, which Python would read as true
    with pytest.raises(ValueError) as info:
        Protocol.from_yaml(path)
    assert str(path) in str(info.value) and "whiten must be true or false" in str(info.value)
    assert Protocol.from_yaml(_write(tmp_path / "ok.yaml", "whiten: no\nseeds: 1\n")).whiten is False


def test_string_boolean_in_a_suite_protocol_is_refused_naming_the_suite(tmp_path):
    path = _write(tmp_path / "s.yaml", "name: s\ndatasets:\n  - dataset: digits\n    protocol: {l2_normalize: 'yes'}\n")
    with pytest.raises(SuiteError, match=rf"suite {path}: datasets\[0\].protocol: .*l2_normalize must be true or false"):
        load_suite(path)
    bad_sweep = _write(tmp_path / "w.yaml", "name: s\ndatasets: [{dataset: digits}]\nsweep: {pca_dim: [32, true]}\n")
    with pytest.raises(SuiteError, match=r"sweep.pca_dim: expected a list of positive integers"):
        load_suite(bad_sweep)


@pytest.mark.parametrize("fields, message", [
    ({"overcluster": [math.inf]}, r"overcluster factors must be positive finite numbers"),
    ({"overcluster": [float("nan")]}, r"overcluster factors must be positive finite numbers"),
    ({"overcluster": ["1.5"]}, r"overcluster factors must be positive finite numbers"),
    ({"seeds": [-1, 2]}, r"seeds must be a count >= 1 or a list of integers >= 0"),
    ({"seeds": [1, 1]}, r"seeds lists a seed twice"),
    ({"l2_normalize": 1}, r"l2_normalize must be true or false"),
    ({"kmeans": {"n_iters": 3}}, r"kmeans: unknown setting 'n_iters' \(did you mean 'n_iter'\?\)"),
    ({"methods": ["kmean"]}, r"unknown method 'kmean'. Did you mean kmeans"),
])
def test_protocol_values_are_type_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        Protocol.from_dict(fields)


@pytest.mark.parametrize("options, message", [
    ({"scan": {"n_neigbors": 5}}, r"method_options.scan: unknown option 'n_neigbors' \(did you mean 'n_neighbors'\?\)"),
    ({"scan": {"epochs": "10"}}, r"method_options.scan.epochs must be an integer, got '10'"),
    ({"scan": {"lr": math.nan}}, r"method_options.scan.lr must be > 0, got nan"),
    ({"temi": {"batch_size": 0}}, r"method_options.temi.batch_size must be > 0, got 0"),
    ({"mmdc": {"refine": "no"}}, r"method_options.mmdc.refine must be true or false, got 'no'"),
    ({"kmeans": {"n_iter": 3}}, r"kmeans takes no options. k-means is set by the protocol's kmeans field"),
    ({"scna": {}}, r"method_options: unknown method 'scna'. Did you mean scan"),
])
def test_method_options_are_checked_against_the_estimator(options, message):
    with pytest.raises(ValueError, match=message):
        Protocol(method_options=options)


def test_options_the_method_sets_itself_are_refused_and_valid_ones_pass():
    with pytest.raises(ValueError, match=r"method_options.scan: unknown option 'self_label'"):
        Protocol(method_options={"scan": {"self_label": True}})  # scan vs scan+selflabel decides it
    p = Protocol(methods=("scan", "temi"), method_options={
        "scan": {"n_neighbors": 5, "entropy_weight": 2, "self_label_lr": None, "head": "mlp"},
        "temi": {"batch_size": "auto"}})
    assert p.options_for("scan")["entropy_weight"] == 2


# --- the CLI: one line, exit 1, traceback only with --debug ---------------------------------------------------

def test_cli_refuses_bad_numbers_in_one_line(tmp_path, capsys):
    line = _one_line(_sscb("run", "--backbones", "pixels", "--overcluster", "inf", "--cache-dir", "cache",
                           "--results", "lb.csv", cwd=tmp_path))
    assert line == ("sscb run: error: argument --overcluster: expected comma-separated positive finite numbers, "
                    "got 'inf' (see `sscb run --help`)")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "lb.csv").exists()
    for argv in (["run", "--seeds", "0"], ["run", "--overcluster=-1"], ["run", "--pca-dim", "-3"],
                 ["extract", "--batch-size", "0"], ["scan", "--epochs", "0"], ["leaderboard", "--level", "nan"]):
        with pytest.raises(SystemExit) as info:
            main(argv)
        err = capsys.readouterr().err.strip()
        assert info.value.code == 1 and len(err.splitlines()) == 1 and f"argument {argv[1].split('=')[0]}:" in err


def test_cli_protocol_file_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    _write(tmp_path / "p.yaml", 'seeds: 1\nwhiten: "no"\n')
    argv = ("run", "--backbones", "pixels", "--protocol", "p.yaml", "--cache-dir", "cache", "--results", "lb.csv")
    line = _one_line(_sscb(*argv, cwd=tmp_path))
    assert line == "sscb run: error: protocol file p.yaml: whiten must be true or false (unquoted in YAML), got 'no'"
    debug = _sscb("--debug", *argv, cwd=tmp_path)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ValueError: protocol file" in debug.stderr
    _write(tmp_path / "p.yaml", "methods: [scan]\nmethod_options: {scan: {n_neigbors: 5}}\n")
    monkeypatch.chdir(tmp_path)
    assert main(["-v", *argv]) == 1  # -v is debug logging, not tracebacks
    err = capsys.readouterr().err.strip()
    assert err.startswith("sscb run: error: protocol file p.yaml: method_options.scan: unknown option 'n_neigbors' "
                          "(did you mean 'n_neighbors'?)") and len(err.splitlines()) == 1
    assert not (tmp_path / "cache").exists()


def test_unexpected_errors_are_one_line_pointing_at_debug(monkeypatch, capsys):
    from ssl_cluster_bench import cli

    def broken(args):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setitem(cli.COMMANDS, "methods", broken)
    assert main(["methods"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("sscb methods: error: unexpected TypeError: unsupported operand (run again with --debug for the "
                   "traceback, and please report it)")
    with pytest.raises(TypeError):
        main(["methods", "--debug"])


# --- imported features and labels ----------------------------------------------------------------------------

@pytest.fixture
def features(tmp_path):
    path = tmp_path / "features.npy"
    np.save(path, np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32))
    return path


@pytest.mark.parametrize("labels, message", [
    (np.array([0, 1, 2, 0.7, 1, 2, 0, 1]), r"row 3 is 0.7, not an integer class id"),
    (np.array([0, 1, np.nan, 3.7, 1, 2, 0, 1]), r"row 2 is nan, not an integer class id \(2 such row"),
    (np.array([0, 1, -2, 0, 1, 2, 0, 1]), r"row 2 is -2; labels must be class ids >= 0, or -1"),
    (np.array(list("abcabcab")), r"dtype <U1, expected integer class ids"),
])
def test_labels_must_be_integer_class_ids(tmp_path, features, labels, message):
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    cache = FeatureCache(tmp_path / "cache")
    with pytest.raises(ValueError, match=rf"labels file {path}: .*{message}|labels file {path} has {message}"):
        sscb.import_features(features, path, "b", "d", cache=cache)
    assert cache.entries() == []


def test_whole_float_labels_are_accepted_as_integers(tmp_path, features):
    path = tmp_path / "labels.npy"
    np.save(path, np.array([0, 1, 2, 3, -1, 2, 0, 1.5], dtype=np.float64))
    with pytest.raises(ValueError, match=r"row 7 is 1.5"):
        sscb.import_features(features, path, "b", "d", cache=tmp_path / "cache")
    np.save(path, np.array([0, 1, 2, 3, -1, 2, 0, 1], dtype=np.float64))
    entry = sscb.import_features(features, path, "b", "d", cache=tmp_path / "cache")
    assert entry.labels.dtype == np.int64 and entry.labels.tolist() == [0, 1, 2, 3, -1, 2, 0, 1]


def _npz_as_npy(path):
    np.savez(path.with_suffix(".npz"), feats=np.ones((8, 3)))
    path.with_suffix(".npz").rename(path)


@pytest.mark.parametrize("make, message", [
    (_npz_as_npy, r"is an .npz archive \(arrays: feats\), not an .npy array"),
    (lambda p: np.save(p, np.zeros((8, 0), np.float32)), r"has shape \(8, 0\): it needs at least one row and one"),
    (lambda p: np.save(p, np.zeros(8)), r"has shape \(8,\), expected 2-D"),
    (lambda p: np.save(p, np.array([[None] * 3] * 8), allow_pickle=True), r"holds Python objects"),
    (lambda p: p.write_text("1 2 3\n"), r"is not a .npy file"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00v\x00{'descr'"), r"is damaged or truncated"),
    (lambda p: np.save(p, np.where(np.eye(8, 3) > 0, np.inf, 1.0)), r"row 0 holds NaN or inf"),
    (lambda p: np.save(p, np.ones((7, 3))), r"has 7 rows but labels file .* has 8: lengths must match"),
])
def test_features_must_be_one_finite_2d_array(tmp_path, make, message):
    path = tmp_path / "features.npy"
    make(path)
    labels = tmp_path / "labels.npy"
    np.save(labels, np.arange(8) % 3)
    with pytest.raises(ValueError, match=rf"features file {path}:? {message}"):
        sscb.import_features(path, labels, "b", "d", cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() or FeatureCache(tmp_path / "cache").entries() == []


def test_cli_import_of_an_npz_saved_as_npy_is_one_line(tmp_path):
    _npz_as_npy(tmp_path / "f.npy")
    np.save(tmp_path / "y.npy", np.arange(8))
    line = _one_line(_sscb("import-features", "--features", "f.npy", "--labels", "y.npy", "--backbone", "b",
                           "--dataset", "d", "--cache-dir", "cache", cwd=tmp_path))
    assert "features file f.npy is an .npz archive" in line and "np.save" in line


# --- checkpoints ----------------------------------------------------------------------------------------------

def _truncated_zip(path):
    full = path.with_suffix(".full")
    torch.save({"w": torch.zeros(1000)}, full)
    path.write_bytes(full.read_bytes()[:2000])


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("not weights\n"), r"is a text file \(it starts with 'not weights\\n'\): expected a "
                                              r"PyTorch checkpoint written by torch.save"),
    (lambda p: p.write_bytes(b""), r"is empty \(0 bytes"),
    (_truncated_zip, r"is a damaged or truncated zip archive"),
    (lambda p: p.write_text("<!DOCTYPE html><html>Sign in</html>"), r"is an HTML/XML page"),
    (lambda p: p.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n"),
     r"is a Git LFS pointer, not the file itself \(run `git lfs pull`"),
    (lambda p: p.write_bytes(__import__("pickle").dumps([1, 2])), r"is a Python pickle but not one written by "
                                                                   r"torch.save"),
    (lambda p: torch.save([torch.zeros(2)], p), r": the file holds a list, not weights: expected a state dict"),
])
def test_files_that_are_not_checkpoints_are_refused_naming_the_file(tmp_path, capsys, make, message):
    path = tmp_path / "weights.pth"
    make(path)
    rc = main(["-q", "extract", "--checkpoint", str(path), "--arch", "torchvision:resnet18", "--dataset", "digits",
               "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1, err
    assert err.startswith(f"sscb extract: error: checkpoint {path}")
    assert __import__("re").search(message, err), err
    assert "--trust-checkpoint" not in err  # never advise unpickling a file that is not a checkpoint


# --- model cards: URLs and checksums --------------------------------------------------------------------------

def _card(directory: Path, **fields) -> Path:
    card = {"id": "web", "name": "web weights", "architecture": "ResNet-18", "source": "url",
            "arch": "torchvision:resnet18", "pretraining": {"method": "test", "data": "none", "supervised": False},
            "feature": {"description": "pooled", "dim": 512},
            "preprocessing": {"resize": 32, "crop": "center", "input_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3},
            **fields}
    directory.mkdir(parents=True, exist_ok=True)
    return _write(directory / f"{card['id']}.yaml", yaml.safe_dump(card))


@pytest.mark.parametrize("fields, message", [
    ({"url": "file:///data/weights.pth"}, r"field 'url': file:// URLs are not allowed in a card.*--checkpoint PATH"),
    ({"url": "http://example.org/w.pth"}, r"field 'url': plain http:// is refused.*allow_http: true"),
    ({"url": "ftp://example.org/w.pth"}, r"field 'url': must be an https:// URL"),
    ({"url": "https://example.org/w.pth", "sha256": "abc"}, r"field 'sha256': must be the 64 hex digits"),
    ({"url": "http://example.org/w.pth", "allow_http": "yes"}, r"field 'allow_http': must be true or false"),
])
def test_card_urls_are_https_unless_http_is_allowed(tmp_path, fields, message):
    path = _card(tmp_path, **fields)
    with pytest.raises(CardError, match=rf"model card {path}: {message}"):
        load_card(path)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def loopback(tmp_path, monkeypatch):
    """(folder served, base URL) of an HTTP server on 127.0.0.1, with downloads allowed and a private hub cache."""
    for var in ("SSCB_OFFLINE", "HF_HUB_OFFLINE", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_sha256_mismatch_removes_the_download(tmp_path, loopback, caplog):
    served, base = loopback
    model = torchvision.models.resnet18()
    torch.save(model.state_dict(), served / "r18.pth")
    digest = hashlib.sha256((served / "r18.pth").read_bytes()).hexdigest()
    checkpoints = tmp_path / "hub" / "checkpoints"

    wrong = load_card(_card(tmp_path / "a", url=f"{base}/r18.pth", allow_http=True, sha256="0" * 64))
    with pytest.raises(ValueError, match=rf"has SHA-256 {digest}, not the expected 0{{64}}; it was removed"):
        create_backbone(wrong, device="cpu")
    assert not checkpoints.exists() or list(checkpoints.iterdir()) == []  # nothing kept, no .partial left

    missing = load_card(_card(tmp_path / "b", url=f"{base}/gone.pth", allow_http=True))
    with pytest.raises(RuntimeError, match=rf"downloading {base}/gone.pth failed \(HTTP Error 404"):
        create_backbone(missing, device="cpu")

    right = load_card(_card(tmp_path / "c", url=f"{base}/r18.pth", allow_http=True, sha256=digest.upper()))
    with caplog.at_level(logging.WARNING, logger="ssl_cluster_bench.backbones.downloads"):
        backbone = create_backbone(right, device="cpu")
    assert any("plain http://" in r.getMessage() for r in caplog.records)
    assert (checkpoints / "r18.pth").is_file() and backbone.feature_dim == 512
    assert torch.equal(backbone.model.conv1.weight, model.conv1.weight)


def test_file_url_checkpoint_is_a_local_file_known_by_content(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    by_url = create_backbone(None, arch="torchvision:resnet18", checkpoint=path.as_uri(), device="cpu")
    by_path = create_backbone(None, arch="torchvision:resnet18", checkpoint=path, device="cpu")
    assert by_url.weights_id == by_path.weights_id and by_url.weights_id.startswith("file:")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_an_abbreviated_or_mistyped_flag_is_refused_not_read_as_another(capsys):
    # argparse's prefix matching read `--k 1` as `--kmeans-iter 1` and ran a whole job with one Lloyd iteration
    from ssl_cluster_bench.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["run", "--kmeans-it", "1"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "unrecognized arguments: --kmeans-it 1" in err and len(err.strip().splitlines()) == 1
    # run has its own --k now (numbers of clusters or auto): a k of 1 is refused by that flag, in one line
    with pytest.raises(SystemExit) as stop:
        main(["run", "--k", "1"])
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert "argument --k: expected 'auto' or comma-separated numbers of clusters >= 2" in err \
        and len(err.strip().splitlines()) == 1
