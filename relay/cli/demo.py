"""``sluice demo``: a quick start with nothing to configure.

Runs a catch-all SMTP sink on 127.0.0.1:2526 that prints what it receives,
and Sluice itself on 127.0.0.1:2525 relaying to it, with the admin page on
127.0.0.1:8025 and the spool under ``var/``. Send mail with any client, e.g.
``swaks --server 127.0.0.1:2525 --to you@example.com`` or Python's smtplib.
``--smtp-port``, ``--admin-port`` and ``--sink-port`` move them (8025 is also
Mailpit's and MailHog's default); 0 picks a free port, and the ports in use
are printed once Sluice is ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from relay.config import load
from relay.daemon import Daemon
from relay.errors import ListenError
from relay.message import extract_subject

__all__ = ["DemoPorts", "run_demo"]

log = logging.getLogger("sluice.demo")

DEMO_CONFIG = """\
# Written by `sluice demo`. Sluice listens on 127.0.0.1:{smtp} and relays to a
# local catch-all sink that prints every message it gets.
smtp:
  listen: ["127.0.0.1:{smtp}"]
spool:
  path: spool.sqlite3          # relative to this file
retry:
  first_delay: 10s
admin:
  listen: 127.0.0.1:{admin}
providers:
  - id: demo-sink
    caption: Local catch-all sink (prints mail)
    host: 127.0.0.1
    port: {sink}
    encryption: none
"""


@dataclass(frozen=True)
class DemoPorts:
    """Ports on 127.0.0.1 for the demo; 0 means "any free one"."""

    smtp: int = 2525
    admin: int = 8025
    sink: int = 2526


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


def _write_config(directory: Path, ports: DemoPorts, sink_port: int) -> Path:
    # Only this user reads the demo's spool (mail) and config.
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    config_path = directory / "demo.yaml"
    fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(DEMO_CONFIG.format(smtp=ports.smtp, admin=ports.admin, sink=sink_port))
    return config_path


async def run_demo(directory: Path, ports: DemoPorts = DemoPorts()) -> int:
    """Run the sink and Sluice until Ctrl-C or SIGTERM.

    Raises:
        ListenError: a port is taken (``setting`` names which: ``smtp.listen``,
            ``admin.listen`` or ``demo sink``).
    """
    loop = asyncio.get_running_loop()
    try:
        sink = await loop.create_server(
            lambda: SMTP(PrintingSink(), hostname="sink.localhost", loop=loop),
            host="127.0.0.1",
            port=ports.sink,
        )
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        raise ListenError("demo sink", f"127.0.0.1:{ports.sink}", reason) from exc
    sink_port = int(sink.sockets[0].getsockname()[1])
    log.info("demo sink listening on 127.0.0.1:%d", sink_port)
    try:
        config_path = await asyncio.to_thread(_write_config, directory, ports, sink_port)
        daemon = Daemon(load(config_path), config_path=config_path)
        serving = asyncio.create_task(daemon.serve(), name="demo-daemon")
        ready = asyncio.create_task(daemon.ready.wait(), name="demo-ready")
        await asyncio.wait({serving, ready}, return_when=asyncio.FIRST_COMPLETED)
        if ready.done() and daemon.listener is not None:
            smtp = daemon.listener.addresses[0]
            admin = f"http://{daemon.admin.address}/" if daemon.admin else "off"
            print(
                f"Sluice demo: send mail to {smtp.host}:{smtp.port}; it is printed here by "
                f"the sink (127.0.0.1:{sink_port}).\nAdmin page: {admin}\n"
                f"Config: {config_path}; press Ctrl-C to stop.",
                flush=True,
            )
        else:
            ready.cancel()
        await serving
    finally:
        sink.close()
        await sink.wait_closed()
    return 0
