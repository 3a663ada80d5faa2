"""Mailbox and path syntax (relay.address): table cases from issue #13 and Hypothesis fuzzing."""

from __future__ import annotations

import pytest
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.address import (
    _COMMON,
    NULL_PATH,
    address_problem,
    domain_of,
    domain_to_ascii,
    normal_domain,
    split_path,
    valid_address,
)
from relay.outbound.routing import domain_matches


@pytest.mark.parametrize(
    ("arg", "path", "rest"),
    [
        ("<a@example.org>", "a@example.org", ""),
        ("<a@example.org> SIZE=10 BODY=8BITMIME", "a@example.org", "SIZE=10 BODY=8BITMIME"),
        (" <a@example.org>", "a@example.org", ""),  # a space after the colon, as many send
        ("<>", NULL_PATH, ""),
        ("<> SMTPUTF8", NULL_PATH, "SMTPUTF8"),
        ("<@r1.example,@r2.example:u@example.org>", "u@example.org", ""),  # source route dropped
        ('<"a>b c"@example.org> X', '"a>b c"@example.org', "X"),  # ">" and " " inside quotes
        ('<"a\\"> b"@example.org>', '"a\\"> b"@example.org', ""),  # an escaped quote
        ("a@example.org SIZE=5", "a@example.org", "SIZE=5"),  # bare, as Postfix allows
        ("", "", ""),
        # Unterminated: returned whole, for address_problem to name.
        ("<", "<", ""),
        ("<a@[1.2.3.4", "<a@[1.2.3.4", ""),
        ('<"a>@example.org', '<"a>@example.org', ""),
    ],
)
def test_split_path(arg: str, path: str, rest: str) -> None:
    assert split_path(arg) == (path, rest)


GOOD = [
    "a@example.org",
    "first.last+tag@sub.example.co.uk",
    "postmaster@[IPv6:::1]",
    "postmaster@[IPv6:2001:db8::1]",
    "user@[192.0.2.1]",
    '"john doe"@example.org',
    '"a\\"b"@example.org',
    "root@localhost",  # special-use names are a policy matter, not syntax
    "app@corp.local",
    "x@host",
    "a@xn--bcher-kva.de",  # a valid A-label
    "x" * 64 + "@example.org",
    "a@" + ".".join(["b" * 63] * 3) + ".cc",  # 196 octets of domain
]

BAD = [
    ("", "empty"),
    ("<", "'<'"),
    ("a@[1.2.3.4", "["),
    ("a\x00b@example.org", "U+0000"),
    ("ab\x01@example.org", "U+0001"),
    ("a@exa\x7fmple.org", "invalid"),
    ("a\r\n@example.org", "U+000D"),
    ("a..b@example.org", "two periods"),
    (".a@example.org", "start with a period"),
    ("a.@example.org", "period immediately before"),
    ("a@-x", "hyphen"),
    ("a@x_y", "'_'"),
    ("a@x..y", "period"),
    ("x" * 65 + "@example.org", "too long before the @-sign"),
    ("a@" + ".".join(["b" * 63] * 4), "too long"),  # 255 octets of domain
    ("a@" + "b" * 64 + ".org", "periods cannot be separated"),  # a 64-octet label
    ("nodomain", "user@domain"),
    ("a@", "after the @-sign"),
    ("@example.org", "before the @-sign"),
    ("a b@example.org", "invalid"),
    ("a(comment)@example.org", "invalid"),
    ("a@[IPv6:::1%eth0]", "zone"),
    ("a@[tag:foo]", "literal"),
    ("a@xn--abc.org", "IDNA"),
    (NULL_PATH, "null path"),
]


@pytest.mark.parametrize("address", GOOD)
def test_good_addresses(address: str) -> None:
    assert address_problem(address, smtputf8=False) is None
    assert valid_address(address)


@pytest.mark.parametrize(("address", "why"), BAD)
def test_bad_addresses_say_why_in_ascii(address: str, why: str) -> None:
    problem = address_problem(address)
    assert problem is not None and why in problem, problem
    assert problem.isascii() and problem.isprintable()
    assert not valid_address(address)


@pytest.mark.parametrize("address", ["jörg@example.org", "a@bücher.de", "用户@例子.广告"])
def test_non_ascii_needs_smtputf8(address: str) -> None:
    problem = address_problem(address, smtputf8=False)
    assert problem is not None and "SMTPUTF8" in problem
    assert address_problem(address, smtputf8=True) is None
    assert valid_address(address)  # the default: the delivery side decides about SMTPUTF8


# ------------------------------------------------------------------ fuzzing

_ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
atoms = st.text(alphabet=_ATEXT, min_size=1, max_size=12)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True).filter(
    lambda s: "--" not in s
)
dot_atom_addresses = st.builds(
    lambda local, domain: f"{'.'.join(local)}@{'.'.join(domain)}",
    st.lists(atoms, min_size=1, max_size=4),
    st.lists(labels, min_size=1, max_size=4),
)
# Anything at all, weighted towards the characters that matter in a path.
noise = st.text(
    alphabet=st.one_of(
        st.sampled_from('<>@."\\[]:;, ()\x00\r\n\t\x7f-_éö'),
        st.characters(codec="utf-8"),
        st.characters(min_codepoint=0xDC80, max_codepoint=0xDCFF),  # surrogateescape'd bytes
    ),
    max_size=80,
)


def _email_validator_accepts(address: str) -> bool:
    try:
        validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=True,
            allow_quoted_local=True,
            allow_domain_literal=True,
            globally_deliverable=False,
            test_environment=True,
            strict=True,
        )
    except EmailNotValidError:
        return False
    return True


@settings(max_examples=500)
@given(noise)
def test_nothing_raises_and_refusals_are_ascii(arg: str) -> None:
    path, rest = split_path(arg)
    assert isinstance(path, str) and isinstance(rest, str)
    for smtputf8 in (False, True):
        problem = address_problem(path, smtputf8=smtputf8)
        if problem is not None:
            assert problem.isascii() and problem.isprintable()


@settings(max_examples=500)
@given(noise)
def test_no_control_character_bracket_or_space_outside_quotes_is_ever_accepted(
    address: str,
) -> None:
    if address_problem(address) is None:
        assert not any(c < " " or c == "\x7f" for c in address)
        assert not address.startswith("<")
        assert "@" in address
        assert len(address.encode()) <= 254
        local = address.rpartition("@")[0]
        if not local.startswith('"'):
            assert not any(c in local for c in ' <>()[]\\,;:"')
            assert ".." not in local and not local.startswith(".") and not local.endswith(".")
        assert _email_validator_accepts(address) or address.rpartition("@")[2].lower().endswith(
            ("local", "localhost", "test", "invalid", "onion", "arpa")
        )


@settings(max_examples=300)
@given(dot_atom_addresses)
def test_plain_addresses_are_accepted(address: str) -> None:
    if len(address.partition("@")[0]) <= 64:
        assert address_problem(address, smtputf8=False) is None


@settings(max_examples=1000)
@given(st.one_of(dot_atom_addresses, noise))
def test_the_regex_shortcut_accepts_only_what_email_validator_accepts(address: str) -> None:
    """The fast path is a subset of the tested parser (special-use names aside)."""
    if address_problem(address) is None and _COMMON.fullmatch(address):
        domain = address.rpartition("@")[2].lower()
        top = domain.rpartition(".")[2]
        if top not in ("local", "localhost", "test", "invalid", "onion", "arpa"):
            assert _email_validator_accepts(address)


@settings(max_examples=300)
@given(dot_atom_addresses)
def test_every_accepted_address_round_trips_through_a_path(address: str) -> None:
    assert split_path(f"<{address}> SIZE=1") == (address, "SIZE=1")


@settings(max_examples=300)
@given(st.ip_addresses(), atoms)
def test_address_literals_are_accepted(ip: object, local: str) -> None:
    """RFC 5321 section 4.1.3: ``[IPv4]`` and ``[IPv6:...]`` (``[IPv6:::1]`` was a 501)."""
    literal = f"[IPv6:{ip}]" if ":" in str(ip) else f"[{ip}]"
    assert address_problem(f"{local}@{literal}", smtputf8=False) is None
    assert split_path(f"<{local}@{literal}>") == (f"{local}@{literal}", "")


# ------------------------------------------------------------------ domains


@pytest.mark.parametrize(
    ("address", "domain"),
    [
        ("a@example.org", "example.org"),
        ("a@Example.ORG", "example.org"),  # RFC 4343: case does not matter
        ("a@example.org.", "example.org"),  # a trailing dot is the same domain
        ("a@EXAMPLE.org.", "example.org"),
        ("<a@example.org.>", "example.org"),  # as a path
        ('"x@y"@example.org', "example.org"),  # the last @ counts
        ("a@[192.0.2.1]", "[192.0.2.1]"),  # an address literal stays as written
        ("a@Bücher.example", "bücher.example"),
        ("", ""),  # the null sender
        ("<>", ""),
        ("root", ""),  # a local name has no domain
    ],
)
def test_domain_of(address: str, domain: str) -> None:
    assert domain_of(address) == domain


@pytest.mark.parametrize(
    ("written", "normal"),
    [("example.org", "example.org"), ("Example.Org.", "example.org"), (" x.test ", "x.test")],
)
def test_normal_domain(written: str, normal: str) -> None:
    assert normal_domain(written) == normal
    assert domain_of(f"a@{written.strip()}") == normal


@pytest.mark.parametrize(
    ("domain", "ace"),
    [
        ("example.org", "example.org"),  # ASCII: as it is
        ("Example.ORG.", "Example.ORG."),
        # IDNA 2008 keeps ß a letter of its own; the stdlib's IDNA 2003 codec says "fass.de".
        ("faß.de", "xn--fa-hia.de"),
        ("Bücher.example", "xn--bcher-kva.example"),  # UTS #46 folds the case first
        ("ＢÜＣＨＥＲ．example", "xn--bcher-kva.example"),  # and full-width letters and dots
        ("\u200d.example", None),  # a joiner alone is no IDN
        ("a..ü", None),  # an empty label
    ],
)
def test_domain_to_ascii_is_idna_2008(domain: str, ace: str | None) -> None:
    assert domain_to_ascii(domain) == ace


def test_idna_2003_and_2008_differ_on_the_example() -> None:
    """The case above can fail: the stdlib codec gives another domain."""
    assert "faß.de".encode("idna") == b"fass.de"
    assert domain_to_ascii("faß.de") != "fass.de"


@pytest.mark.parametrize(
    ("recipient", "patterns", "matches"),
    [
        ("a@example.org.", ["example.org"], True),
        ("a@example.org", ["Example.ORG."], True),
        ("a@mail.example.org.", ["*.example.org"], True),
        ("a@example.org", ["*.example.org."], True),
        ("a@example.net", ["example.org"], False),
    ],
)
def test_routes_compare_domains_by_the_same_rule(
    recipient: str, patterns: list[str], matches: bool
) -> None:
    """relay.outbound.routing reads the domain the way relay.address writes it."""
    assert domain_matches(domain_of(recipient), patterns) is matches
