"""relay/message.py ``stream_of``: the one rule for a message's stream, as a table."""

from __future__ import annotations

import pytest

from relay.message import HeaderBlock, stream_name, stream_of
from relay.model import Suppression, suppressed_for
from relay.operations.suppressions import check_scope

DEFAULT = ["X-Sluice-Stream", "List-Id"]

CASES = [
    # (header lines, headers asked for, stream)
    ("Subject: hi\r\n", DEFAULT, ""),
    ("X-Sluice-Stream: Weekly-News\r\n", DEFAULT, "weekly-news"),
    ("x-sluice-stream:   spaced out  \r\n", DEFAULT, "spaced out"),
    ("X-Sluice-Stream: folded\r\n part\r\n", DEFAULT, "folded part"),
    ("List-Id: Our News <News.Example.COM>\r\n", DEFAULT, "news.example.com"),
    ("List-Id: <bare.example.org>\r\n", DEFAULT, "bare.example.org"),
    ("List-Id: no brackets here\r\n", DEFAULT, "no brackets here"),
    # the first header of the list that the message has wins, whatever the order in it
    ("List-Id: <l.example>\r\nX-Sluice-Stream: S\r\n", DEFAULT, "s"),
    ("X-Sluice-Stream: S\r\nList-Id: <l.example>\r\n", ["List-Id", "X-Sluice-Stream"], "l.example"),
    # an empty value names no stream: the next header is asked
    ("X-Sluice-Stream:\r\nList-Id: <l.example>\r\n", DEFAULT, "l.example"),
    # only the headers asked for
    ("List-Id: <l.example>\r\n", ["X-Sluice-Stream"], ""),
    ("X-Campaign: Spring\r\n", ["X-Campaign"], "spring"),
    # a header named in the body is not a header
    ("Subject: x\r\n\r\nX-Sluice-Stream: body\r\n", DEFAULT, ""),
    ("X-Sluice-Stream: " + "A" * 300 + "\r\n", DEFAULT, "a" * 200),
]


@pytest.mark.parametrize(("lines", "headers", "stream"), CASES)
def test_stream_of(lines: str, headers: list[str], stream: str) -> None:
    data = ("From: a@example.com\r\n" + lines + "\r\nbody\r\n").encode()
    assert stream_of(HeaderBlock(data), headers) == stream


@pytest.mark.parametrize(
    ("typed", "name"),
    [
        ("Newsletter", "newsletter"),
        ("  Weekly News ", "weekly news"),
        ("", ""),
        ("B" * 250, "b" * 200),
    ],
)
def test_a_typed_stream_name_is_kept_as_a_message_names_it(typed: str, name: str) -> None:
    assert stream_name(typed) == name
    head = HeaderBlock(f"X-Sluice-Stream: {typed}\r\n\r\n".encode())
    assert stream_of(head, ["X-Sluice-Stream"]) == name


def test_a_scope_typed_in_any_case_suppresses_the_stream() -> None:
    stream = stream_of(HeaderBlock(b"List-Id: News <NEWSLETTER>\r\n\r\n"), ["List-Id"])
    typed = Suppression("a@example.org", check_scope(" Newsletter "), "manual", "", 0.0)
    assert typed.scope == "newsletter"
    assert set(suppressed_for([typed], stream)) == {"a@example.org"}
    # an entry stored with its case before scopes were normalised still applies
    legacy = Suppression("b@example.org", "NewsLetter", "manual", "", 0.0)
    assert set(suppressed_for([legacy], stream)) == {"b@example.org"}
    assert suppressed_for([legacy], "other") == {}
