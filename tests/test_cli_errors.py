"""CLI errors speak the CLI: flags instead of Python keywords, one short paragraph that says the fix."""

import argparse
import re

import pytest
import torch

from ssl_cluster_bench.cli import build_parser, main
from ssl_cluster_bench.errors import OPTIONS, OptionRuntimeError, message_for, option, spell


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    flags = set()
    for action in parser._actions:
        flags.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                flags |= _flags(sub)
    return flags


def test_every_cli_spelling_is_a_real_flag():
    flags = _flags(build_parser())
    for name, (_, cli) in OPTIONS.items():
        for flag in re.findall(r"--[a-z][a-z-]*", cli):
            assert flag in flags, f"{name}: {flag} is not a flag of sscb"


def test_spell_api_and_cli():
    e = OptionRuntimeError(f"load it with {option('trust_checkpoint')}, or pass {option('suite_data_root', 'imagenet')}")
    assert "weights_only=False" in str(e) and "data_roots={'imagenet': PATH}" in str(e)
    cli = message_for(e, "cli")
    assert cli == "load it with --trust-checkpoint, or pass --data-root imagenet=PATH"
    assert spell("no placeholder here", "cli") == "no placeholder here"
    with pytest.raises(KeyError):
        option("no_such_option")


def _paragraph(err: str) -> str:
    """The error text; fails unless it is one short paragraph (no traceback, no blank line)."""
    text = err.strip()
    assert text.startswith("sscb "), text
    assert "Traceback" not in text and "\n\n" not in text, text
    assert len(text.splitlines()) <= 12 and len(text) < 1200, text
    return text


def test_untrusted_pickle_names_the_flag(tmp_path, capsys):
    import torchvision

    model = torchvision.models.resnet18()
    path = tmp_path / "legacy.pth"
    torch.save({"args": argparse.Namespace(arch="resnet18"), "model": model.state_dict()}, path)
    rc = main(["-q", "extract", "--checkpoint", str(path), "--arch", "torchvision:resnet18", "--dataset", "digits",
               "--cache-dir", str(tmp_path / "cache")])
    text = _paragraph(capsys.readouterr().err)
    assert rc == 1
    assert "--trust-checkpoint" in text
    assert "weights_only=False" not in text and "create_backbone" not in text


@pytest.mark.parametrize("argv, flag", [
    (["extract", "--backbone", "pixels", "--dataset", "cifar10"], "--data-root PATH"),
    (["extract", "--checkpoint", "ckpt.pth", "--dataset", "digits"], "--arch ARCH"),
    (["run", "--arch", "resnet18", "--backbones", "pixels"], "--checkpoint PATH"),
    (["extract", "--backbone", "pixels", "--dataset", "cifar100-2"], "cifar100-20"),
])
def test_cli_errors_are_one_paragraph_with_the_fix(tmp_path, capsys, argv, flag):
    rc = main(["-q"] + argv + ["--cache-dir", str(tmp_path / "cache")]
              + (["--results", str(tmp_path / "lb.csv")] if argv[0] == "run" else []))
    text = _paragraph(capsys.readouterr().err)
    assert rc == 1 and flag in text
    assert not re.search(r"\b(root|arch|checkpoint|weights_only)=", text), text
