"""The model cards ship with every install: a built wheel in a fresh virtual environment, and an editable install.

Real processes: the wheel is built from a copy of the source tree (so the checkout gets no build/ folder), and
installed with --no-deps into a fresh venv that borrows the dependencies of the interpreter running the tests.
That interpreter is often itself a venv, where ``--system-site-packages`` would mean the base interpreter (no
pandas, no torch): so the new venv gets a ``.pth`` file naming the running interpreter's site-packages instead.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "model_cards").glob("*.yaml"))


def _run(args, cwd, env=None, check=True) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SSCB_MODEL_CARDS", "PYTHONPATH")}
    return {**env, **extra}


def _listed_ids(stdout: str) -> list[str]:
    return sorted(line.split()[0] for line in stdout.splitlines() if line.strip() and not line.startswith(" ")
                  and " cards, " not in line)


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    dest = tmp_path_factory.mktemp("src") / "ssl_cluster_bench_src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("ssl_cluster_bench", "model_cards"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


def _venv(path: Path) -> Path:
    # No pip of its own: the running interpreter's pip (borrowed through the .pth file) installs into the new
    # venv's prefix. Plain path lines, so the borrowed folders' own .pth files (an editable install of this
    # checkout) are not run and cannot shadow the copy installed into the new venv.
    _run([sys.executable, "-m", "venv", "--without-pip", path], cwd=path.parent)
    python = path / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=path.parent)
    borrowed = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (Path(purelib.stdout.strip()) / "_borrowed_site.pth").write_text("\n".join(borrowed) + "\n")
    return python


# one interpreter runs the remaining checks: every extra process pays the torch/sklearn import again
_CHECKS = """
import contextlib, io, json, os, shutil, sys
from pathlib import Path
import ssl_cluster_bench
from ssl_cluster_bench import cli

def models(**env):
    os.environ.pop("SSCB_MODEL_CARDS", None)
    os.environ.update(env)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["models"])
    return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

package = Path(ssl_cluster_bench.__file__).parent
result = {"package": str(package), "user": models(SSCB_MODEL_CARDS=sys.argv[1])}
if len(sys.argv) > 2:  # then take the shipped cards away
    shutil.rmtree(package / "model_cards")
    result["empty"] = models()
print(json.dumps(result))
"""


def _checks(python: Path, user_cards: Path, cwd: Path, remove_cards: bool) -> dict:
    import json

    out = _run([python, "-c", _CHECKS, user_cards] + (["remove"] if remove_cards else []), cwd=cwd, env=_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def user_cards(tmp_path) -> Path:
    user = tmp_path / "user_cards"
    user.mkdir()
    raw = yaml.safe_load((REPO / "model_cards" / "pixels.yaml").read_text())
    (user / "my-pixels.yaml").write_text(yaml.safe_dump({**raw, "id": "my-pixels"}))
    return user


def test_wheel_install_lists_every_card(source_copy, tmp_path, user_cards):
    _run([sys.executable, "-m", "pip", "wheel", source_copy, "--no-deps", "--no-build-isolation", "-q",
          "-w", tmp_path / "wheels"], cwd=tmp_path)
    (wheel,) = (tmp_path / "wheels").glob("ssl_cluster_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"ssl_cluster_bench/model_cards/{i}.yaml" for i in SHIPPED} <= names
    # the shared preprocessing blocks the cards include
    assert {f"ssl_cluster_bench/model_cards/_preprocessing/{p.name}"
            for p in (REPO / "model_cards" / "_preprocessing").glob("*.yaml")} <= names

    python = _venv(tmp_path / "venv")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "-q", wheel], cwd=tmp_path)
    listing = _run([tmp_path / "venv" / "bin" / "sscb", "models"], cwd=tmp_path, env=_env())
    assert _listed_ids(listing.stdout) == SHIPPED
    assert f"{len(SHIPPED)} cards, " in listing.stdout

    checks = _checks(python, user_cards, tmp_path, remove_cards=True)
    assert Path(checks["package"]).is_relative_to(tmp_path / "venv"), "the venv imported another copy"
    # SSCB_MODEL_CARDS still adds folders in front of the shipped cards
    assert checks["user"]["code"] == 0 and _listed_ids(checks["user"]["out"]) == sorted(SHIPPED + ["my-pixels"])
    # an install without its cards is an error, not an empty success
    empty = checks["empty"]
    assert empty["code"] == 1 and empty["out"] == ""
    assert "no model cards found" in empty["err"] and "SSCB_MODEL_CARDS" in empty["err"]


def test_editable_install_lists_every_card(source_copy, tmp_path, user_cards):
    python = _venv(tmp_path / "venv")
    _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-e",
          source_copy], cwd=tmp_path)
    checks = _checks(python, user_cards, tmp_path, remove_cards=False)
    assert Path(checks["package"]).is_relative_to(source_copy)
    assert _listed_ids(checks["user"]["out"]) == sorted(SHIPPED + ["my-pixels"])
