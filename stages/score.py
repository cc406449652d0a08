"""DVC stage `score`: see `navml score --help`."""

import typer

from navml.cli.score import command

if __name__ == "__main__":
    typer.run(command)
