"""Thin typer entrypoints, one per DVC stage: options in, one library call, exit code out."""
