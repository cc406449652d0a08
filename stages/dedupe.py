"""DVC stage `dedupe`: see `navml dedupe --help`."""

import typer

from navml.cli.dedupe import command

if __name__ == "__main__":
    typer.run(command)
