"""Address rules as pure functions: aliases, redirect, archive_bcc, header edits, config errors.

The process-level journeys (a real ``sluice serve``, swaks, ``sluice
sendmail``, an upstream that records what arrives) are in
``tests/e2e/test_address_rules.py``; here each rule's table of cases.
"""

from __future__ import annotations

from typing import Any

import pytest

from relay.address_rules import AddressRules
from relay.config import ALIAS_RECURSION_LIMIT, Config, loads
from relay.errors import ConfigError
from relay.message import HeaderEdit, edit_headers
from relay.model import AddressRule, RcptNote

HOST = "web1.example.net"


def _rules(**sections: Any) -> AddressRules:
    cfg = Config.model_validate({"providers": [{"id": "p", "host": "h"}], **sections})
    return AddressRules.from_config(cfg, HOST)


ALIASES = {
    "root": "ops@example.com",
    "postmaster": "root",
    "cron@localhost": ["ops@example.com", "dev@example.com"],
    # an alias naming itself keeps that address (Postfix), so this is no loop
    "ops@example.com": ["ops@example.com", "pager@example.com"],
}


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("root", ["ops@example.com", "pager@example.com"]),
        (f"root@{HOST}", ["ops@example.com", "pager@example.com"]),
        ("ROOT@LocalHost", ["ops@example.com", "pager@example.com"]),
        ("postmaster@localhost.localdomain", ["ops@example.com", "pager@example.com"]),
        ("cron@localhost", ["ops@example.com", "pager@example.com", "dev@example.com"]),
        ("someone@example.org", ["someone@example.org"]),
        # a local name at a domain that is not local is somebody else's root
        ("root@example.org", ["root@example.org"]),
    ],
)
def test_aliases_expand_recursively_and_keep_what_the_client_gave(
    given: str, stored: list[str]
) -> None:
    rules = _rules(aliases=ALIASES)
    assert rules.refusal(given) is None
    got = rules.resolve("app@example.com", [given])
    assert got.recipients == stored
    for rcpt in stored:
        if rcpt != given:
            assert got.notes[rcpt] == RcptNote(AddressRule.ALIAS, given)
    assert got.header == b""


def test_two_given_addresses_for_one_target_are_one_recipient_noting_both() -> None:
    got = _rules(aliases={"root": "ops@example.com", "www-data": "ops@example.com"}).resolve(
        "", ["root@localhost", "www-data@localhost"]
    )
    assert got.recipients == ["ops@example.com"]
    assert got.notes["ops@example.com"].original == "root@localhost, www-data@localhost"


@pytest.mark.parametrize(
    "address", ["root@localhost", f"nobody@{HOST}", "bob@intranet", "x@LOCALHOST.localdomain"]
)
def test_a_local_name_without_an_alias_is_refused_with_the_reason(address: str) -> None:
    rules = _rules(
        aliases={"root": "ops@example.com"} if address != "root@localhost" else {},
        local_domains=["intranet"],
    )
    why = rules.refusal(address)
    assert why is not None
    assert "local name and has no alias" in why and "aliases:" in why


def test_an_alias_to_a_local_name_at_the_hostname_is_refused_at_rcpt() -> None:
    # The config cannot know the host name; the listener can.
    rules = _rules(aliases={"root": f"admin@{HOST}"})
    assert f"admin@{HOST} is a local name" in (rules.refusal("root@localhost") or "")


def test_without_rules_the_recipients_pass_unchanged() -> None:
    got = AddressRules().resolve("a@example.com", ["b@example.org", "c@example.org"])
    assert got.recipients == ["b@example.org", "c@example.org"]
    assert got.notes == {} and got.header == b""
    assert AddressRules().refusal("b@example.org") is None


def test_redirect_rewrites_outside_the_allow_list_and_lists_them_in_a_header() -> None:
    rules = _rules(
        redirect={
            "to": "qa@staging.example",
            "allow": ["example.com", "*.example.net", "partner@example.org"],
        }
    )
    given = [
        "dev@example.com",
        "a@mail.example.net",
        "partner@example.org",
        "customer@gmail.com",
        "other@example.org",
        "x@notexample.com",
        "y@example.net",  # *.example.net is the subdomains only
    ]
    got = rules.resolve("app@example.com", given)
    assert got.recipients == [
        "dev@example.com",
        "a@mail.example.net",
        "partner@example.org",
        "qa@staging.example",
    ]
    assert got.notes["qa@staging.example"] == RcptNote(
        AddressRule.REDIRECT,
        "customer@gmail.com, other@example.org, x@notexample.com, y@example.net",
    )
    assert got.header == (
        b"X-Sluice-Original-To: customer@gmail.com, other@example.org, x@notexample.com,\r\n"
        b" y@example.net\r\n"
    )


def test_redirect_hold_keeps_the_recipient_and_stores_it_held() -> None:
    rules = _rules(redirect={"action": "hold", "allow": ["example.com"]})
    got = rules.resolve("", ["customer@gmail.com", "dev@example.com"])
    assert got.recipients == ["customer@gmail.com", "dev@example.com"]
    assert got.notes == {
        "customer@gmail.com": RcptNote(
            AddressRule.REDIRECT, "customer@gmail.com", "held by redirect: outside redirect.allow"
        )
    }
    assert got.header == b"X-Sluice-Original-To: customer@gmail.com\r\n"


def test_aliases_come_before_redirect() -> None:
    rules = _rules(
        aliases={"root": "ops@outside.example"},
        redirect={"to": "qa@example.com", "allow": ["example.com"]},
    )
    got = rules.resolve("", ["root@localhost"])
    assert got.recipients == ["qa@example.com"]
    assert got.notes["qa@example.com"].original == "root@localhost"
    assert got.header == b"X-Sluice-Original-To: ops@outside.example\r\n"


def test_archive_adds_a_copy_per_message_and_per_sender_domain_never_redirected() -> None:
    rules = _rules(
        archive_bcc={
            "to": "archive@vault.example",
            "sender_domains": {"app.example.com": "app-archive@vault.example"},
        },
        redirect={"to": "qa@example.com", "allow": ["example.com"]},
    )
    got = rules.resolve("billing@APP.example.com", ["dev@example.com"])
    assert got.recipients == [
        "dev@example.com",
        "archive@vault.example",
        "app-archive@vault.example",
    ]
    assert got.notes["archive@vault.example"] == RcptNote(AddressRule.ARCHIVE)
    other = rules.resolve("x@other.example", ["dev@example.com"])
    assert other.recipients == ["dev@example.com", "archive@vault.example"]
    # the archive address given by the client too: one copy
    once = rules.resolve("", ["archive@vault.example"])
    assert once.recipients.count("archive@vault.example") == 1


def _issues(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads("providers:\n  - id: p\n    host: h\n" + text, source="f.yaml", env={})
    return info.value.issues


@pytest.mark.parametrize(
    ("text", "wanted"),
    [
        ("aliases:\n  root: not an address\n", "f.yaml:5: aliases.root"),
        (
            "aliases:\n  root: [admin]\n",
            "f.yaml:5: aliases: root: 'admin' is a local name with no alias",
        ),
        (
            "redirect:\n  allow: [example.com]\n",
            "f.yaml:5: redirect: redirect.to is needed with action: rewrite",
        ),
        ("redirect:\n  to: qa\n", "f.yaml:5: redirect.to: 'qa' is not a full address"),
        ("redirect:\n  to: q@a.b\n  allow: ['x y']\n", "f.yaml:6: redirect.allow.0"),
        ("archive_bcc:\n  sender_domains:\n    a.b: nobody\n", "f.yaml:6: archive_bcc.sender"),
        ("headers:\n  add: {'X-A': \"a\\nb\"}\n", "f.yaml:5: headers.add.X-A"),
        (
            "headers:\n  add: {'X-*': a}\n",
            "f.yaml:5: headers.add: 'X-*': an added field needs a plain name",
        ),
        ("headers:\n  remove: ['X Bad']\n", "f.yaml:5: headers.remove.0"),
    ],
)
def test_bad_entries_are_named_by_file_line_and_key(text: str, wanted: str) -> None:
    issues = _issues(text)
    assert any(i.startswith(wanted) for i in issues), issues


def test_an_alias_chain_past_the_recursion_limit_is_a_config_error() -> None:
    chain = {f"a{i}": f"a{i + 1}" for i in range(ALIAS_RECURSION_LIMIT + 1)}
    chain[f"a{ALIAS_RECURSION_LIMIT + 1}"] = "end@example.com"
    lines = "".join(f"  {k}: {v}\n" for k, v in chain.items())
    issues = _issues("aliases:\n" + lines)
    assert any("nest deeper than 1000" in i for i in issues), issues


# --------------------------------------------------------------- headers out


@pytest.mark.parametrize(
    ("edit", "data", "sent"),
    [
        (HeaderEdit(), b"X-Mailer: a\r\n\r\nbody", b"X-Mailer: a\r\n\r\nbody"),
        (
            HeaderEdit.merged((["X-Mailer", "x-internal-*"], {})),
            b"From: a@b\r\nX-Mailer: PHP\r\nX-Internal-Id: 7\r\n  folded\r\nX-Kept: 1\r\n"
            b"\r\nX-Mailer: in the body stays\r\n",
            b"From: a@b\r\nX-Kept: 1\r\n\r\nX-Mailer: in the body stays\r\n",
        ),
        (
            HeaderEdit.merged((["X-Mailer"], {"X-Relay": "top"}), ([], {"x-relay": "mine"})),
            b"X-Relay: app\r\nSubject: s\r\n\r\nb",
            b"Subject: s\r\nx-relay: mine\r\n\r\nb",
        ),
        (
            HeaderEdit.merged(([], {"X-Added": "1"})),
            b"Subject: no body",
            b"Subject: no body\r\nX-Added: 1\r\n",
        ),
    ],
)
def test_edit_headers_removes_by_glob_and_adds_replacing(
    edit: HeaderEdit, data: bytes, sent: bytes
) -> None:
    assert edit_headers(data, edit) == sent


def test_edit_headers_leaves_the_bytes_alone_when_nothing_matches() -> None:
    data = b"Subject: s\r\n\r\nbody"
    assert edit_headers(data, HeaderEdit.merged((["X-Mailer"], {}))) is data
