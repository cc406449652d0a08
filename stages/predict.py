"""DVC stage `predict`: see `navml predict --help`."""

import typer

from navml.cli.predict import command

if __name__ == "__main__":
    typer.run(command)
