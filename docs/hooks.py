"""MkDocs hook: the CLI reference (docs/cli.md) is generated from the argparse parser at build time.

``mkdocs.yml`` declares this file under ``hooks:``. The page ``cli.md`` holds the hand-written overview and the
marker ``<!-- CLI-REFERENCE -->``; :func:`on_page_markdown` replaces the marker with :func:`cli_markdown` of
``ssl_cluster_bench.cli.build_parser()``, so the reference can never go stale. ``tests/test_docs.py`` checks that
it names every subcommand and option.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

# document the parser of this checkout, whatever ssl_cluster_bench an environment has installed
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

MARKER = "<!-- CLI-REFERENCE -->"
# schema blocks taken from module docstrings: marker -> (module, the line that introduces the block, language)
SCHEMAS = {
    "<!-- CARD-SCHEMA -->": ("ssl_cluster_bench.backbones.cards", "Card schema", "text"),
    "<!-- SUITE-SCHEMA -->": ("ssl_cluster_bench.suite", "A suite file", "yaml"),
}


def _escape(text: str) -> str:
    """Markdown-escape help text outside `code spans` (help strings quote commands in backticks)."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # even parts are outside code spans
        p = parts[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        parts[i] = re.sub(r"([\\*_|\[\]])", r"\\\1", p)
    return "`".join(parts)


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return ""
    return " ".join(parser._get_formatter()._expand_help(action).split())


def _invocation(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar or action.dest
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    if action.choices is not None and action.metavar is None:
        metavar = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        metavar = action.metavar or action.dest.upper()
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    return ", ".join(f"{s} {metavar}" for s in action.option_strings)


def _default(action: argparse.Action) -> str:
    d = action.default
    if (d is None or d is argparse.SUPPRESS or action.nargs == 0 or d == [] or not action.option_strings
            or (action.help and "default" in action.help)):
        return ""
    return f" (default: `{d}`)"


def _actions_markdown(parser: argparse.ArgumentParser) -> list[str]:
    lines = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        text = (_escape(_help(parser, action)) + _default(action)).strip()
        lines.append(f"- `{_invocation(action)}`" + (f": {text}" if text else ""))
    return lines


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of every subcommand, in the parser's order."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def cli_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown reference of ``parser`` (default: ``ssl_cluster_bench.cli.build_parser()``)."""
    if parser is None:
        from ssl_cluster_bench.cli import build_parser

        parser = build_parser()
    lines = ["### Global options", "", "```", parser.format_usage().strip(), "```", ""]
    if parser.description:
        lines += [_escape(parser.description), ""]
    lines += _actions_markdown(parser) + [""]
    subs = subcommands(parser)
    lines += ["### Subcommands", ""]
    lines += [f"- [`{parser.prog} {name}`](#sscb-{name}): {_escape(help_)}" for name, help_, _ in subs] + [""]
    for name, help_, sub in subs:
        lines += [f"### `{parser.prog} {name}` {{#sscb-{name}}}", ""]
        if help_:
            lines += [_escape(help_[0].upper() + help_[1:]) + ".", ""]
        if sub.description:
            lines += [_escape(" ".join(sub.description.split())), ""]
        lines += ["```", sub.format_usage().strip(), "```", ""]
        options = _actions_markdown(sub)
        lines += (options if options else ["No options."]) + [""]
        if sub.epilog:
            lines += [_escape(" ".join(sub.epilog.split())), ""]
    return "\n".join(lines)


def docstring_block(module: str, intro: str) -> str:
    """The literal block (``::``) that follows the docstring line starting with ``intro``, dedented."""
    import importlib
    import textwrap

    lines = importlib.import_module(module).__doc__.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(intro) and line.rstrip().endswith("::"))
    block = []
    for line in lines[start + 1:]:
        if line.strip() and not line.startswith(" "):
            break
        block.append(line)
    return textwrap.dedent("\n".join(block)).strip("\n")


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_markdown())
    for marker, (module, intro, language) in SCHEMAS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, f"```{language}\n" + docstring_block(module, intro) + "\n```")
    return markdown
