"""Live reload: SIGHUP and ``sluice reload`` on a real daemon process, and in-process edge cases."""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from relay.store.node_status import read_status
from tests.conftest import SluiceFactory, eventually, provider_for, smtp_send, write_config
from tests.daemon_proc import DaemonProcess, run_cli
from tests.upstream import TestUpstream

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: %s\r\n\r\nbody\r\n"


def _rewrite_provider(path: Path, up: TestUpstream, pid: str) -> None:
    import yaml

    cfg = yaml.safe_load(path.read_text())
    cfg["providers"] = [provider_for(up, pid)]
    write_config(path, cfg)


async def test_sighup_and_sluice_reload_switch_provider(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
    upstream2: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream, "first")])
    d = await daemon_proc(path).start()
    await smtp_send(d.port, "a@example.org", ["b@example.net"], MSG % b"one")
    await upstream.wait_for(1)

    # SIGHUP with a valid change: the next message goes to the new provider.
    _rewrite_provider(path, upstream2, "second")
    mark = len(d.lines)
    d.send_signal(signal.SIGHUP)
    await d.wait_line("configuration reloaded", start=mark)
    await smtp_send(d.port, "a@example.org", ["b@example.net"], MSG % b"two")
    (got,) = await upstream2.wait_for(1)
    assert b"Subject: two" in got.data
    assert len(upstream.messages) == 1

    # `sluice reload` validates, signals the pid in the lock file, waits for the outcome.
    _rewrite_provider(path, upstream, "third")
    rc, out, err = await run_cli("reload", "-c", str(path))
    assert rc == 0, (out, err)
    assert "reloaded its configuration" in out
    await smtp_send(d.port, "a@example.org", ["b@example.net"], MSG % b"three")
    await upstream.wait_for(2)
    assert b"Subject: three" in upstream.messages[1].data
    assert len(upstream2.messages) == 1
    assert await d.stop() == 0


async def test_broken_yaml_keeps_old_config_and_keeps_delivering(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    path = ops_config([provider_for(upstream)])
    good = path.read_text()
    d = await daemon_proc(path).start()

    path.write_text(good + "retry:\n  first_delay: [oops\n")
    mark = len(d.lines)
    d.send_signal(signal.SIGHUP)
    line = await d.wait_line("reload rejected", start=mark)
    assert f"{path}:" in line.string  # FILE:LINE: ... in the log
    await d.wait_line("kept the running configuration", start=mark)

    # The error is exposed where `sluice reload`, the admin page and /healthz read it.
    spool = path.parent / "spool.sqlite3"
    error = await eventually(lambda: read_status(spool, "reload.error"))
    assert error.startswith(f"{path}:")

    # `sluice reload` refuses the broken file itself, without signalling the daemon.
    before = read_status(spool, "reload.id")
    rc, _out, err = await run_cli("reload", "-c", str(path))
    assert rc == 78
    assert f"{path}:" in err
    assert read_status(spool, "reload.id") == before

    # Still alive, still delivering with the old config.
    await smtp_send(d.port, "a@example.org", ["b@example.net"], MSG % b"after")
    (got,) = await upstream.wait_for(1)
    assert b"Subject: after" in got.data
    assert d.proc is not None and d.proc.returncode is None

    # A later good reload clears the error.
    path.write_text(good)
    rc, out, err = await run_cli("reload", "-c", str(path))
    assert rc == 0, (out, err)
    assert read_status(spool, "reload.error") == ""
    assert await d.stop() == 0


async def test_reload_without_daemon_says_so(ops_config: Callable[..., Path]) -> None:
    path = ops_config([{"id": "x", "host": "127.0.0.1", "port": 9, "encryption": "none"}])
    rc, _out, err = await run_cli("reload", "-c", str(path))
    assert rc == 69
    assert "no sluice daemon is running" in err


# ----------------------------------------------------------- in-process edge cases


async def test_reload_error_is_recorded_on_the_daemon(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice([provider_for(upstream)]) as s:
        good = s.config_path.read_text()
        s.config_path.write_text(good.replace("providers:", "providers_typo:"))
        assert await s.daemon.reload() is False
        assert s.daemon.last_reload_error is not None
        assert f"{s.config_path}:" in s.daemon.last_reload_error
        assert s.daemon.last_reload_at is not None
        assert "last reload failed" in s.daemon.status_text()
        s.config_path.write_text(good)
        assert await s.daemon.reload() is True
        assert s.daemon.last_reload_error is None


async def test_reload_rebinds_a_changed_listen_address(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    import yaml

    async with sluice([provider_for(upstream)]) as s:
        old_port = s.port
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["smtp"]["listen"] = ["127.0.0.2:0"]
        write_config(s.config_path, cfg)
        assert await s.daemon.reload() is True, s.daemon.last_reload_error
        assert s.daemon.listener is not None
        (new,) = s.daemon.listener.addresses
        assert new.host == "127.0.0.2"
        await smtp_send(
            new.port, "a@example.org", ["b@example.net"], MSG % b"rebound", host=new.host
        )
        await upstream.wait_for(1)
        with pytest.raises(OSError):
            await smtp_send(old_port, "a@example.org", ["b@example.net"], MSG % b"old")


async def test_reload_keeps_old_listener_if_new_address_is_taken(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    import yaml

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        async with sluice([provider_for(upstream)]) as s:
            cfg = yaml.safe_load(s.config_path.read_text())
            cfg["smtp"]["listen"] = [f"127.0.0.1:{taken.getsockname()[1]}"]
            cfg["retry"]["max_delay"] = "99s"
            cfg["providers"][0]["rate"] = "1/h"
            write_config(s.config_path, cfg)
            assert await s.daemon.reload() is False
            assert "smtp.listen: cannot listen on" in (s.daemon.last_reload_error or "")
            # Nothing of the new file applied, not even to the providers' shared state.
            assert s.daemon.config.retry.max_delay == 2
            (provider,) = s.daemon.snapshot().providers.providers
            assert provider.state.bucket is None
            await smtp_send(s.port, "a@example.org", ["b@example.net"], MSG % b"still")
            await upstream.wait_for(1)
    finally:
        taken.close()


async def test_reload_refuses_a_changed_spool_path(
    sluice: SluiceFactory, upstream: TestUpstream, tmp_path: Path
) -> None:
    import yaml

    async with sluice([provider_for(upstream)]) as s:
        cfg = yaml.safe_load(s.config_path.read_text())
        cfg["spool"]["path"] = str(tmp_path / "elsewhere.sqlite3")
        write_config(s.config_path, cfg)
        assert await s.daemon.reload() is False
        assert "spool.path: cannot change on reload" in (s.daemon.last_reload_error or "")
        assert s.daemon.config.spool.path == tmp_path / "spool.sqlite3"
        # Nor a move to another store, or another node name (#27): a restart does that.
        cfg["spool"]["path"] = str(tmp_path / "spool.sqlite3")
        cfg["spool"]["node"] = "another-name"
        write_config(s.config_path, cfg)
        assert await s.daemon.reload() is False
        assert "spool.node: cannot change on reload" in (s.daemon.last_reload_error or "")


async def test_sluice_reload_from_a_shell_without_the_service_environment(
    daemon_with_own_secret: tuple[Path, DaemonProcess],
) -> None:
    # The daemon, which has the secret, does the full check.
    path, d = daemon_with_own_secret
    rc, out, err = await run_cli("reload", "-c", str(path))
    assert rc == 0, (out, err)
    assert "reloaded its configuration" in out
    assert await d.stop() == 0
