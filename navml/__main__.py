"""``python -m navml``: the same as the ``navml`` command."""

from navml.cli import main

main()
