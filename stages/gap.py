"""DVC stage `gap`: see `navml gap --help`."""

import typer

from navml.cli.gap import command

if __name__ == "__main__":
    typer.run(command)
