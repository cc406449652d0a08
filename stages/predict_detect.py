"""DVC stage `predict_detect`: see `navml predict_detect --help`."""

import typer

from navml.cli.predict_detect import command

if __name__ == "__main__":
    typer.run(command)
