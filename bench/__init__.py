"""Sluice's benchmark harness: a counting sink, a load generator and the runners.

Run ``python -m bench --help``; ``bench/README.md`` explains each figure.
"""

__all__: list[str] = []
