"""DVC stage `mine_detect`: see `navml mine_detect --help`."""

import typer

from navml.cli.mine_detect import command

if __name__ == "__main__":
    typer.run(command)
