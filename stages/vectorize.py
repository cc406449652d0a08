"""DVC stage `vectorize`: see `navml vectorize --help`."""

import typer

from navml.cli.vectorize import command

if __name__ == "__main__":
    typer.run(command)
