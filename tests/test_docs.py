"""The docs show commands that work and links that lead somewhere.

Every ``navml …`` command in a shell block of README.md and docs/ (and in an inline code span)
is parsed by the real command line, as click parses it before it runs anything: the command
must exist and its options, their values and its arguments must be accepted.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import click
import pytest
import typer

from navml.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"(?<!`)`(navml [^`]+)`(?!`)")
PLACEHOLDER = re.compile(r"<[^>]+>|…|\.\.\.")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
# typer >= 0.20 raises its own (vendored) click exceptions, older versions click's
EXIT = (click.exceptions.Exit, typer.Exit)
USAGE = (click.UsageError, typer.exceptions.TyperException)


def shell_lines(text: str) -> list[str]:
    """The command lines of the shell blocks of a Markdown text (continuations joined)."""
    lines = []
    for lang, body in FENCE.findall(text):
        if lang.lower() not in SHELL:
            continue
        for line in body.replace("\\\n", " ").splitlines():
            line = line.strip()
            lines.append(line[2:] if line.startswith("$ ") else line)
    return lines


def navml_commands(text: str) -> list[list[str]]:
    """The argument lists of the ``navml`` commands a Markdown text shows."""
    commands = []
    for line in shell_lines(text):
        for part in re.split(r"\s(?:&&|\|\||;|\|)\s", line):
            argv = shlex.split(part, comments=True)
            if argv and argv[0] == "navml":
                commands.append(argv[1:])
    for span in INLINE.findall(text):
        argv = shlex.split(span)[1:]
        # `navml export` alone names a command; `navml <stage>` is a placeholder
        if not PLACEHOLDER.search(span) and (len(argv) > 1 or argv[0].startswith("-")):
            commands.append(argv)
    return commands


def parse_error(argv: list[str]) -> str | None:
    """Why ``navml *argv`` would not get past argument parsing, or None when it would."""
    group = typer.main.get_command(app)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            if not argv or argv[0].startswith("-"):
                group.make_context("navml", list(argv), resilient_parsing=False)
                return None
            name, *rest = argv
            cmd = group.commands.get(name)
            if cmd is None:
                return f"no command {name!r} (navml has: {', '.join(group.commands)})"
            cmd.make_context(f"navml {name}", rest, resilient_parsing=False)
    except EXIT:  # --help
        return None
    except USAGE as e:
        return e.format_message() if hasattr(e, "format_message") else str(e)
    return None


def doc_commands() -> list[tuple[str, list[str]]]:
    return [(str(p.relative_to(ROOT)), argv) for p in DOCS for argv in navml_commands(p.read_text())]


def test_the_docs_show_navml_commands():
    files = {f for f, _ in doc_commands()}
    assert "README.md" in files and len(files) >= 8
    assert len(doc_commands()) >= 25


@pytest.mark.parametrize(("where", "argv"), doc_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_documented_command_parses(where, argv):
    assert parse_error(argv) is None, f"{where}: navml {shlex.join(argv)}: {parse_error(argv)}"


def test_the_check_catches_a_wrong_command():
    text = """
```bash
navml train --epochz 3                   # a misspelt option
navml vectorize --threshold high         # a value of the wrong type
navml trian                              # no such command
navml export --split test                # the output folder is missing
```
"""
    found = {" ".join(argv): parse_error(argv) for argv in navml_commands(text)}
    assert len(found) == 4
    assert "--epochz" in found["train --epochz 3"]
    assert "--threshold" in found["vectorize --threshold high"]
    assert "trian" in found["trian"]
    assert "out" in found["export --split test"].lower()
    # and the right spellings pass
    assert parse_error(["train", "--params", "params.yaml"]) is None
    assert parse_error(["vectorize", "--threshold", "0.7"]) is None
    assert parse_error(["export", "/tmp/look", "--split", "test"]) is None


def test_commands_are_found_in_blocks_and_spans_only():
    text = "Run `navml cover --aoi 1,2,3,4` or `navml <stage>`.\n```yaml\nnavml: 1\n```\n```bash\nnavml score && dvc push\n```\n"
    assert navml_commands(text) == [["score"], ["cover", "--aoi", "1,2,3,4"]]


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_lead_to_files_of_the_repository(doc):
    text = FENCE.sub("", doc.read_text())
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path).resolve() if path else doc
        assert dest.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        assert dest.exists(), f"{doc.name}: {target} does not exist"
        if anchor and dest.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", FENCE.sub("", dest.read_text()), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{doc.name}: no heading #{anchor} in {path or doc.name}"


def resolve(dotted: str) -> object:
    """The module or attribute a dotted name such as ``navml.geo.grid.Grid`` names (ImportError/AttributeError)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_dotted_names_exist(doc):
    names = set(re.findall(r"`(navml(?:\.\w+)+)`", FENCE.sub("", doc.read_text())))
    for name in names:
        try:
            resolve(name)
        except (ImportError, AttributeError) as e:
            raise AssertionError(f"{doc.name}: `{name}` names nothing in navml ({e})") from None


def test_resolve_fails_on_a_stale_name():
    assert resolve("navml.geo.grid.Grid").__name__ == "Grid"
    with pytest.raises((ImportError, AttributeError)):
        resolve("navml.vectors.write_features")  # the module before the layout moved
