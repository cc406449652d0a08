"""DVC stage `evaluate`: see `navml evaluate --help`."""

import typer

from navml.cli.evaluate import command

if __name__ == "__main__":
    typer.run(command)
