"""DVC stage `cover`: see `navml cover --help`."""

import typer

from navml.cli.cover import command

if __name__ == "__main__":
    typer.run(command)
