"""DVC stage `synth`: see `navml synth --help`."""

import typer

from navml.cli.synth import command

if __name__ == "__main__":
    typer.run(command)
