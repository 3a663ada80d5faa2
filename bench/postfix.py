"""A private, loopback-only Postfix instance used as the reference relay.

Everything lives in a temporary directory: its own ``config_directory``,
``queue_directory`` and ``data_directory``; ``inet_interfaces`` is loopback,
``relayhost`` is the bench sink, and nothing else (no local delivery, no DNS).
It is started with ``postfix -c DIR start`` and stopped with ``postfix -c DIR
stop``; the system's own ``/etc/postfix`` instance is never read or touched.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from pathlib import Path

__all__ = ["PostfixInstance", "postfix_available"]

_MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def postfix_available() -> bool:
    return shutil.which("postfix") is not None and Path("/usr/lib/postfix/sbin/master").exists()


class PostfixInstance:
    """``async with PostfixInstance(dir, port, sink_port) as pf:`` runs Postfix on loopback."""

    def __init__(self, base: Path, port: int, sink_port: int, *, concurrency: int = 20) -> None:
        self.base = base
        self.port = port
        self.sink_port = sink_port
        self.concurrency = concurrency
        self.config_dir = base / "etc"
        self.queue_dir = base / "spool"
        self.data_dir = base / "data"

    def _main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "config_directory": self.config_dir,
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.bench.invalid",
            "mydomain": "bench.invalid",
            "myorigin": "$myhostname",
            "mydestination": "",
            "local_transport": "error:local delivery is disabled",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{self.sink_port}",
            "smtp_host_lookup": "native",
            "disable_dns_lookups": "yes",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "default_destination_concurrency_limit": str(self.concurrency),
            "default_process_limit": "200",
            "maillog_file": self.base / "postfix.log",
            "maillog_file_prefixes": self.base,
            "message_size_limit": "209715200",
            "biff": "no",
            "alias_maps": "",
            "alias_database": "",
            "smtputf8_enable": "no",
        }
        return "".join(f"{k} = {v}\n" for k, v in settings.items())

    def _postfix(self, *args: str) -> None:
        subprocess.run(
            ["postfix", "-c", str(self.config_dir), *args],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def master_pid(self) -> int:
        return int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])

    async def __aenter__(self) -> PostfixInstance:
        self.config_dir.mkdir(parents=True)
        self.data_dir.mkdir(parents=True)
        self.queue_dir.mkdir(parents=True)
        (self.config_dir / "main.cf").write_text(self._main_cf())
        (self.config_dir / "master.cf").write_text(_MASTER_CF.format(port=f"127.0.0.1:{self.port}"))
        shutil.chown(self.data_dir, "postfix")
        # Postfix's daemons drop to the postfix user, who must reach data_directory;
        # temporary directories are created 0700.
        for d in (self.base, self.base.parent):
            d.chmod(0o755)
        try:
            await asyncio.to_thread(self._postfix, "start")
        except subprocess.CalledProcessError as exc:
            detail = (exc.stdout + exc.stderr).decode(errors="replace")
            raise RuntimeError(f"postfix start failed: {detail}") from exc
        await _wait_for_port(self.port, within=20)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._postfix, "stop")
        # master exits asynchronously; wait until its pid file is gone.
        pid_file = self.queue_dir / "pid" / "master.pid"
        for _ in range(200):  # at most 20 s
            if not await asyncio.to_thread(pid_file.exists):
                break
            await asyncio.sleep(0.1)


async def _wait_for_port(port: int, *, within: float) -> None:
    deadline = time.monotonic() + within
    while True:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            await reader.readline()
            writer.write(b"QUIT\r\n")
            writer.close()
            await writer.wait_closed()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
