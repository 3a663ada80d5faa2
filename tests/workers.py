"""How the suite is shared between pytest-xdist's workers (``-n 2 --dist loadgroup``).

Most tests are independent and go to whichever worker is free. A test that
uses a module- or class-scoped fixture (one installed venv, one Postfix, one
browser per module) is put in that module's ``xdist_group``, so that the
fixture is built once, on one worker, and not once per worker. This is read
from the fixtures themselves, so a new module-scoped fixture needs no marker.
"""

from __future__ import annotations

import pytest

__all__ = ["group_shared_fixtures"]

#: fixture scopes wider than one test and narrower than a worker's session
_SHARED = frozenset({"module", "class", "package"})


def group_shared_fixtures(items: list[pytest.Item]) -> None:
    """Give each test that uses a module/class/package-scoped fixture its file's group."""
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if info is None or item.get_closest_marker("xdist_group") is not None:
            continue
        scopes = {d.scope for defs in info.name2fixturedefs.values() for d in defs}
        if scopes & _SHARED:
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))
