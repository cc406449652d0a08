"""DVC stage `retrain`: see `navml retrain --help`."""

import typer

from navml.cli.retrain import command

if __name__ == "__main__":
    typer.run(command)
