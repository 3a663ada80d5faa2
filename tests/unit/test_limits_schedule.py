"""Pure parts of issue 16 items 8-9: rolling and per-recipient quotas, retry schedules."""

from __future__ import annotations

import calendar
import random

import pytest

from relay.config import Rate, RetrySettings, ScheduleStep, loads
from relay.errors import ConfigError
from relay.model import TempFailure
from relay.outbound.limits import SLOT_SECONDS, WRITE_BEHIND, Quota, TokenBucket, slot_key
from relay.outbound.retry import backoff, decide, scheduled
from tests.conftest import eventually

T0 = float(calendar.timegm((2026, 11, 30, 19, 55, 0)))  # inside the 19:50 slot
DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Counters:
    """The spool's counters table as a dict, with the same window semantics."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], int] = {}
        self.adds = 0

    async def counter_add(self, name: str, window: str, delta: int = 1) -> int:
        self.adds += 1
        self.values[(name, window)] = self.values.get((name, window), 0) + delta
        return self.values[(name, window)]

    async def counter_get(self, name: str, window: str) -> int:
        return self.values.get((name, window), 0)

    async def counter_since(self, name: str, window: str) -> dict[str, int]:
        return {w: v for (n, w), v in self.values.items() if n == name and w >= window}

    async def counter_prune(self, name: str, before: str) -> None:
        for key in [k for k in self.values if k[0] == name and k[1] < before]:
            del self.values[key]


# ------------------------------------------------------------------- windows


def test_slot_keys_are_ten_minute_slots_that_sort_in_time_order() -> None:
    assert slot_key(T0) == "2026-11-30T19:50"
    assert slot_key(T0 + 300) == "2026-11-30T20:00"
    assert slot_key(T0 - DAY) == "2026-11-29T19:50"
    keys = [slot_key(T0 + i * 3571) for i in range(100)]
    assert keys == sorted(keys)


async def test_rolling_window_counts_the_last_24_hours_and_reopens_slot_by_slot() -> None:
    clock, counters = Clock(T0), Counters()
    q = Quota("m365", counters, window="rolling_24h", clock=clock)
    assert (await q.reserve(1, 3)).n == 1  # 19:55
    clock.now += 3 * 3600  # 22:55
    assert (await q.reserve(1, 3)).n == 1
    assert (await q.reserve(1, 3)).n == 1
    assert (await q.reserve(1, 3)).n == 0
    # The 19:50 slot counts until 24 h after its end (over-estimate, never under).
    assert q.reopens_at(clock.now) == calendar.timegm((2026, 12, 1, 20, 0, 0))
    clock.now = q.reopens_at(clock.now) - 1
    assert (await q.reserve(1, 3)).n == 0 and await q.used() == 3
    clock.now += 1
    assert await q.used() == 2
    assert (await q.reserve(1, 3)).n == 1
    assert (await q.reserve(1, 3)).n == 0
    # Not a UTC day: midnight reset nothing (the 22:50 slot still counts).
    assert await q.used() == 3


async def test_rolling_window_is_durable_pruned_and_costs_one_write_per_delivery() -> None:
    clock, counters = Clock(T0), Counters()
    q = Quota("m365", counters, window="rolling_24h", unit="recipients", clock=clock)
    for _ in range(5):
        await q.reserve(2, 1000)
    assert counters.adds == 5  # one increment each; the sum is kept in memory
    # Another process (a restart, `sluice providers list`) reads the same usage.
    again = Quota("m365", counters, window="rolling_24h", unit="recipients", clock=clock)
    assert await again.used() == 10
    clock.now += DAY + SLOT_SECONDS
    assert await again.used() == 0
    assert counters.values  # `used` never writes: the read-only CLI calls it
    await again.reserve(1, 1000)
    assert list(counters.values) == [("provider:m365:recipients:10m", slot_key(clock.now))]


async def test_without_a_limit_the_count_is_written_behind_in_one_increment() -> None:
    """No limit depends on it: deliveries do not wait for a spool write each."""
    clock, counters = Clock(T0), Counters()
    q = Quota("p", counters, unit="recipients", clock=clock)
    grants = [await q.reserve(2, None) for _ in range(5)]
    await q.give_back(grants[0], 1)  # given back before it was written: behind too
    assert counters.adds == 0 and await q.used() == 9  # counted in memory at once
    # Written by itself within WRITE_BEHIND, as one increment.
    await eventually(lambda: counters.adds == 1, within=WRITE_BEHIND + 10)
    assert counters.values == {("provider:p:recipients", "2026-11-30"): 9}
    assert await Quota("p", counters, unit="recipients", clock=clock).used() == 9
    # A limit, once set, counts on what is written: earlier units go first.
    await q.reserve(3, None)
    assert (await q.reserve(1, 100)).n == 1
    assert counters.values == {("provider:p:recipients", "2026-11-30"): 13}
    # Closing (the daemon stops) writes what waits.
    await q.reserve(2, None)
    await q.aclose()
    assert counters.values == {("provider:p:recipients", "2026-11-30"): 15}
    assert counters.adds == 4


async def test_utc_day_keeps_the_name_and_window_earlier_versions_wrote() -> None:
    clock, counters = Clock(T0), Counters()
    counters.values[("provider:p:messages", "2026-11-30")] = 7  # written before the upgrade
    q = Quota("p", counters, clock=clock)
    assert await q.used() == 7
    assert q.reopens_at(T0) == calendar.timegm((2026, 12, 1, 0, 0, 0))


# --------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("used", "want", "granted"), [(0, 5, 5), (7, 5, 3), (9, 5, 1), (10, 5, 0), (0, 12, 10)]
)
async def test_a_recipients_limit_grants_as_many_as_fit(used: int, want: int, granted: int) -> None:
    clock = Clock(T0)
    q = Quota("p", Counters(), unit="recipients", clock=clock)
    if used:
        await q.reserve(used, 10)
    assert (await q.reserve(want, 10)).n == granted
    assert await q.used() == used + granted


async def test_giving_back_part_of_a_grant() -> None:
    clock, counters = Clock(T0), Counters()
    q = Quota("p", counters, unit="recipients", window="rolling_24h", clock=clock)
    grant = await q.reserve(5, 10)
    await q.give_back(grant, 2)  # two recipients refused by the provider
    assert await q.used() == 3
    assert counters.values[(q.name, slot_key(T0))] == 3
    await q.give_back(grant, 99)  # more than the slot holds now: ignored, never negative
    assert await q.used() == 3


def test_rate_counting_recipients_takes_as_many_tokens_as_the_bucket_holds() -> None:
    clock = Clock(0.0)
    bucket = TokenBucket(Rate(3, 1.0), clock=clock)  # capacity 3
    assert bucket.reserve_many(5, 0) == (0.0, 3)
    assert bucket.reserve_many(5, 0) is None  # empty: the first token is 1/3 s away
    clock.now += 1.0
    assert bucket.reserve_many(2, 0) == (0.0, 2)
    wait, got = bucket.reserve_many(4, 10) or (None, None)
    assert got == 1 and wait == 0.0  # one token left
    wait, got = bucket.reserve_many(4, 10) or (None, None)
    assert got == 1 and wait == pytest.approx(1 / 3)  # wait for one, then go with it


# ------------------------------------------------------------------ schedule


SCHEDULE_YAML = """\
retry:
  jitter: 0
  schedule:
    - 1m
    - 5m
    - 5m
    - 30m
    - 1h*3
    - 4h
providers:
  - id: a
    host: smtp.example.net
"""


def test_schedule_parses_with_repeats() -> None:
    cfg = loads(SCHEDULE_YAML)
    assert cfg.retry.schedule == [
        ScheduleStep(60, 1),
        ScheduleStep(300, 1),
        ScheduleStep(300, 1),
        ScheduleStep(1800, 1),
        ScheduleStep(3600, 3),
        ScheduleStep(14400, 1),
    ]
    inline = loads("retry:\n  schedule: [1m, 5m, 1h*3, 4h]\nproviders:\n  - id: a\n    host: x\n")
    assert [s.repeat for s in inline.retry.schedule or []] == [1, 1, 3, 1]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("5x", "retry.schedule.4: '5x' is not a retry interval"),
        ("1h*0", "retry.schedule.4: '0' is not a repeat count"),
        ("1h*x", "retry.schedule.4: 'x' is not a repeat count"),
        ("1h*1001", "retry.schedule.4: '1001' is not a repeat count"),
        ("0s", "retry.schedule.4: a retry interval must be longer than 0"),
    ],
)
def test_a_bad_schedule_entry_is_reported_at_its_line(entry: str, message: str) -> None:
    text = SCHEDULE_YAML.replace("    - 1h*3", f"    - {entry}")
    with pytest.raises(ConfigError) as err:
        loads(text, source="sluice.yaml")
    (issue,) = err.value.issues
    assert issue.startswith(f"sluice.yaml:8: {message}"), issue


def test_an_empty_schedule_is_an_error() -> None:
    with pytest.raises(ConfigError) as err:
        loads(
            SCHEDULE_YAML.split("  schedule:")[0] + "  schedule: []\n" + "providers:\n"
            "  - id: a\n    host: x\n",
            source="s.yaml",
        )
    assert "retry.schedule" in err.value.issues[0]


STEPS = [ScheduleStep(60, 1), ScheduleStep(300, 2), ScheduleStep(3600, 3), ScheduleStep(14400, 1)]


@pytest.mark.parametrize(
    ("attempts", "delay"),
    [(1, 60), (2, 300), (3, 300), (4, 3600), (6, 3600), (7, 14400), (8, 14400), (500, 14400)],
)
def test_scheduled_delay_per_attempt_and_the_last_repeats(attempts: int, delay: float) -> None:
    assert scheduled(attempts, STEPS) == delay


POLICY = RetrySettings(give_up_after=2 * DAY, jitter=0, schedule=STEPS)


@pytest.mark.parametrize(
    ("attempts", "hint", "next_at"),
    [
        (1, None, T0 + 60),
        (3, None, T0 + 300),
        (5, None, T0 + 3600),
        (9, None, T0 + 14400),
        (1, 900.0, T0 + 900),  # the provider's "try again in 15 minutes" is longer: it wins
        (7, 900.0, T0 + 14400),  # a shorter hint does not shorten the schedule
    ],
)
def test_decide_with_a_schedule(attempts: int, hint: float | None, next_at: float) -> None:
    outcome = TempFailure("a@x", 451, "451 later", retry_after=hint)
    d = decide(outcome, attempts=attempts, since=T0, now=T0, policy=POLICY, rng=random.Random(1))
    assert d.next_attempt_at == next_at


def test_decide_with_a_schedule_still_ends_on_the_give_up_deadline() -> None:
    since = T0 - 2 * DAY + 600  # 10 minutes left; the schedule asks for 4 h
    d = decide(
        TempFailure("a@x", 451, "later"),
        attempts=20,
        since=since,
        now=T0,
        policy=POLICY,
        rng=random.Random(1),
    )
    assert d.next_attempt_at == since + 2 * DAY


def test_jitter_applies_to_schedule_entries() -> None:
    policy = POLICY.model_copy(update={"jitter": 0.2})
    rng = random.Random(3)
    delays = [backoff(2, policy, rng) for _ in range(300)]
    assert 300 * 0.8 <= min(delays) < 300 * 0.85
    assert 300 * 1.15 < max(delays) <= 300 * 1.2
