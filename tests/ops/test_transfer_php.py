"""PHP's ``mail()`` through ``sluice sendmail`` with one unwrapped 3000-character HTML line.

The upstream is the strict one (no 8BITMIME, lines of at most 998 octets):
the mail reaches it only if Sluice re-encoded it, and a client decodes the
very HTML that PHP was given.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from tests.daemon_proc import DaemonProcess
from tests.outbound.strict_upstream import StrictUpstream
from tests.peers import require

HTML = "<html><body>" + "<p>Grüße aus Köln, café.</p>" * 110 + "</body></html>"


@pytest.fixture
async def strict() -> AsyncIterator[StrictUpstream]:
    up = await StrictUpstream().start()
    yield up
    await up.stop()


async def php_mail(config: Path) -> tuple[int, str, str]:
    """``mail()`` as a PHP web app calls it; (exit code, stdout, stderr) of php."""
    php = require("php")
    sluice = Path(sys.executable).parent / "sluice"
    assert sluice.exists(), f"{sluice} is missing: install the package (bash .ci/run does)"
    script = (
        "$html = file_get_contents('php://stdin');"
        "var_dump(mail('user@example.net', 'PHP long line', $html,"
        ' "From: app@example.org\\r\\nMIME-Version: 1.0\\r\\n'
        'Content-Type: text/html; charset=UTF-8"));'
    )
    proc = await asyncio.create_subprocess_exec(
        php,
        "-n",  # no php.ini: nothing of this machine's PHP set-up counts
        "-d",
        f"sendmail_path={sluice} sendmail -t -i -C {config}",
        "-r",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate(HTML.encode())
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")


def check_received(data: bytes) -> None:
    assert data.isascii()
    assert max(map(len, data.split(b"\r\n"))) <= 998
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg["Subject"] == "PHP long line"
    assert msg.get_content_type() == "text/html"
    assert msg.get_content().rstrip("\r\n") == HTML  # the text a mail client shows


async def test_php_mail_with_a_long_line_while_the_daemon_is_down(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    strict: StrictUpstream,
) -> None:
    provider = {"id": "strict", "host": strict.host, "port": strict.port, "encryption": "none"}
    path = ops_config([provider])
    d = await daemon_proc(path).start()  # once, so that the spool exists
    assert await d.stop() == 0

    rc, out, err = await php_mail(path)
    assert (rc, out.strip()) == (0, "bool(true)"), err  # spooled directly

    d2 = await daemon_proc(path).start()
    (got,) = await strict.wait_for(1)
    check_received(got.data)
    await d2.wait_line("re-encoded for provider strict (7-bit)")
    assert await d2.stop() == 0


async def test_php_mail_with_a_long_line_through_the_running_daemon(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    strict: StrictUpstream,
) -> None:
    provider = {"id": "strict", "host": strict.host, "port": strict.port, "encryption": "none"}
    path = ops_config([provider])
    d = await daemon_proc(path).start()
    rc, out, err = await php_mail(path)
    assert (rc, out.strip()) == (0, "bool(true)"), err
    (got,) = await strict.wait_for(1)
    check_received(got.data)
    await d.wait_line("re-encoded for provider strict (7-bit)")
    assert await d.stop() == 0
