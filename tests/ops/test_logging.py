"""Structured logs: one line per event, logfmt or JSON, queue IDs, never a secret."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay import logsetup
from relay.config import loads
from relay.secrets import MASK
from tests.conftest import provider_for, smtp_send
from tests.daemon_proc import DaemonProcess
from tests.upstream import TestUpstream

QID = "1A207CEC124EE1E0"


@pytest.fixture
def capture() -> Iterator[Callable[..., io.StringIO]]:
    """Install Sluice's handler on a StringIO; restore the root logger afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)

    def make(fmt: logsetup.Format = "text", secrets: tuple[str, ...] = ()) -> io.StringIO:
        out = io.StringIO()
        logsetup.configure("debug", fmt, secrets=secrets, stream=out, environ={})
        return out

    yield make
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_logfmt_line_with_event_queue_id_and_quoting(capture: Callable[..., io.StringIO]) -> None:
    out = capture("text")
    logging.getLogger("sluice.smtp").info(
        "%s: accepted from=<%s> nrcpt=%d", QID, "a@example.org", 2, extra={"event": "accept"}
    )
    (line,) = out.getvalue().splitlines()
    assert line.startswith("ts=")
    assert " level=info logger=sluice.smtp event=accept queue_id=" + QID in line
    assert line.endswith('msg="accepted from=<a@example.org> nrcpt=2"')


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_each_record_has_its_own_time_and_extras_in_the_order_given(
    capture: Callable[..., io.StringIO], fmt: logsetup.Format
) -> None:
    """The second is kept between records (it is dear to format): never a stale one."""
    out = capture(fmt)
    log = logging.getLogger("sluice.test")
    created = [1_796_700_000.25, 1_796_700_000.75, 1_796_700_001.0, 1_796_699_999.5]
    for at in created:
        record = log.makeRecord(
            "sluice.test",
            logging.INFO,
            __file__,
            1,
            "m",
            (),
            None,
            extra={"zeta": 1, "event": "e", "alpha": [2]},
        )
        record.created, record.msecs = at, (at - int(at)) * 1000
        log.handle(record)
    stamps, tails = [], []
    for line in out.getvalue().splitlines():
        if fmt == "json":
            doc = json.loads(line)
            stamps.append(doc["ts"])
            tails.append(list(doc)[-2:])
        else:
            stamps.append(line.split()[0].removeprefix("ts="))
            tails.append([f.partition("=")[0] for f in line.split()[-2:]])
    assert stamps == [
        "2026-12-08T03:20:00.250Z",
        "2026-12-08T03:20:00.750Z",
        "2026-12-08T03:20:01.000Z",
        "2026-12-08T03:19:59.500Z",
    ]
    assert tails == [["zeta", "alpha"]] * 4


def test_json_is_one_valid_object_per_record_even_with_a_traceback(
    capture: Callable[..., io.StringIO],
) -> None:
    out = capture("json")
    log = logging.getLogger("sluice.scheduler")
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("%s: delivery crashed", QID, extra={"event": "error"})
    log.warning("plain")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["queue_id"] == QID and first["event"] == "error"
    assert first["msg"] == "delivery crashed" and first["level"] == "error"
    assert "RuntimeError: boom" in first["exc"]
    assert second == {k: second[k] for k in ("ts", "level", "logger", "msg")}


def test_secrets_are_masked_in_both_formats(capture: Callable[..., io.StringIO]) -> None:
    for fmt in ("text", "json"):
        out = capture(fmt, secrets=("hunter2-very-secret",))
        log = logging.getLogger("sluice.test")
        log.info("oops: %s", "hunter2-very-secret")
        log.info("client said AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        # An assignment is masked whatever its value ("token: x" in prose is not: see below).
        log.info("password=%s token=%s", "abc123", "tok-xyz")
        text = out.getvalue()
        for secret in ("hunter2-very-secret", "AGFsaWNlAHNlY3JldA==", "abc123", "tok-xyz"):
            assert secret not in text, (fmt, text)
        assert text.count(MASK) >= 4


def test_secrets_are_masked_in_extra_fields_and_tracebacks_too(
    capture: Callable[..., io.StringIO],
) -> None:
    """Only Sluice's own fields (ts, level, logger, event, queue_id) skip the redactor."""
    for fmt in ("text", "json"):
        out = capture(fmt, secrets=("hunter2-very-secret",))
        log = logging.getLogger("sluice.test")
        log.info(
            "%s: upstream said",
            QID,
            extra={
                "event": "outcome",
                "reply": "535 auth failed for hunter2-very-secret",
                "detail": {"sent": "AUTH PLAIN AGFsaWNlAHNlY3JldA=="},
                "note": "api_key=k-9876",
            },
        )
        try:
            raise ValueError("bad hunter2-very-secret")
        except ValueError:
            log.exception("failed")
        text = out.getvalue()
        for secret in ("hunter2-very-secret", "AGFsaWNlAHNlY3JldA==", "k-9876"):
            assert secret not in text, (fmt, text)
        assert text.count(MASK) >= 4, (fmt, text)  # the traceback shows the secret twice
        assert QID in text and "outcome" in text


def test_words_after_password_colon_are_not_secrets(capture: Callable[..., io.StringIO]) -> None:
    # Sluice's own warning (admin/server.py) must read as written, while a value
    # Sluice knows to be a secret is masked wherever it appears, even after "password:".
    warning = (
        "admin page at 127.0.0.1:8025 has no password: anyone on this machine can use it "
        "(set admin.password_hash to require a login)"
    )
    for fmt in ("text", "json"):
        out = capture(fmt, secrets=("Corr3ct-Horse",))
        log = logging.getLogger("sluice.admin")
        log.warning(warning)
        log.warning("provider x: password: %s token: %s", "Corr3ct-Horse", "Corr3ct-Horse")
        first, second = out.getvalue().splitlines()
        shown = json.loads(first)["msg"] if fmt == "json" else first
        assert warning in shown, (fmt, first)
        assert MASK not in first
        assert "Corr3ct-Horse" not in second
        assert f"password: {MASK} token: {MASK}" in second


def test_config_secrets_and_reload_apply(
    capture: Callable[..., io.StringIO], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-a-file-secret\n")
    monkeypatch.setenv("SLUICE_TEST_PW", "from-env-secret")
    cfg = loads(
        "providers:\n"
        "  - {id: a, host: h, password_file: " + str(pw) + "}\n"
        "  - {id: b, host: h, password_env: SLUICE_TEST_PW}\n"
        "  - {id: c, host: h, password: inline-secret}\n"
        "log: {format: json, level: warning}\n"
    )
    assert logsetup.config_secrets(cfg) == {
        "from-a-file-secret",
        "from-env-secret",
        "inline-secret",
    }
    out = capture("text")
    logsetup.apply_config(cfg)  # what a reload does: format, level and secrets change
    logging.getLogger("sluice.x").info("dropped: below warning")
    logging.getLogger("sluice.x").warning("leak? %s", "inline-secret")
    (line,) = out.getvalue().splitlines()
    assert json.loads(line)["msg"] == f"leak? {MASK}"


def test_no_timestamp_when_stderr_is_the_journal(tmp_path: Path) -> None:
    with open(tmp_path / "stream", "w") as f:
        st = os.fstat(f.fileno())
        handler = logsetup.configure(
            "info", "text", stream=f, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        )
        try:
            assert handler.with_time is False
        finally:
            logging.getLogger().removeHandler(handler)


async def test_daemon_json_log_has_accept_attempt_outcome_and_no_password(
    ops_config: Callable[..., Path],
    daemon_proc: Callable[..., DaemonProcess],
    upstream: TestUpstream,
) -> None:
    password = "S3cret-Upstream-Pass"
    upstream.users = {"relay-user": password}
    path = ops_config(
        [
            provider_for(
                upstream, username="relay-user", password=password, allow_insecure_auth=True
            )
        ],
        log={"format": "json", "level": "debug"},
    )
    d = await daemon_proc(path).start()
    await smtp_send(d.port, "a@example.org", ["b@example.net"], b"Subject: s\r\n\r\nb\r\n")
    (got,) = await upstream.wait_for(1)
    assert got.login == "relay-user"
    await d.wait_line('"event": "outcome"')
    assert await d.stop() == 0
    records = [json.loads(line) for line in d.lines]  # every line is JSON
    by_event = {r.get("event"): r for r in records if "event" in r}
    accept = by_event["accept"]
    assert by_event["attempt"]["queue_id"] == accept["queue_id"]
    assert by_event["outcome"]["queue_id"] == accept["queue_id"]
    assert "status=sent" in by_event["outcome"]["msg"]
    assert password not in d.output


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://hooks.example/x?token=abc", "https://hooks.example/x?token=***"),
        ("http://u:pw@h:8080/p?a=1&b&c=#frag", "http://***@h:8080/p?a=***&***&c=***"),
        ("https://hooks.example/x", "https://hooks.example/x"),
        ("http://[::1/x?token=abc", "http://***"),  # unreadable: hidden whole
        ("not a url", "not a url"),
    ],
)
def test_mask_url_keeps_host_and_path_only(url: str, shown: str) -> None:
    assert logsetup.mask_url(url) == shown


def test_http_client_request_lines_are_masked_before_any_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logsetup.mask_http_logs()
    logsetup.mask_http_logs()  # once is enough; twice adds nothing
    httpx_log = logging.getLogger("httpx")
    assert sum(isinstance(f, logsetup.UrlMaskFilter) for f in httpx_log.filters) == 1
    # Its own logger at INFO, as `log.level: debug` has it (else Sluice keeps it at WARNING).
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="httpx"):
        httpx_log.info('HTTP Request: %s %s "%s"', "POST", "https://h/x?key=K3Y", "HTTP/1.1 200")
    assert caplog.messages == ['HTTP Request: POST https://h/x?key=*** "HTTP/1.1 200"']
