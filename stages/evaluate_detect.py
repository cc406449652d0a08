"""DVC stage `evaluate_detect`: see `navml evaluate_detect --help`."""

import typer

from navml.cli.evaluate_detect import command

if __name__ == "__main__":
    typer.run(command)
