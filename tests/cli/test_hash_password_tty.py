"""``sluice admin hash-password`` at a real terminal: Ctrl-C and Ctrl-D end it at once.

README sends every new user to this command. The child gets a pseudo-terminal
as its controlling terminal (``getpass`` reads ``/dev/tty``), and the test
types into the master side what a user would: the terminal's line discipline
turns ``\\x03`` into SIGINT and ``\\x04`` into end of input, as at a console.
"""

from __future__ import annotations

import fcntl
import os
import select
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.daemon_proc import REPO

CTRL_C = b"\x03"
CTRL_D = b"\x04"


class Terminal:
    """A ``sluice admin hash-password`` child on a pty, and what it printed so far."""

    def __init__(self, master: int, proc: subprocess.Popen[bytes]) -> None:
        self.master = master
        self.proc = proc
        self.output = b""

    def read_until(self, text: bytes, within: float = 20.0) -> None:
        """Read the child's output until ``text`` shows, or fail at the deadline."""
        deadline = time.monotonic() + within
        while text not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} within {within:g}s; got {self.output!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                self._read_some()

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def exit_status(self, within: float = 5.0) -> int:
        """The child's exit status; fail if it is still running after ``within`` seconds."""
        deadline = time.monotonic() + within
        while (rc := self.proc.poll()) is None:
            left = deadline - time.monotonic()
            assert left > 0, f"still running {within:g}s later; output {self.output!r}"
            ready, _, _ = select.select([self.master], [], [], min(left, 0.05))
            if ready:
                self._read_some()
        self._drain()
        return rc

    def _read_some(self) -> None:
        try:
            self.output += os.read(self.master, 4096)
        except OSError:  # EIO: the child closed its side
            pass

    def _drain(self) -> None:
        while select.select([self.master], [], [], 0)[0]:
            before = len(self.output)
            self._read_some()
            if len(self.output) == before:
                return


def _take_terminal() -> None:
    """In the child, after setsid(): make its stdin (the pty) the controlling terminal."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


@contextmanager
def hash_password_at_a_terminal() -> Iterator[Terminal]:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay.cli", "admin", "hash-password"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=REPO,
        start_new_session=True,
        preexec_fn=_take_terminal,
    )
    os.close(slave)
    try:
        yield Terminal(master, proc)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        os.close(master)


def test_ctrl_c_at_the_first_prompt_exits_130_at_once() -> None:
    with hash_password_at_a_terminal() as term:
        term.read_until(b"New admin password: ")
        term.type(CTRL_C)
        assert term.exit_status() == 130
    assert b"Traceback" not in term.output


def test_ctrl_c_at_the_second_prompt_exits_130_at_once() -> None:
    with hash_password_at_a_terminal() as term:
        term.read_until(b"New admin password: ")
        term.type(b"s3cret-pw\r")
        term.read_until(b"Repeat it: ")
        term.type(CTRL_C)
        assert term.exit_status() == 130
    assert b"Traceback" not in term.output and b"s3cret-pw" not in term.output


def test_ctrl_d_says_no_password_was_entered() -> None:
    with hash_password_at_a_terminal() as term:
        term.read_until(b"New admin password: ")
        term.type(CTRL_D)
        assert term.exit_status() == os.EX_USAGE
    assert b"sluice: no password entered (end of input)" in term.output
    assert b"Traceback" not in term.output and b"EOFError" not in term.output


def test_a_password_typed_twice_prints_its_hash() -> None:
    with hash_password_at_a_terminal() as term:
        term.read_until(b"New admin password: ")
        term.type(b"s3cret-pw\r")
        term.read_until(b"Repeat it: ")
        term.type(b"s3cret-pw\r")
        term.read_until(b"$argon2id$")
        assert term.exit_status() == 0
    assert b"s3cret-pw" not in term.output  # not echoed
