"""The documentation: README.md stays short and its links resolve; the site's generated pages cover the code.

The site itself (``mkdocs build --strict``) is built by CI (``.ci/run``); these tests need no MkDocs.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ssl_cluster_bench.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("sscb_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


def _run_python(code: str, tmp_path: Path) -> str:
    env = {**os.environ, "SSCB_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_cli_reference_names_every_subcommand_and_option():
    parser = build_parser()
    hooks = _hooks()
    text = hooks.cli_markdown(parser)
    subs = hooks.subcommands(parser)
    names = [name for name, _, _ in subs]
    sub_action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert names == list(sub_action.choices) and len(names) >= 10
    sections = re.split(r"^### (?=`sscb )", text, flags=re.M)
    by_name = {}
    for section in sections[1:]:
        by_name[re.match(r"`sscb ([\w-]+)`", section).group(1)] = section
    assert set(by_name) == set(names)
    for action in parser._actions:  # global options, before the first subcommand section
        for flag in action.option_strings:
            if action.help != argparse.SUPPRESS and flag not in ("-h", "--help"):
                assert f"`{flag}" in sections[0] or f", {flag}" in sections[0], flag
    for name, _, sub in subs:
        section = by_name[name]
        assert sub.format_usage().strip() in section
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            for flag in action.option_strings or [action.metavar or action.dest]:
                assert re.search(rf"[`,] ?{re.escape(flag)}\b", section), f"sscb {name}: {flag} missing"


def test_cli_page_and_schemas_are_generated():
    hooks = _hooks()
    cli_page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert hooks.MARKER in cli_page
    out = hooks.on_page_markdown(cli_page, None, None, None)
    assert hooks.MARKER not in out and "### `sscb run`" in out
    for marker, (module, intro, _) in hooks.SCHEMAS.items():
        block = hooks.docstring_block(module, intro)
        assert len(block.splitlines()) > 10
        assert any(marker in p.read_text(encoding="utf-8") for p in DOCS.rglob("*.md")), marker
    assert "source*" in hooks.docstring_block("ssl_cluster_bench.backbones.cards", "Card schema")
    assert "datasets:" in hooks.docstring_block("ssl_cluster_bench.suite", "A suite file")


def test_readme_is_short_and_keeps_the_two_commands():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    bash = _blocks(text, "bash")
    for command in ('python3 -m pip install -c constraints.txt -e ".[pretrained]" && python3 -m ssl_cluster_bench run',
                    'python3 -m pip install -c constraints.txt -e ".[test]" && python3 -m pytest -q'):
        assert any(command in block.splitlines() for block in bash), command
    # CI runs the README's test command, last
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == 'python3 -m pip install -q -c constraints.txt -e ".[test]" && python3 -m pytest -q'


def test_readme_relative_links_resolve():
    text = README.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert len(links) > 10
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.*)$", text, re.M)}
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        path, _, anchor = link.partition("#")
        if not path:
            assert anchor in anchors, link
            continue
        assert (ROOT / path).exists(), f"README.md links to {link}, which does not exist"


def test_every_docs_page_is_in_the_nav():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    listed = set(re.findall(r":\s*([\w/-]+\.md)\s*$", nav, re.M))
    assert pages == listed


def test_readme_python_example_runs(tmp_path):
    text = README.read_text(encoding="utf-8")
    (code,) = _blocks(text, "python")
    assert len(code.strip().splitlines()) <= 10
    out = _run_python(code, tmp_path)
    assert "kmeans" in out and "scan" in out


def test_add_a_method_guide_runs(tmp_path):
    code = _blocks((DOCS / "guides" / "add-a-method.md").read_text(encoding="utf-8"), "python")[0]
    out = _run_python(code, tmp_path)
    assert "birch" in out and "kmeans" in out


def test_add_a_backbone_guide_card_is_valid(tmp_path):
    from ssl_cluster_bench.backbones.cards import load_card

    card = _blocks((DOCS / "guides" / "add-a-backbone.md").read_text(encoding="utf-8"), "yaml")[0]
    path = tmp_path / "resnet18-a1.yaml"
    path.write_text(card, encoding="utf-8")
    loaded = load_card(path)
    assert loaded.id == "resnet18-a1" and loaded.source == "timm"
