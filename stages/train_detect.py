"""DVC stage `train_detect`: see `navml train_detect --help`."""

import typer

from navml.cli.train_detect import command

if __name__ == "__main__":
    typer.run(command)
