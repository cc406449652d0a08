"""The ``navml`` command line: one thin module per command, assembled here.

Each command module defines ``command`` (a typer-decorated function). The DVC
stages in ``stages/`` run the very same functions.
"""

from __future__ import annotations

import importlib
import os

# TensorFlow's C++ info lines (oneDNN, CPU features) are noise on a command line;
# set before any command module can import TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import typer  # noqa: E402

#: command name -> module under navml.cli
COMMANDS = {
    "synth": "synth",
    "extract": "extract",
    "cover": "cover",
    "imagery": "imagery",
    "rasterize": "rasterize",
    "export": "export",
    "train": "train",
    "evaluate": "evaluate",
    "predict": "predict",
    "vectorize": "vectorize",
    "dedupe": "dedupe",
    "score": "score",
}

app = typer.Typer(
    name="navml",
    help="Turn aerial imagery and OpenStreetMap into new, review-ready map features.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name, _module in COMMANDS.items():
    _mod = importlib.import_module(f"navml.cli.{_module}")
    app.command(_name, help=_mod.__doc__)(_mod.command)


def main() -> None:
    """Console-script entry point."""
    app()
