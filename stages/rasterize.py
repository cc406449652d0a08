"""DVC stage `rasterize`: see `navml rasterize --help`."""

import typer

from navml.cli.rasterize import command

if __name__ == "__main__":
    typer.run(command)
