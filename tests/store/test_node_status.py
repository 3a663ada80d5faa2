"""The node's status file (``relay/store/node_status.py``): what the daemon tells its host."""

from __future__ import annotations

import stat
from pathlib import Path

from relay.store.node_status import read_status, status_path, write_status


def test_values_merge_and_a_fresh_start_drops_the_old_run(tmp_path: Path) -> None:
    spool = tmp_path / "spool.sqlite3"
    assert read_status(spool, "daemon.listen") is None  # no daemon ever ran here
    write_status(spool, {"daemon.listen": "127.0.0.1:2525", "reload.id": "7:1"})
    write_status(spool, {"reload.id": "7:2", "reload.error": ""})
    assert read_status(spool, "daemon.listen") == "127.0.0.1:2525"
    assert read_status(spool, "reload.id") == "7:2"
    assert read_status(spool, "reload.error") == ""
    write_status(spool, {"daemon.listen": "127.0.0.1:2526"}, fresh=True)
    assert read_status(spool, "reload.id") is None
    path = status_path(spool)
    assert path == tmp_path / "spool.sqlite3.status"
    assert stat.S_IMODE(path.stat().st_mode) & 0o027 == 0  # 0640 at most, as the lock
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left


def test_a_damaged_file_reads_as_nothing_recorded(tmp_path: Path) -> None:
    spool = tmp_path / "spool.sqlite3"
    status_path(spool).write_text('{"daemon.listen": ')
    assert read_status(spool, "daemon.listen") is None
    status_path(spool).write_text("[1, 2]")
    assert read_status(spool, "daemon.listen") is None
    write_status(spool, {"daemon.listen": "127.0.0.1:1"})  # and it is written over
    assert read_status(spool, "daemon.listen") == "127.0.0.1:1"
