"""DVC stage `retrain_detect`: see `navml retrain_detect --help`."""

import typer

from navml.cli.retrain_detect import command

if __name__ == "__main__":
    typer.run(command)
