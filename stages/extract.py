"""DVC stage `extract`: see `navml extract --help`."""

import typer

from navml.cli.extract import command

if __name__ == "__main__":
    typer.run(command)
