"""``python -m bench run|scale|steps|memory|dkim``: see bench/README.md."""

from __future__ import annotations

from bench.cli import main

if __name__ == "__main__":
    main()
