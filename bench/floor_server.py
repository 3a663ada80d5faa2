"""The accept path's floor: the least SMTP a relay can speak, in front of Sluice's real spool.

``python -m bench accept-only --floor`` runs this beside Sluice on the same workloads.
It answers: of what Sluice's accept side costs per message, how much is the part
every Python relay pays (the event loop, the socket system calls, the commit on
the spool's writer thread with its fsync) and how much is the SMTP layer above it
(aiosmtpd's dispatch and Sluice's own checks, Received header and log line)?

What it does per message is what ``smtp-source`` needs and no more: a task per
connection reads lines from a ``StreamReader``; EHLO/HELO, MAIL, RCPT and RSET
get a fixed ``250``; DATA reads up to the final dot; the message goes through
``Spool.enqueue`` (the same ``NewMessage``, group commit, writer thread and
fsync as Sluice); then ``250`` with the queue ID. It checks nothing, unstuffs
no dots and adds only a fixed Received line: it is a measuring stick, never a
relay. Its event loop is uvloop, as the daemon's.

Run: ``python -m bench.floor_server SPOOL_FILE``; it prints ``listening PORT``,
serves on 127.0.0.1 until SIGTERM, then prints ``stored N``: the recipients its
spool holds (one per message from ``smtp-source``).
"""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time

from relay.runner import run_fast
from relay.store.queue import NewMessage, new_queue_id
from relay.store.spool import Spool

__all__ = ["serve"]

_EHLO = b"250-floor\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 209715200\r\n"


class _Floor:
    def __init__(self, spool: Spool) -> None:
        self.spool = spool
        self.rng = random.Random()

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 floor ESMTP\r\n")
        sender, recipients = "", list[str]()
        try:
            while line := await reader.readline():
                verb = line[:4].upper()
                if verb == b"MAIL":
                    sender, recipients = _path(line), []
                    writer.write(b"250 2.1.0 Ok\r\n")
                elif verb == b"RCPT":
                    recipients.append(_path(line))
                    writer.write(b"250 2.1.5 Ok\r\n")
                elif verb == b"DATA":
                    writer.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    body = await reader.readuntil(b"\r\n.\r\n")
                    queue_id = await self.store(sender, recipients, body[:-3])
                    writer.write(b"250 2.0.0 Ok: queued as " + queue_id.encode() + b"\r\n")
                elif verb == b"QUIT":
                    writer.write(b"221 2.0.0 Bye\r\n")
                    break
                elif verb == b"EHLO":
                    writer.write(_EHLO)
                else:  # HELO, RSET, NOOP
                    writer.write(b"250 Ok\r\n")
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def store(self, sender: str, recipients: list[str], body: bytes) -> str:
        now = time.time()
        queue_id = new_queue_id(now, self.rng)
        await self.spool.enqueue(
            NewMessage(
                queue_id=queue_id,
                sender=sender,
                recipients=recipients,
                data=b"Received: from floor by floor; fixed\r\n" + body,
                subject="",
                received_at=now,
                client="127.0.0.1",
                helo="floor",
                crlf_only=True,
            )
        )
        return queue_id


def _path(line: bytes) -> str:
    start, end = line.find(b"<"), line.find(b">")
    return line[start + 1 : end].decode("utf-8", "surrogateescape") if 0 <= start < end else ""


async def serve(spool_file: str) -> int:
    """Serve on an ephemeral loopback port until SIGTERM."""
    spool = await Spool.open(spool_file)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    server = await asyncio.start_server(
        _Floor(spool).session, "127.0.0.1", 0, backlog=1024, limit=1 << 24
    )
    port = server.sockets[0].getsockname()[1]
    print(f"listening {port}", flush=True)
    await stop.wait()
    server.close()
    stored = sum((await spool.counts_by_status()).values())
    print(f"stored {stored}", flush=True)
    await spool.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(run_fast(serve(sys.argv[1])))
