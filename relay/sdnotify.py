"""A tiny sd_notify(3) client: tell systemd we are ready, reloading or stopping.

The protocol is the API (systemd says so itself): one datagram of
``KEY=value`` lines sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``;
a leading ``@`` names a socket in the abstract namespace. Without the
variable every call is a no-op, so the daemon runs the same outside systemd.

The socket is non-blocking: a full or vanished notify socket must never stall
the event loop or stop mail, so a failed send is logged and forgotten.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier", "monotonic_usec"]

log = logging.getLogger("sluice.sdnotify")


def monotonic_usec() -> int:
    """``CLOCK_MONOTONIC`` in microseconds, as ``MONOTONIC_USEC=`` wants it."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _address(value: str) -> str | bytes | None:
    if value.startswith("@"):
        # Abstract namespace: the name starts with a NUL byte, not "@".
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None  # e.g. "vsock:..." (not something a mail relay meets)


class Notifier:
    """Sends notify messages to one address; use ``Notifier.from_env()``.

    ``Notifier(None)`` is the disabled notifier: ``enabled`` is false and
    ``send`` does nothing.
    """

    def __init__(self, address: str | None) -> None:
        self.address = address
        self._target = _address(address) if address else None
        if address and self._target is None:
            log.warning("NOTIFY_SOCKET=%s is not a unix socket path; not notifying", address)
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None)

    @property
    def enabled(self) -> bool:
        return self._target is not None

    def send(self, **fields: object) -> bool:
        """Send one datagram, e.g. ``send(READY=1, STATUS="accepting mail")``.

        Returns whether it was sent. Newlines in values are replaced, since
        each line is one field.
        """
        if self._target is None:
            return False
        payload = "\n".join(
            f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items()
        )
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto(payload.encode(), self._target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send(READY=1, **({"STATUS": status} if status else {}))

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd match this reload to its own request;
        # without it `systemctl reload` may return early or hang.
        return self.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec())

    def stopping(self, status: str | None = None) -> bool:
        return self.send(STOPPING=1, **({"STATUS": status} if status else {}))

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
