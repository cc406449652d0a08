"""The ``navml`` command line: one thin module per command, assembled by :func:`main`.

Each command module defines ``command`` (a typer-decorated function). The DVC
stages in ``stages/`` run the very same functions. The command modules are
imported only when the full command line is built, so a stage that imports
its own command module runs (and depends on) just that module.
"""

from __future__ import annotations

import os

# TensorFlow's C++ info lines (oneDNN, CPU features) are noise on a command line;
# set before any command module can import TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: command name -> module under navml.cli
COMMANDS = {
    "check": "check",
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
    # hard-negative mining (issue 9)
    "mine": "mine",
    "retrain": "retrain",
    # the turn-lane detector (issue 8)
    "train_detect": "train_detect",
    "evaluate_detect": "evaluate_detect",
    "predict_detect": "predict_detect",
    "markings": "markings",
    # hard-negative mining of the detector (issue 9, markings)
    "mine_detect": "mine_detect",
    "retrain_detect": "retrain_detect",
    # cities (issue 10)
    "gap": "gap",
    # the review viewer (issue 11)
    "serve": "serve",
}


def build_app():
    """The typer app with every command of :data:`COMMANDS`."""
    import importlib

    import typer

    app = typer.Typer(
        name="navml",
        help="Turn aerial imagery and OpenStreetMap into new, review-ready map features.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"navml.cli.{module}")
        app.command(name, help=mod.__doc__)(mod.command)
    return app


def __getattr__(name: str):
    """``navml.cli.app``: the whole command line, built on first use (tests and docs checks use it)."""
    if name == "app":
        globals()["app"] = build_app()
        return globals()["app"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point."""
    build_app()()
