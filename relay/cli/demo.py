"""``sluice demo``: a quick start with nothing to configure.

Runs a catch-all SMTP sink on 127.0.0.1:2526 that prints what it receives,
and Sluice itself on 127.0.0.1:2525 relaying to it, with the admin page on
127.0.0.1:8025 and the spool under ``var/``. Send mail with any client, e.g.
``swaks --server 127.0.0.1:2525 --to you@example.com`` or Python's smtplib.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config import load
from relay.daemon import Daemon
from relay.message import extract_subject

__all__ = ["run_demo"]

log = logging.getLogger("sluice.demo")

SINK_PORT = 2526

DEMO_CONFIG = """\
# Written by `sluice demo`. Sluice listens on 127.0.0.1:2525 and relays to a
# local catch-all sink that prints every message it gets.
smtp:
  listen: ["127.0.0.1:2525"]
spool:
  path: spool.sqlite3          # relative to this file
retry:
  first_delay: 10s
admin:
  listen: 127.0.0.1:8025
providers:
  - id: demo-sink
    caption: Local catch-all sink (prints mail)
    host: 127.0.0.1
    port: {port}
    encryption: none
"""


class PrintingSink:
    """aiosmtpd handler that accepts everything and prints a summary."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        data = envelope.original_content or b""
        print(
            f"[sink] from=<{envelope.mail_from}> to={envelope.rcpt_tos} "
            f"size={len(data)} subject={extract_subject(data)!r}",
            flush=True,
        )
        return "250 2.0.0 OK (sink)"


def _write_config(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / "demo.yaml"
    config_path.write_text(DEMO_CONFIG.format(port=SINK_PORT), encoding="utf-8")
    return config_path


async def run_demo(directory: Path) -> int:
    config_path = await asyncio.to_thread(_write_config, directory)
    loop = asyncio.get_running_loop()
    sink = await loop.create_server(
        lambda: SMTP(PrintingSink(), hostname="sink.localhost", loop=loop),
        host="127.0.0.1",
        port=SINK_PORT,
    )
    log.info("demo sink listening on 127.0.0.1:%d", SINK_PORT)
    try:
        daemon = Daemon(load(config_path), config_path=config_path)
        print(
            "Sluice demo: send mail to 127.0.0.1:2525; it is printed here by the sink.\n"
            f"Config: {config_path}; press Ctrl-C to stop.",
            flush=True,
        )
        await daemon.serve()
    finally:
        sink.close()
        await sink.wait_closed()
    return 0
