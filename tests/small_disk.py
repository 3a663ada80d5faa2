"""A real small file system that fills up: what the full-disk tests stand on.

A tmpfs of a few MB, mounted for one test and filled by a filler file the way
a runaway log fills ``/var``: SQLite gets ENOSPC from the kernel, not a page
cap (``PRAGMA max_page_count`` does not stop an in-place update, such as an
outcome's). Mounting needs root (CI runs as root); elsewhere the tests skip.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["fill", "small_tmpfs"]


@contextlib.contextmanager
def small_tmpfs(folder: Path, megabytes: int) -> Iterator[Path]:
    """Mount a ``megabytes`` MB tmpfs on ``folder`` (made here); unmount it afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs (a disk that fills) needs root")
    folder.mkdir()
    size = f"size={megabytes}m"
    subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(folder)], check=True)
    try:
        yield folder
    finally:
        # Lazy: a daemon killed by a failed test may still hold a file open.
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Take every free byte of ``folder``'s file system with one filler file (appended to)."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 9, 1):
            chunk = b"\0" * size
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, chunk)
    finally:
        os.close(fd)
    try:
        (folder / "probe").write_bytes(b"x" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    else:
        raise AssertionError(f"{folder} still has room after filling")
    return filler
