"""Validate params.yaml as a whole before any work (the first DVC stage); optionally write the stamp DVC tracks."""

from __future__ import annotations

from pathlib import Path

import typer

from navml.cli._common import exits, load_params
from navml.cli.options import Params


@exits
def command(
    params: Path = Params,
    stamp: Path = typer.Option(None, "--stamp", help="File to write when the params are valid (the check stage's output)."),
    dvc: bool = typer.Option(False, "--dvc", help="Also require own input files to lie in the folders dvc.yaml tracks (paths.inputs)."),
) -> None:
    from navml.config import check_tracked_inputs

    p = load_params(params)
    specs = p.class_specs()
    if dvc:
        check_tracked_inputs(p, str(params))
    if stamp:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f".{stamp.name}.part")
        tmp.write_text(f"{params}: valid\n")
        tmp.replace(stamp)
    typer.echo(f"check: {params} valid; classes {', '.join(c.name for c in specs)}")
