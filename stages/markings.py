"""DVC stage `markings`: see `navml markings --help`."""

import typer

from navml.cli.markings import command

if __name__ == "__main__":
    typer.run(command)
