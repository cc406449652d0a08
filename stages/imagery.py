"""DVC stage `imagery`: see `navml imagery --help`."""

import typer

from navml.cli.imagery import command

if __name__ == "__main__":
    typer.run(command)
