"""``cm-datacopy``: the command line."""

from cm_datacopy.cli.commands import main

__all__ = ["main"]
