"""Sluice: a local SMTP relay with a durable SQLite spool."""

__version__ = "0.1.0"
