"""Structured logging on stderr: one line per event, ``key=value`` (logfmt) or JSON.

Every record becomes exactly one line (a traceback is folded into the
``exc`` field), with ``level``, ``logger``, the ``event`` and ``queue_id``
when the caller gave them (``extra={"event": "accept", "queue_id": ...}``),
the message, and any other ``extra`` fields. A message that starts with a
queue ID (``"0123ABCD...: accepted ..."``) gets the ``queue_id`` field too.

Secrets never reach the output: every line passes a redactor
(``relay.secrets.Redactor``, the one the spool uses too) that replaces
the values Sluice knows to be secrets (every ``SecretSource`` of the config,
resolved: provider passwords, OAuth secrets, the admin password and token)
with ``MASK``, as well as an SMTP ``AUTH`` payload and a ``password=VALUE``
assignment. Words merely following "password:" in a sentence are left alone
(Sluice's own "has no password: anyone on this machine ..." must read right).
A URL that may carry a token (a webhook's ``?token=...``, ``user:pass@``) is
logged through ``mask_url``, which keeps the scheme, host and path and masks
the query values and any userinfo; httpx's own "HTTP Request: POST URL" line
passes ``UrlMaskFilter`` (``mask_http_logs``) for the same reason.
Under systemd, when stderr is the journal (``$JOURNAL_STREAM`` matches it),
the timestamp is left out since the journal adds its own.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Mapping
from json.encoder import encode_basestring
from typing import IO, Any, Literal
from urllib.parse import SplitResult, urlsplit, urlunsplit

from relay.config import Config
from relay.secrets import Redactor, SecretError

__all__ = [
    "JsonFormatter",
    "LogfmtFormatter",
    "Redactor",
    "SluiceLogHandler",
    "UrlMaskFilter",
    "apply_config",
    "config_secrets",
    "configure",
    "mask_http_logs",
    "mask_url",
    "mask_urls_in",
]

Format = Literal["text", "json"]

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_STANDARD = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}
_LEADING_QID = re.compile(r"^([0-9A-F]{16}): ")
_LOGFMT_BARE = re.compile(r"^[^\s\"=\\]+$")


#: what stands for a masked query value or userinfo in a URL (ASCII: it stays a URL)
URL_MASK = "***"
_URL = re.compile(r"\bhttps?://[^\s\"'<>]+", re.IGNORECASE)
#: the loggers of the HTTP client Sluice uses; it logs each request's full URL at INFO
_HTTP_LOGGERS = ("httpx",)


def mask_url(url: str) -> str:
    """``url`` fit for a log line or a page: query values and userinfo masked.

    ``https://u:p@hooks.example/x?token=abc&v=1#f`` becomes
    ``https://***@hooks.example/x?token=***&v=***``: the parameter names stay
    (they tell which URL it is), their values, the fragment and any
    ``user:password@`` go, since a webhook receiver's URL often carries its
    token there. Text that is not a URL is returned as it is.
    """
    try:
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
    except ValueError:  # not a URL urlsplit can read (a bad IPv6 host): hide it whole
        return f"{url.partition(':')[0]}://{URL_MASK}" if "://" in url else url
    if not (parts.query or parts.fragment or "@" in parts.netloc):
        return url
    netloc = f"{URL_MASK}@{host}" if "@" in parts.netloc else host
    query = "&".join(
        f"{field.partition('=')[0]}={URL_MASK}" if "=" in field else URL_MASK
        for field in parts.query.split("&")
        if field
    )
    return urlunsplit(SplitResult(parts.scheme, netloc, parts.path, query, ""))


def mask_urls_in(text: str) -> str:
    """Every ``http(s)://`` URL in ``text`` through ``mask_url``."""
    if "://" not in text:
        return text
    return _URL.sub(lambda m: mask_url(m.group(0)), text)


class UrlMaskFilter(logging.Filter):
    """Masks the URLs in a record's message (``mask_url``); keeps every record.

    Put on a logger, it runs before any handler, pytest's caplog included, so
    no handler ever sees the URL in clear.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_urls_in(message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def _quiet_http_logs(level: str) -> None:
    """httpx's "HTTP Request: POST ..." line per request: shown at ``log.level: debug`` only.

    httpx logs every request at INFO, so each webhook POST (and OAuth token
    refresh) was a line in the journal; Sluice logs a webhook's failures itself.
    """
    for name in _HTTP_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.DEBUG if level.lower() == "debug" else logging.WARNING
        )


def mask_http_logs() -> None:
    """Put ``UrlMaskFilter`` on the HTTP client's loggers (once; calling again is harmless).

    Called by ``configure`` and by every task that opens an HTTP client
    (the webhook sender), so an embedding that owns logging is covered too.
    """
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, UrlMaskFilter) for f in logger.filters):
            logger.addFilter(UrlMaskFilter())


def _fields(record: logging.LogRecord, ts: str | None) -> dict[str, Any]:
    """The record's fields in their printed order; ``ts``: its timestamp, if printed."""
    msg = record.getMessage()
    out: dict[str, Any] = {}
    if ts is not None:
        out["ts"] = ts
    out["level"] = record.levelname.lower()
    out["logger"] = record.name
    attrs = record.__dict__
    # ``extra`` values, in the order given (a set difference, then the few
    # keys left in the record's own order: not a test of all its attributes)
    names = attrs.keys() - _STANDARD
    extras = {k: attrs[k] for k in sorted(names, key=list(attrs).index)} if names else {}
    if "event" in extras:
        out["event"] = extras.pop("event")
    queue_id = extras.pop("queue_id", None)
    match = _LEADING_QID.match(msg)
    if match and (queue_id is None or queue_id == match.group(1)):
        queue_id = match.group(1)
        msg = msg[match.end() :]
    if queue_id is not None:
        out["queue_id"] = queue_id
    out["msg"] = msg
    out.update(extras)
    if record.exc_info and record.exc_info[0] is not None:
        out["exc"] = logging.Formatter().formatException(record.exc_info)
    elif record.exc_text:
        out["exc"] = record.exc_text
    return out


#: ``json.dumps(value, default=str)`` and ``json.dumps(text, ensure_ascii=False)``
#: without making an encoder per call (what ``json.dumps`` does given any option)
_encoded = json.JSONEncoder(default=str).encode
_quoted = encode_basestring
#: ``json.dumps(fields, ensure_ascii=False, default=str)``: a line of the JSON format
_json_line = json.JSONEncoder(ensure_ascii=False, default=str).encode


def _logfmt_value(value: object) -> str:
    text = value if isinstance(value, str) else _encoded(value)
    if text and _LOGFMT_BARE.match(text):
        return text
    return _quoted(text)


class _Formatter(logging.Formatter):
    """Shared by both formats: the redactor and whether to print a timestamp."""

    def __init__(self, redactor: Redactor, *, with_time: bool = True) -> None:
        super().__init__()
        self.redactor = redactor
        self.with_time = with_time
        # The current second as text: most records share it with the one before.
        self._second = -1
        self._second_text = ""

    def _timestamp(self, record: logging.LogRecord) -> str | None:
        """``2026-12-08T02:08:55.560Z`` (UTC), or None without a timestamp.

        Called from ``format``, under the handler's lock, as the cache needs.
        """
        if not self.with_time:
            return None
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"


def _redacted(fields: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """Every value that can hold a secret through ``redactor``.

    The fields Sluice makes itself (time, level, logger name, event, queue
    ID) cannot; the message, a traceback and any ``extra`` value can. Other
    values than strings are redacted in the form they are printed in.
    """
    return {
        k: v if k in _OWN_FIELDS else redactor(v if isinstance(v, str) else _encoded(v))
        for k, v in fields.items()
    }


#: fields whose values Sluice makes itself, never from a message, reply or config
_OWN_FIELDS = frozenset({"ts", "level", "logger", "event", "queue_id"})


class LogfmtFormatter(_Formatter):
    """``ts=... level=info logger=sluice.smtp event=accept queue_id=... msg="..."``."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _redacted(_fields(record, self._timestamp(record)), self.redactor)
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())


class JsonFormatter(_Formatter):
    """One JSON object per line, same fields as the logfmt format."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _fields(record, self._timestamp(record))
        # Redact values, not the encoded line, so the JSON stays valid.
        safe = {k: v if k in _OWN_FIELDS else self._safe(v) for k, v in fields.items()}
        return _json_line(safe)

    def _safe(self, value: object) -> object:
        if isinstance(value, str):
            return self.redactor(value)
        if value is None or isinstance(value, bool | int | float):
            return value
        # A structure (an ``extra`` dict or list): kept as is unless it holds a
        # secret, then shown as its redacted JSON text.
        text = _encoded(value)
        masked = self.redactor(text)
        return value if masked == text else masked


class SluiceLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler Sluice installs on the root logger."""

    def __init__(self, stream: IO[str], fmt: Format, redactor: Redactor, with_time: bool) -> None:
        super().__init__(stream)
        self.redactor = redactor
        self.with_time = with_time
        self.set_format(fmt)

    def set_format(self, fmt: Format) -> None:
        cls = JsonFormatter if fmt == "json" else LogfmtFormatter
        self.setFormatter(cls(self.redactor, with_time=self.with_time))


def _stderr_is_journal(stream: IO[str], environ: Mapping[str, str]) -> bool:
    """systemd.exec(5): ``$JOURNAL_STREAM`` is ``DEV:INODE`` of the journal stream."""
    value = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def config_secrets(cfg: Config, env: Mapping[str, str] | None = None) -> set[str]:
    """Every secret value the config resolves to (for the redactor); unresolvable ones skipped."""
    out: set[str] = set()
    for ref in cfg.secrets():  # every field marked secret, admin.password_hash included
        try:
            out.add(ref.source.resolve(env).get_secret_value())
        except SecretError:
            continue
    return out


def configure(
    level: str = "info",
    fmt: Format = "text",
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> SluiceLogHandler:
    """Install (or replace) Sluice's handler on the root logger."""
    out = sys.stderr if stream is None else stream
    env = os.environ if environ is None else environ
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, SluiceLogHandler)]:
        root.removeHandler(old)
    handler = SluiceLogHandler(
        out, fmt, Redactor(secrets, heuristics=True), with_time=not _stderr_is_journal(out, env)
    )
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiosmtpd logs every SMTP command at INFO ("mail.log"), including AUTH
    # exchanges; keep only its problems. Same for the asyncio debug chatter.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
    _quiet_http_logs(level)
    mask_http_logs()
    return handler


def configure_plain(level: str = "info") -> None:
    """Plain ``logging`` lines for ``sluice demo`` (and its accept worker)."""
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # aiosmtpd logs every command at INFO ("mail.log"); keep only problems.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    mask_http_logs()


def installed() -> bool:
    """Whether Sluice's own handler is on the root logger (``sluice serve``)."""
    return any(isinstance(h, SluiceLogHandler) for h in logging.getLogger().handlers)


def apply_config(cfg: Config) -> None:
    """On reload: new level, format and secrets for the installed handler (if any)."""
    root = logging.getLogger()
    handlers = [h for h in root.handlers if isinstance(h, SluiceLogHandler)]
    if not handlers:
        return  # embedded (tests, demo): the host application owns logging
    root.setLevel(cfg.log.level.upper())
    _quiet_http_logs(cfg.log.level)
    for handler in handlers:
        handler.redactor.update(config_secrets(cfg))
        handler.set_format(cfg.log.format)
