"""``smtp.policies``: the pure parts (matching, senders, From domains, defaults, the window)
and the config's checks. The listener's use of them is in tests/inbound/test_policy.py."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from relay.config import Rate, SendingPolicy, loads
from relay.errors import ConfigError
from relay.inbound.policy import (
    R_NO_FROM,
    Match,
    WindowCounter,
    default_headers,
    from_refusal,
    mail_size,
    policy_for,
    rate_key,
    sender_allowed,
)
from relay.message import HeaderBlock


def _policy(**values: Any) -> SendingPolicy:
    return SendingPolicy.model_validate(values)


def test_the_first_policy_whose_every_condition_holds_applies() -> None:
    policies = [
        _policy(users=["alice"], networks=["10.0.0.0/8"]),
        _policy(users=["alice"]),
        _policy(networks=["127.0.0.0/8", "::1"]),
    ]
    assert policy_for(policies, "10.1.2.3", "alice").index == 0  # type: ignore[union-attr]
    assert policy_for(policies, "192.0.2.1", "alice").index == 1  # type: ignore[union-attr]
    assert policy_for(policies, "::ffff:127.0.0.1", None).index == 2  # type: ignore[union-attr]
    assert policy_for(policies, "::1", "bob").index == 2  # type: ignore[union-attr]
    # No match: no restriction (as before policies existed).
    assert policy_for(policies, "10.1.2.3", None) is None
    assert policy_for(policies, "not an address", "bob") is None


def test_allowed_senders_take_addresses_domains_and_the_null_sender() -> None:
    policy = _policy(
        networks=["127.0.0.0/8"], allowed_senders=["App@Example.org", "*@news.example.org."]
    )
    assert policy.allowed_senders == ["app@example.org", "@news.example.org"]
    assert sender_allowed(policy, "app@example.ORG")
    assert sender_allowed(policy, "anyone@news.example.org")
    assert not sender_allowed(policy, "other@example.org")
    assert not sender_allowed(policy, "app@sub.news.example.org")
    assert not sender_allowed(policy, "<>")
    assert sender_allowed(_policy(users=["a"], allowed_senders=["<>"]), "<>")
    assert sender_allowed(_policy(users=["a"]), "whoever@anywhere.test")  # no list: any
    with pytest.raises(ValueError, match="not an address"):
        _policy(users=["a"], allowed_senders=["example.org"])


def test_from_domains_check_every_from_address() -> None:
    policy = _policy(users=["a"], allowed_from_domains=["Example.org", "*.example.net"])

    def reply(head: bytes) -> str | None:
        return from_refusal(policy, HeaderBlock(head + b"\r\nbody\r\n"))

    assert reply(b"From: App <app@example.org>\r\n") is None
    assert reply(b"From: a@mail.example.net, b@example.net\r\n") is None
    refused = reply(b"From: a@example.org, b@evil.test\r\n")
    assert refused is not None and refused.startswith("550 5.7.1") and "evil.test" in refused
    assert reply(b"Subject: no from\r\n") == R_NO_FROM
    assert from_refusal(_policy(users=["a"]), HeaderBlock(b"Subject: x\r\n\r\n")) is None


def test_default_route_and_stream_only_when_the_message_names_none() -> None:
    policy = _policy(users=["a"], providers=["bulk", "spare"], stream="newsletter")
    headers = ["X-Sluice-Stream", "List-Id"]
    plain = HeaderBlock(b"Subject: x\r\n\r\nbody\r\n")
    assert default_headers(policy, plain, headers) == (
        b"X-Sluice-Provider: bulk, spare\r\nX-Sluice-Stream: newsletter\r\n"
    )
    named = HeaderBlock(b"X-Sluice-Provider: up1\r\nList-Id: <l.example.org>\r\n\r\nbody\r\n")
    assert default_headers(policy, named, headers) == b""


def test_mail_size_reads_the_size_parameter() -> None:
    assert mail_size(["BODY=8BITMIME", "SIZE=1234"]) == 1234
    assert mail_size(["size=99"]) == 99
    assert mail_size(["SIZE=x", "BODY=7BIT"]) is None


def test_the_window_allows_n_in_any_period_and_forgets_idle_keys() -> None:
    now = [0.0]
    counter = WindowCounter(clock=lambda: now[0], sweep_every=10)
    rate = Rate(3, 60.0)

    def take_at(at: float, key: str = "k") -> bool:
        now[0] = at
        return counter.take(key, rate)

    assert [take_at(t) for t in (0, 10, 20, 30)] == [True, True, True, False]
    assert take_at(30, "other")  # counted per key
    assert not take_at(59.9)
    # At 60 the first has left the window: one more fits, not two; at 70 the next.
    assert [take_at(60), take_at(61), take_at(70)] == [True, False, True]
    assert take_at(500, "fresh")  # the 10th take sweeps: "other" and "k" idled out
    assert len(counter) == 1


def test_the_rate_counts_per_user_when_authenticated_else_per_address() -> None:
    match = Match(1, _policy(networks=["0.0.0.0/0", "::/0"], rate="5/m"))
    assert rate_key(match, "10.0.0.5", "alice") == rate_key(match, "10.0.0.6", "alice")
    assert rate_key(match, "10.0.0.5", None) != rate_key(match, "10.0.0.6", None)
    # An IPv4 client seen on an IPv6 socket counts as itself.
    assert rate_key(match, "::ffff:10.0.0.5", None) == rate_key(match, "10.0.0.5", None)
    assert rate_key(Match(2, match.policy), "10.0.0.5", None) != rate_key(match, "10.0.0.5", None)


def _config(policies: list[dict[str, Any]], **smtp: Any) -> str:
    return yaml.safe_dump(
        {
            "smtp": {"policies": policies, "users": [{"name": "alice", "password": "x"}], **smtp},
            "providers": [{"id": "up1", "host": "smtp.example.net"}],
        }
    )


def test_the_config_refuses_policies_that_cannot_apply_as_written() -> None:
    text = _config(
        [
            {"allowed_senders": ["a@example.org"]},
            {"networks": ["10.0.0.0/8"], "providers": ["nope"], "max_message_size": "2MB"},
            {"users": ["alice", "mallory"]},
        ],
        max_message_size="1MB",
    )
    with pytest.raises(ConfigError) as caught:
        loads(text)
    message = str(caught.value)
    assert "smtp.policies.0: a policy needs users or networks" in message
    assert "smtp.policies.1.providers.0: unknown provider id 'nope'" in message
    assert "smtp.policies.1.max_message_size: 2000000 is above smtp.max_message_size" in message
    assert "smtp.policies.2.users.1: unknown user 'mallory' (not in smtp.users)" in message
    assert "policies.2.users.0" not in message


def test_a_valid_policy_loads() -> None:
    cfg = loads(_config([{"networks": ["127.0.0.0/8"], "rate": "10/m", "providers": ["up1"]}]))
    (policy,) = cfg.smtp.policies
    assert policy.rate == Rate(10, 60.0) and policy.providers == ["up1"]
