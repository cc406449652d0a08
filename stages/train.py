"""DVC stage `train`: see `navml train --help`."""

import typer

from navml.cli.train import command

if __name__ == "__main__":
    typer.run(command)
