"""DVC stage `check`: see `navml check --help`."""

import typer

from navml.cli.check import command

if __name__ == "__main__":
    typer.run(command)
