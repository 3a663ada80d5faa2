"""The ``sluice`` command (``main``), thin over the daemon, the store and the outbound wing."""

from relay.cli.main import main

__all__ = ["main"]
