"""The parts of aiosmtpd that ``relay.inbound.aiosmtpd_seams`` relies on are still there.

RelaySMTP overrides the members of aiosmtpd's listed in ``_OVERRIDES`` (``__init__``,
``_handle_client``, ``connection_lost``, ``push``, ``_getaddr``, ``smtp_MAIL``, ``smtp_DATA``
and the AUTH ones) and uses more (``_set_post_data_state``,
``_reader``, ``_writer``, the reader's ``_buffer``, the cancellation of the
session's task on a lost connection); the module's docstring says why no
public hook does. An aiosmtpd upgrade that renames, re-signs or stops calling
one of them must fail here loudly, by name, not as a puzzling failure
elsewhere; and an aiosmtpd outside the range they were checked against fails
``test_installed_aiosmtpd_is_in_the_range_the_seams_were_checked_against``.
Each check also has a test of the behaviour through a socket.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import socket
import tomllib
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from relay.inbound import aiosmtpd_seams
from relay.inbound.aiosmtpd_seams import CHECKED_AGAINST, PINNED, RelaySMTP
from relay.inbound.listener import RelayHandler
from tests.conftest import SluiceFactory, eventually, provider_for, raw_session
from tests.inbound.test_listener import HELLO
from tests.upstream import TestUpstream


def _params(func: object) -> list[str]:
    return list(inspect.signature(func).parameters)  # type: ignore[arg-type]


def _source(name: str) -> str:
    return inspect.getsource(getattr(SMTP, name))


def test_getaddr_is_what_mail_rcpt_and_vrfy_parse_the_path_with() -> None:
    assert _params(SMTP._getaddr) == ["self", "arg"]
    assert _params(RelaySMTP._getaddr) == ["self", "arg"]
    for command, hook in (("smtp_MAIL", "'MAIL'"), ("smtp_RCPT", "'RCPT'")):
        source = _source(command)
        # aiosmtpd parses with _getaddr, then hands the address to our hook.
        assert "self._getaddr(arg)" in source, command
        assert source.index("self._getaddr(arg)") < source.index(f"_call_handler_hook({hook}")
    assert "self._getaddr(arg)" in _source("smtp_VRFY")


def test_handle_client_sends_the_greeting_and_is_started_per_connection() -> None:
    assert inspect.iscoroutinefunction(SMTP._handle_client)
    assert _params(SMTP._handle_client) == ["self"]
    assert "self._handle_client()" in _source("connection_made")
    # The greeting is its first reply: overriding it is the only way to answer first.
    source = _source("_handle_client")
    assert source.index("await self.push('220") < source.index("while self.transport")


def test_post_data_state_resets_the_envelope() -> None:
    assert _params(SMTP._set_post_data_state) == ["self"]
    assert "self.envelope = self._create_envelope()" in _source("_set_post_data_state")


def test_smtp_data_replaces_aiosmtpd_s_with_the_same_checks_in_the_same_order() -> None:
    """RelaySMTP.smtp_DATA does aiosmtpd's checks before its 354, then reads the body itself."""
    checks = [
        "await self.check_helo_needed()",
        'await self.check_auth_needed("DATA")',
        "if not self.envelope.rcpt_tos:",
        "if arg:",
    ]
    theirs = _source("smtp_DATA").replace("'", '"')
    ours = inspect.getsource(RelaySMTP.smtp_DATA)
    for source, start in ((theirs, 'await self.push("354'), (ours, "self.push(R_START_DATA)")):
        positions = [source.index(check) for check in [*checks, start]]
        assert positions == sorted(positions), source
    assert "354 End data with <CR><LF>.<CR><LF>" in theirs
    assert aiosmtpd_seams.R_START_DATA == "354 End data with <CR><LF>.<CR><LF>"
    # The same HELP text: @syntax sets the attribute aiosmtpd's HELP reads.
    assert RelaySMTP.smtp_DATA.__smtp_syntax__ == SMTP.smtp_DATA.__smtp_syntax__  # type: ignore[attr-defined]
    # aiosmtpd hands the body to handle_DATA; ours goes to the handler's accept.
    assert '_call_handler_hook("DATA")' in theirs
    assert "self._relay.accept(" in ours


def test_smtp_mail_s_own_size_check_is_off_when_the_limit_is_zero() -> None:
    """Why RelaySMTP.smtp_MAIL may zero data_size_limit: aiosmtpd skips its SIZE= check then.

    The check comes before the MAIL hook, words its refusal without an
    enhanced code, and is the only use of the limit in aiosmtpd's MAIL.
    """
    source = _source("smtp_MAIL")
    check = "elif self.data_size_limit and int(size) > self.data_size_limit:"
    assert check in source
    assert source.count("data_size_limit") == 2
    assert source.index(check) < source.index("_call_handler_hook('MAIL'")
    assert "552 Error: message size exceeds fixed maximum message " in source
    assert RelaySMTP.smtp_MAIL.__smtp_syntax__ == SMTP.smtp_MAIL.__smtp_syntax__  # type: ignore[attr-defined]
    assert (
        RelaySMTP.smtp_MAIL.__smtp_syntax_extended__  # type: ignore[attr-defined]
        == SMTP.smtp_MAIL.__smtp_syntax_extended__  # type: ignore[attr-defined]
    )


def test_commands_are_read_one_line_at_a_time_so_pipelining_is_safe() -> None:
    """Why RelayHandler.handle_EHLO may offer PIPELINING: one command read, then answered."""
    source = _source("_handle_client")
    read = source.index("line: bytes = await self._reader.readuntil()")
    assert read < source.index("await method(arg)")


def test_reader_and_writer_are_the_connection_streams() -> None:
    source = _source("_cb_client_connected")
    assert "self._reader = reader" in source and "self._writer = writer" in source
    # DATA is read from _reader with the reader's own limit (the line length limit).
    assert "limit=self.line_length_limit" in inspect.getsource(SMTP.__init__)


async def test_through_a_socket_each_seam_still_does_its_part(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    async with sluice(
        [provider_for(upstream)],
        # connection_wait 0: one too many is answered at once, not after a wait.
        smtp={"max_connections": 1, "allowed_networks": ["127.0.0.1/32"], "connection_wait": 0},
    ) as s:
        # _handle_client: a refused peer hears 554 instead of a greeting...
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", s.port, local_addr=("127.0.0.2", 0)
        )
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"554 5.7.1")
        writer.close()
        replies = await raw_session(
            s.port,
            [
                b"EHLO x\r\n",
                b"MAIL FROM:<\r\n",  # _getaddr: no IndexError, a 501
                b"MAIL FROM:<a@example.org> SIZE=10\r\n",  # _getaddr: the parameters split off
                b"RCPT TO:<b@example.net>\r\n",
                b"DATA\r\n",
                HELLO + b".\r\n",  # _reader/_writer: DATA read and answered
                b"MAIL FROM:<c@example.org>\r\n",  # _set_post_data_state: not "nested MAIL"
                b"QUIT\r\n",
            ],
        )
        # ... and one client too many hears 421 (max_connections 1, one session open).
        # (raw_session's session ends just after its 221: poll for the free slot.)
        held: list[asyncio.StreamWriter] = []

        async def greeted() -> bool:
            reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
            line = await asyncio.wait_for(reader.readline(), 10)
            (held if line.startswith(b"220") else []).append(writer)
            if not held:
                writer.close()
            return bool(held)

        await eventually(greeted, within=15)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        second = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        held[0].close()
        (got,) = await upstream.wait_for(1)
    assert replies[0].startswith("220")
    assert replies[2].startswith("501 5.1.7"), replies
    assert replies[3].startswith("250"), replies
    assert "queued as" in replies[6], replies
    assert replies[7].startswith("250 2.1.0"), replies
    assert got.sender == "a@example.org"
    assert second.startswith(b"421 4.7.0"), second


#: attributes of RelaySMTP's own (not aiosmtpd's)
_OURS = {
    "_relay",
    "_gate",
    "_open",
    "_on_lost",
    "task",
    "_held_lines",
    "between_messages",
    "_smtp_auth",
    "_auth_needed",
    "_implicit_tls",
}
#: per-connection objects, equal in kind but never in identity
_PER_CONNECTION = {"_stream_reader_wr", "_source_traceback", "_over_ssl", "_closed"}


def _pair(loop: asyncio.AbstractEventLoop, handler: RelayHandler) -> tuple[SMTP, RelaySMTP]:
    """An unmodified aiosmtpd instance and ours, with the options the listener passes."""
    options = dict(
        hostname="mx.example", ident="Sluice", data_size_limit=12345, timeout=42.0, loop=loop
    )
    plain = SMTP(handler, enable_SMTPUTF8=True, decode_data=False, **options)  # type: ignore[arg-type]
    ours = RelaySMTP(
        handler,
        gate=lambda ip, open_sessions: None,
        sessions=set(),
        tables=RelaySMTP.tables(handler),
        **options,  # type: ignore[arg-type]
    )
    return plain, ours


def _unbound(table: dict[str, object]) -> dict[str, object]:
    return {k: getattr(v, "__func__", v) for k, v in table.items()}


async def test_init_matches_aiosmtpd() -> None:
    """RelaySMTP.__init__ (tables built once) leaves the state aiosmtpd's own would.

    If an aiosmtpd upgrade adds, drops or changes an attribute, a command, an
    AUTH mechanism or the EHLO hook's form, this fails by name.
    """
    loop = asyncio.get_running_loop()
    handler = RelayHandler(None, lambda: None, hostname="mx.example")  # type: ignore[arg-type,return-value]
    plain, ours = _pair(loop, handler)
    mine, theirs = vars(ours), vars(plain)
    assert set(mine) - _OURS == set(theirs), "aiosmtpd's SMTP.__init__ sets other attributes"
    # The introspected tables: the same names, bound to the right objects.
    assert _unbound(mine["_smtp_methods"]) == {
        k: getattr(RelaySMTP, f"smtp_{k}") for k in theirs["_smtp_methods"]
    }
    assert all(m.__self__ is ours for m in mine["_smtp_methods"].values())
    assert set(theirs["_smtp_methods"]) >= {"EHLO", "MAIL", "RCPT", "DATA", "AUTH", "QUIT"}
    # The mechanisms are aiosmtpd's, each wrapped by RelaySMTP (its check runs off the loop).
    assert {k: (v.method.__func__, v.is_builtin) for k, v in mine["_auth_methods"].items()} == {
        k: (getattr(RelaySMTP, f"auth_{k}"), v.is_builtin)
        for k, v in theirs["_auth_methods"].items()
    }
    assert set(mine["_auth_methods"]) == {"LOGIN", "PLAIN"}
    assert all(v.method.__self__ is ours for v in mine["_auth_methods"].values())
    assert mine["_handle_hooks"] == theirs["_handle_hooks"]
    assert set(mine["_handle_hooks"]) >= {"EHLO", "MAIL", "RCPT", "exception"}
    assert mine["_ehlo_hook_ver"] == theirs["_ehlo_hook_ver"] == "new"
    # Everything else: equal values, or at least the same kind of object.
    tables = {"_smtp_methods", "_auth_methods", "_handle_hooks"}
    for name in set(theirs) - tables:
        a, b = mine[name], theirs[name]
        if name in _PER_CONNECTION or type(a).__module__.startswith("asyncio"):
            assert type(a) is type(b), name
        elif inspect.ismethod(b):
            assert a.__func__ is b.__func__, name
        else:
            assert a == b, f"{name}: ours {a!r}, aiosmtpd's {b!r}"
    # The reader's line limit is aiosmtpd's (DATA and commands are read with it).
    assert ours._stream_reader._limit == plain._stream_reader._limit  # type: ignore[attr-defined]
    # The options RelaySMTP fixes are still aiosmtpd's defaults.
    defaults = {k: p.default for k, p in inspect.signature(SMTP.__init__).parameters.items()}
    assert {
        k: defaults[k]
        for k in (
            "tls_context",
            "require_starttls",
            "auth_required",
            "auth_require_tls",
            "auth_exclude_mechanism",
            "auth_callback",
            "command_call_limit",
            "authenticator",
            "proxy_protocol_timeout",
        )
    } == {
        "tls_context": None,
        "require_starttls": False,
        "auth_required": False,
        "auth_require_tls": True,
        "auth_exclude_mechanism": None,
        "auth_callback": None,
        "command_call_limit": None,
        "authenticator": None,
        "proxy_protocol_timeout": None,
    }


async def test_tables_are_built_once_per_listener_not_per_connection(
    sluice: SluiceFactory, upstream: TestUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection costs no introspection: EHLO/AUTH/HELP still answer as aiosmtpd's."""
    calls: list[object] = []
    real = inspect.getmembers

    def counting(obj: object, predicate: Any = None) -> list[tuple[str, Any]]:
        calls.append(obj)
        return real(obj, predicate)

    async with sluice([provider_for(upstream)]) as s:
        monkeypatch.setattr(inspect, "getmembers", counting)
        replies = await raw_session(
            s.port, [b"EHLO x\r\n", b"HELP\r\n", b"AUTH CRAM-MD5\r\n", b"QUIT\r\n"]
        )
        again = await raw_session(s.port, [b"EHLO y\r\n", b"QUIT\r\n"])
        monkeypatch.undo()
    assert calls == []
    assert replies[0].startswith("220") and "250-PIPELINING" in replies[1]
    assert "DATA" in replies[2] and "MAIL" in replies[2], replies[2]
    # aiosmtpd's answer to AUTH without TLS (auth_require_tls, its default).
    assert replies[3].startswith("538 5.7.11"), replies[3]
    assert "250-PIPELINING" in again[1]


def test_push_writes_one_reply_line_and_drains() -> None:
    """What RelaySMTP.push replaces: one ``write`` of the line plus CRLF, then ``drain``."""
    assert _params(SMTP.push) == ["self", "status"]
    source = _source("push")
    assert 'self._writer.write(response + b"\\r\\n")' in source
    assert source.index("self._writer.write") < source.index("await self._writer.drain()")
    # Every reply aiosmtpd sends goes through push (EHLO's lines one call each).
    assert "await self.push(r)" in _source("smtp_EHLO")


async def test_a_multi_line_reply_leaves_in_one_write(
    sluice: SluiceFactory, upstream: TestUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EHLO's reply is one write to the socket; its lines and their order are aiosmtpd's."""
    writes: list[bytes] = []
    real = asyncio.StreamWriter.write

    def counting(self: asyncio.StreamWriter, data: Any) -> None:
        if isinstance(self._protocol, RelaySMTP):  # type: ignore[attr-defined]
            writes.append(bytes(data))
        real(self, data)

    async with sluice([provider_for(upstream)]) as s:
        monkeypatch.setattr(asyncio.StreamWriter, "write", counting)
        replies = await raw_session(s.port, [b"EHLO x\r\n", b"NOOP\r\n", b"QUIT\r\n"])
        monkeypatch.undo()
    ehlo = [w for w in writes if w.startswith(b"250-")]
    assert len(ehlo) == 1, writes
    lines = ehlo[0].split(b"\r\n")[:-1]
    assert len(lines) >= 4 and all(line.startswith(b"250-") for line in lines[:-1])
    assert lines[-1].startswith(b"250 ") and ehlo[0].endswith(b"\r\n")
    assert b"250-PIPELINING" in lines and b"250-SMTPUTF8" in lines
    assert replies[1] == ehlo[0].decode().strip()
    # Greeting, EHLO, NOOP, QUIT: four replies, four writes.
    assert len(writes) == 4 and all(w.endswith(b"\r\n") for w in writes), writes


async def test_the_input_buffer_push_looks_at_is_the_stream_readers() -> None:
    """push holds a 250 while a whole command waits in ``StreamReader._buffer``."""
    reader = asyncio.StreamReader()
    reader.feed_data(b"RCPT TO:<a@example.net>\r\n")
    assert isinstance(reader._buffer, bytearray)  # type: ignore[attr-defined]
    assert b"\n" in reader._buffer  # type: ignore[attr-defined]
    assert "self._reader = reader" in _source("_cb_client_connected")


async def test_replies_to_a_pipelined_group_leave_together_in_order(
    sluice: SluiceFactory, upstream: TestUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 2920: the replies to MAIL/RCPT/RCPT/DATA sent at once come back in one or two writes.

    A refusal is written at once with what was held before it; 354 too (the
    client waits for it); the 250 for the message waits for the QUIT sent
    with its final dot, and leaves with the 221.
    """
    writes: list[bytes] = []
    real = asyncio.StreamWriter.write

    def counting(self: asyncio.StreamWriter, data: Any) -> None:
        if isinstance(self._protocol, RelaySMTP):  # type: ignore[attr-defined]
            writes.append(bytes(data))
        real(self, data)

    async with sluice([provider_for(upstream)]) as s:
        monkeypatch.setattr(asyncio.StreamWriter, "write", counting)
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)

        async def replies(n: int) -> list[bytes]:
            got: list[bytes] = []
            while len(got) < n:
                line = await asyncio.wait_for(reader.readline(), 10)
                assert line, f"closed after {got}"
                if line[3:4] == b" ":
                    got.append(line)
            return got

        await replies(1)
        writer.write(b"EHLO x\r\n")
        await replies(1)
        writer.write(
            b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\n"
            b"RCPT TO:<not-an-address>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
        )
        group = await replies(5)
        writer.write(HELLO + b".\r\nQUIT\r\n")
        end = await replies(2)
        writer.close()
        monkeypatch.undo()
        (got,) = await upstream.wait_for(1)
    codes = [r[:3] for r in group + end]
    assert codes[:2] == [b"250", b"250"] and codes[2].startswith(b"5"), group
    assert codes[3:] == [b"250", b"354", b"250", b"221"], group + end
    assert got.recipients == ["b@example.net", "c@example.net"]
    # Greeting, EHLO, then [250 250 5xx], [250 354], [250 221]: five writes, not nine.
    assert [w.count(b"\r\n") for w in writes[2:]] == [3, 2, 2], writes
    assert b"".join(writes[2:]) == b"".join(group + end)


#: every member of aiosmtpd's SMTP that RelaySMTP replaces
_OVERRIDES = [
    "__init__",
    "_getaddr",
    "_handle_client",
    "connection_lost",
    "push",
    "smtp_MAIL",
    "smtp_DATA",
    "_authenticate",
    "auth_PLAIN",
    "auth_LOGIN",
]


def test_the_mechanisms_hand_their_credentials_to_authenticate_last() -> None:
    """Why RelaySMTP may check passwords after aiosmtpd's auth_PLAIN/auth_LOGIN return."""
    for mech in ("PLAIN", "LOGIN"):
        source = _source(f"auth_{mech}")
        assert source.rstrip().endswith(
            f'return self._authenticate("{mech}", LoginPassword(login, password))'
        ), mech
    assert _params(SMTP._authenticate) == ["self", "mechanism", "auth_data"]
    # smtp_AUTH sends the result's message, and fills the session from a success.
    auth = _source("smtp_AUTH")
    assert "self.session.auth_data = _auth_data" in auth
    assert "status = auth_result.message" in auth


@pytest.mark.parametrize("name", _OVERRIDES)
def test_the_overrides_say_what_they_change(name: str) -> None:
    doc = inspect.getdoc(getattr(RelaySMTP, name)) or ""
    assert doc, f"RelaySMTP.{name} must say which aiosmtpd behaviour it changes"
    # ... against which release, and the module's list names it.
    assert f"aiosmtpd {CHECKED_AGAINST}" in doc, name
    assert f"``{name}``" in (aiosmtpd_seams.__doc__ or "")
    assert name in (inspect.getdoc(RelaySMTP) or "")


def test_the_list_of_overrides_is_complete() -> None:
    """Every member RelaySMTP redefines over aiosmtpd's SMTP is one of the listed overrides."""
    replaced = [
        name
        for name in vars(RelaySMTP)
        if hasattr(SMTP, name) and (name == "__init__" or not name.startswith("__"))
    ]
    assert sorted(replaced) == sorted(_OVERRIDES)


def _aiosmtpd_pin() -> SpecifierSet:
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    (pin,) = [
        Requirement(r).specifier
        for r in pyproject["project"]["dependencies"]
        if Requirement(r).name == "aiosmtpd"
    ]
    return pin


def test_the_pin_is_the_range_the_seams_were_checked_against() -> None:
    """Widening the pin in pyproject.toml means reading the overrides again, then PINNED."""
    assert _aiosmtpd_pin() == SpecifierSet(PINNED)
    assert Version(CHECKED_AGAINST) in SpecifierSet(PINNED)


@pytest.mark.parametrize(
    ("version", "inside"), [("1.4.6", True), ("1.4.9", True), ("1.4.5", False), ("1.5.0", False)]
)
def test_the_range_check_refuses_a_release_outside_it(version: str, inside: bool) -> None:
    """The check below can fail: releases outside the pin are outside it."""
    assert (Version(version) in SpecifierSet(PINNED)) is inside


def test_installed_aiosmtpd_is_in_the_range_the_seams_were_checked_against() -> None:
    installed = importlib.metadata.version("aiosmtpd")
    assert Version(installed) in SpecifierSet(PINNED), (
        f"aiosmtpd {installed} is installed; relay/inbound/aiosmtpd_seams.py was checked "
        f"against {CHECKED_AGAINST} ({PINNED}): read each override against the new source"
    )


def test_aiosmtpd_resolves_the_hostname_per_connection_unless_given_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Why RelaySMTP always takes ``hostname``: aiosmtpd's __init__ calls getfqdn() otherwise."""
    source = inspect.getsource(SMTP.__init__)
    assert "socket.getfqdn()" in source
    assert source.index("if hostname:") < source.index("socket.getfqdn()")


async def test_a_session_never_looks_its_hostname_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def lookup(name: str = "") -> str:
        raise AssertionError("getfqdn() called for a session")

    monkeypatch.setattr(socket, "getfqdn", lookup)
    handler = RelayHandler(None, lambda: None, hostname="mx.example")  # type: ignore[arg-type,return-value]
    _, ours = _pair(asyncio.get_running_loop(), handler)
    assert ours.hostname == "mx.example"


def test_a_lost_connection_cancels_the_session_task() -> None:
    """smtp_DATA's CancelledError branch: how aiosmtpd ends a session whose client left."""
    for name in ("connection_lost", "eof_received"):
        assert "self._handler_coroutine.cancel()" in _source(name), name
    assert "self._handler_coroutine = self.loop.create_task(" in _source("connection_made")
    # aiosmtpd's own smtp_DATA closes the writer and re-raises, as ours does.
    data = _source("smtp_DATA")
    cancelled = data.index("except asyncio.CancelledError:")
    assert data.index("self._writer.close()", cancelled) < data.index("raise", cancelled)


async def test_a_client_leaving_during_data_ends_its_session(
    sluice: SluiceFactory, upstream: TestUpstream
) -> None:
    """The session task is cancelled, leaves the open set, and the listener serves on."""
    async with sluice([provider_for(upstream)]) as s:
        assert s.daemon.listener is not None
        open_sessions = s.daemon.listener.sessions.open
        reader, writer = await asyncio.open_connection("127.0.0.1", s.port)
        writer.write(
            b"EHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
            b"Subject: half\r\n\r\nhalf a mess"
        )
        replies = b""
        while b"354" not in replies:
            replies += await asyncio.wait_for(reader.read(1024), 10)
        (session,) = open_sessions
        task = session.task
        assert task is not None
        writer.transport.abort()
        await eventually(lambda: not open_sessions and task.done())
        assert task.cancelled()
        after = await raw_session(s.port, [b"EHLO y\r\n", b"QUIT\r\n"])
    assert after[1].startswith("250"), after
