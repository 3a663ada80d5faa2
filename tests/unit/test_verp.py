"""VERP tokens signed with the spool's key: only Sluice can write one ``parse`` accepts."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from relay.verp import MAC_CHARS, parse, token_of, verp_address

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
BOUNCES = "bounces@sluice.example"

queue_ids = st.from_regex(r"[0-9A-F]{16}", fullmatch=True)
rids = st.integers(min_value=1, max_value=10**15)


@given(queue_ids, rids)
def test_round_trip_whatever_the_case(queue_id: str, rid: int) -> None:
    address = verp_address(BOUNCES, queue_id, rid, KEY)
    local = address.rpartition("@")[0]
    # Lowercase already, and short: an MTA that folds case changes nothing.
    assert address == address.lower()
    assert len(local) <= len("bounces+") + 16 + 1 + 16 + 1 + MAC_CHARS
    assert parse(address, BOUNCES, KEY) == (queue_id, rid)
    assert parse(address.upper(), BOUNCES, KEY) == (queue_id, rid)
    assert parse(f"<{address.title()}>", BOUNCES.upper(), KEY) == (queue_id, rid)


@given(queue_ids, rids, st.data())
def test_any_change_to_a_token_is_refused(queue_id: str, rid: int, data: st.DataObject) -> None:
    address = verp_address(BOUNCES, queue_id, rid, KEY)
    local, _, domain = address.rpartition("@")
    token = local.partition("+")[2]
    at = data.draw(st.integers(min_value=0, max_value=len(token) - 1))
    swap = data.draw(st.sampled_from("0123456789abcdef").filter(lambda c: c != token[at]))
    tampered = token[:at] + swap + token[at + 1 :]
    assert parse(f"bounces+{tampered}@{domain}", BOUNCES, KEY) is None
    # Signed with another spool's key: refused too.
    assert parse(address, BOUNCES, OTHER_KEY) is None


def test_a_token_for_another_recipient_or_message_does_not_verify() -> None:
    address = verp_address(BOUNCES, "0190F2A3B4C5D6E7", 42, KEY)
    mac = address.rpartition("@")[0].rpartition("-")[2]
    for qid, rid in (("0190F2A3B4C5D6E7", 43), ("0190F2A3B4C5D6E8", 42)):
        forged = f"bounces+{qid.lower()}-{rid}-{mac}@sluice.example"
        assert parse(forged, BOUNCES, KEY) is None


def test_tokens_without_a_mac_are_found_but_never_accepted() -> None:
    unsigned = "bounces+0190F2A3B4C5D6E7-42@sluice.example"  # before signed tokens
    assert parse(unsigned, BOUNCES, KEY) is None
    assert token_of(unsigned, BOUNCES) == "0190F2A3B4C5D6E7-42"
    assert token_of("bounces@sluice.example", BOUNCES) is None
    assert token_of("bounces+@sluice.example", BOUNCES) is None
    assert token_of("bounces+x@other.example", BOUNCES) is None
    assert token_of("someone+x@sluice.example", BOUNCES) is None
