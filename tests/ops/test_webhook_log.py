"""A webhook POST is not an INFO line of its own in the daemon's log (only at debug).

httpx logs every request at INFO ("HTTP Request: POST URL ..."): with
webhooks on, one line per event filled the journal. A real daemon process,
a real upstream and a real webhook receiver; the log is the daemon's stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import provider_for, smtp_send
from tests.daemon_proc import DaemonProcess
from tests.upstream import TestUpstream
from tests.webhook_receiver import WebhookReceiver

MSG = b"From: a@example.org\r\nTo: b@example.net\r\nSubject: hook\r\n\r\nbody\r\n"


@pytest.mark.parametrize(("level", "shown"), [("info", False), ("debug", True)])
async def test_webhook_posts_are_logged_at_debug_only(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
    level: str,
    shown: bool,
) -> None:
    rx = await WebhookReceiver().start()
    try:
        notify = {"webhooks": [{"url": rx.url, "secret": "s3cret-key", "events": ["sent"]}]}
        path = ops_config([provider_for(upstream)], notify=notify, log={"level": level})
        daemon = await daemon_proc(path).start()
        await smtp_send(daemon.port, "a@example.org", ["b@example.net"], MSG)
        await rx.wait_for(lambda hits: any(h.status == 200 for h in hits))
        # Stopped before reading: the whole log, the line after the last answer included.
        assert await daemon.stop() == 0
    finally:
        await rx.stop()
    requests = [line for line in daemon.output.splitlines() if "HTTP Request: POST" in line]
    assert bool(requests) is shown, daemon.output
