"""Counts in words for people: "1 recipient", "2 recipients"."""

from __future__ import annotations

__all__ = ["plural"]


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """``n`` and the noun in the number that fits: ``plural(1, "attempt")`` is "1 attempt".

    Args:
        n: the count.
        singular: the noun for one.
        plural_form: the noun for any other count; ``singular + "s"`` when not given.
    """
    word = singular if n == 1 else (plural_form or singular + "s")
    return f"{n} {word}"
