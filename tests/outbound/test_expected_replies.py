"""The one table of expected reply codes (``session.EXPECTED``), read by both send paths.

First the table itself, case by case (``expect``); then the same cases through
a real aiosmtpd upstream (``tests/upstream.py``) that scripts the replies, once
with PIPELINING (MAIL, RCPT... and DATA in one write, the replies held back
and sent together, as Postfix does) and once one command at a time: both
paths must reach the same outcome, the one the table says.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from aiosmtplib import (
    SMTPDataError,
    SMTPRecipientRefused,
    SMTPResponse,
    SMTPResponseException,
    SMTPSenderRefused,
)

from relay.model import Delivered, Outcome, PermFailure, TempFailure
from relay.outbound.session import EXPECTED, Session, Step, Upstream, expect
from tests.outbound.helpers import SENDER
from tests.upstream import Received, TestUpstream

BODY = b"From: App <app@example.org>\r\nSubject: codes\r\n\r\nhello\r\n"
TWO = ["a@example.net", "b@example.net"]

# ------------------------------------------------------------------ the table


@pytest.mark.parametrize(
    ("step", "codes"),
    [
        (Step.MAIL, {250}),
        (Step.RCPT, {250, 251}),
        (Step.DATA, {354}),
        (Step.END, set(range(200, 300))),
        (Step.RSET, {250}),
    ],
)
def test_the_table_names_what_rfc_5321_allows(step: Step, codes: set[int]) -> None:
    assert EXPECTED[step].codes == codes
    assert "RFC 5321" in EXPECTED[step].why


def test_every_step_has_a_row() -> None:
    assert set(EXPECTED) == set(Step)


@dataclass(frozen=True)
class Case:
    step: Step
    code: int
    #: None: the reply lets the transaction go on
    raises: type[SMTPResponseException] | None
    #: the code the exception carries (-1: a protocol error)
    code_raised: int | None = None


CASES = [
    Case(Step.MAIL, 250, None),
    Case(Step.MAIL, 550, SMTPSenderRefused, 550),
    Case(Step.MAIL, 451, SMTPSenderRefused, 451),
    Case(Step.MAIL, 251, SMTPSenderRefused, -1),
    Case(Step.RCPT, 250, None),
    Case(Step.RCPT, 251, None),
    Case(Step.RCPT, 252, SMTPRecipientRefused, -1),
    Case(Step.RCPT, 550, SMTPRecipientRefused, 550),
    Case(Step.RCPT, 421, SMTPRecipientRefused, 421),
    Case(Step.DATA, 354, None),
    Case(Step.DATA, 250, SMTPDataError, -1),
    Case(Step.DATA, 554, SMTPDataError, 554),
    Case(Step.DATA, -1, SMTPDataError, -1),
    Case(Step.END, 250, None),
    Case(Step.END, 251, None),
    Case(Step.END, 354, SMTPDataError, -1),
    Case(Step.END, 452, SMTPDataError, 452),
    Case(Step.RSET, 250, None),
    Case(Step.RSET, 500, SMTPResponseException, 500),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.step.name}-{c.code}")
def test_expect_reads_the_table(case: Case) -> None:
    reply = SMTPResponse(case.code, "2.0.0 text")
    if case.raises is None:
        assert expect(case.step, reply, "x@example.net") is reply
        return
    with pytest.raises(case.raises) as err:
        expect(case.step, reply, "x@example.net")
    assert type(err.value) is case.raises
    assert err.value.code == case.code_raised
    if case.code_raised == -1 and case.code > 0:
        # A success code where another was due: said so, with the reply.
        assert err.value.message.startswith(f"protocol error: {case.code} 2.0.0 text")
        assert EXPECTED[case.step].shown in err.value.message
    else:
        assert err.value.message == "2.0.0 text"


# ------------------------------------------------- both paths, a real upstream


@dataclass
class Run:
    outcomes: list[Outcome]
    #: the session could carry another transaction afterwards
    usable: bool
    messages: list[Received]


async def _run(pipelined: bool, script: Callable[[TestUpstream], None]) -> Run:
    up = await TestUpstream(pipelining=pipelined, hold_replies_until_data=pipelined).start()
    try:
        script(up)
        settings = Upstream(
            id="up",
            host=up.host,
            port=up.port,
            encryption="none",
            connect_timeout=10,
            command_timeout=10,
            data_timeout=10,
        )
        session = Session(settings, local_hostname="t")
        await session.open()
        try:
            outcomes = await session.send(SENDER, TWO, BODY)
            return Run(outcomes, session.usable, list(up.messages))
        finally:
            session.close()
    finally:
        await up.stop()


async def _both(script: Callable[[TestUpstream], None]) -> Run:
    """The run through the pipelined path, after checking the sequential one agrees."""
    piped = await _run(True, script)
    stepwise = await _run(False, script)
    assert piped.outcomes == stepwise.outcomes
    assert piped.usable == stepwise.usable
    assert [m.recipients for m in piped.messages] == [m.recipients for m in stepwise.messages]
    return piped


async def test_251_to_rcpt_accepts_the_recipient_on_both_paths() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["RCPT:b@example.net"] = "251 2.1.5 User not local; will forward"

    run = await _both(script)
    assert [type(o) for o in run.outcomes] == [Delivered, Delivered]
    (got,) = run.messages
    assert got.recipients == TWO
    assert run.usable


async def test_252_to_rcpt_is_a_protocol_error_for_that_recipient_only() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["RCPT:b@example.net"] = "252 2.1.5 Cannot VRFY user"

    run = await _both(script)
    a, b = run.outcomes
    assert isinstance(a, Delivered)
    assert isinstance(b, TempFailure) and b.code == -1
    assert b.text.startswith("protocol error: 252 2.1.5 Cannot VRFY user in reply to RCPT")
    (got,) = run.messages
    assert got.recipients == ["a@example.net"]


async def test_354_is_required_for_data_a_refusal_there_is_the_reason() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["DATA:start"] = "554 5.7.1 message refused"

    run = await _both(script)
    assert all(isinstance(o, PermFailure) and o.code == 554 for o in run.outcomes)
    assert run.messages == []
    assert run.usable


async def test_a_250_to_data_is_a_protocol_error_never_a_delivery() -> None:
    """RFC 5321 § 4.1.1.4: only the reply after the final dot means delivered.

    A server that answers the DATA command itself with 250 is not reading a
    body: nothing was delivered, the message waits, and the session (out of
    step) is closed rather than reused.
    """

    def script(up: TestUpstream) -> None:
        up.reply["DATA:start"] = "250 2.0.0 OK"

    run = await _both(script)
    assert all(isinstance(o, TempFailure) and o.code == -1 for o in run.outcomes), run.outcomes
    assert all("protocol error: 250 2.0.0 OK in reply to DATA" in o.text for o in run.outcomes)
    assert all("expected 354" in o.text for o in run.outcomes)
    assert run.messages == []
    assert not run.usable


async def test_another_2xx_after_the_final_dot_is_still_delivered() -> None:
    """The end of data takes any 2xx: reading one as a failure would send the mail twice."""

    def script(up: TestUpstream) -> None:
        up.reply["DATA"] = "251 2.0.0 queued elsewhere"

    run = await _both(script)
    assert [(type(o), o.code) for o in run.outcomes] == [(Delivered, 251), (Delivered, 251)]
    assert run.usable


async def test_a_250_to_mail_is_expected_a_252_is_not() -> None:
    def script(up: TestUpstream) -> None:
        up.reply["MAIL"] = "252 2.1.0 maybe"

    run = await _both(script)
    assert all(isinstance(o, TempFailure) and o.code == -1 for o in run.outcomes)
    assert all("in reply to MAIL (expected 250)" in o.text for o in run.outcomes)
    assert run.messages == []


async def test_rset_must_get_250_or_the_session_is_closed() -> None:
    """Every RCPT refused: RSET ends the open transaction; a refused RSET closes the session."""

    def refused(up: TestUpstream) -> None:
        for r in TWO:
            up.reply[f"RCPT:{r}"] = "550 5.1.1 no such user"

    kept = await _both(refused)
    assert kept.usable

    def rset_refused(up: TestUpstream) -> None:
        refused(up)
        up.reply["RSET"] = "500 5.5.1 no"

    run = await _both(rset_refused)
    # The outcomes are the RCPT replies; the RSET reply only ends the session.
    assert run.outcomes == kept.outcomes
    assert all(isinstance(o, PermFailure) and o.code == 550 for o in run.outcomes)
    assert not run.usable
