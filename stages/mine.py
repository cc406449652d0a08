"""DVC stage `mine`: see `navml mine --help`."""

import typer

from navml.cli.mine import command

if __name__ == "__main__":
    typer.run(command)
