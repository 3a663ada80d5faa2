-- Version 1: the first spool. Times are UTC epoch seconds (REAL). The
-- attempts table *is* the delivery log: it keeps its own copy of the queue
-- ID, address and subject so that it outlives pruned or deleted mail.

CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    queue_id    TEXT    NOT NULL UNIQUE,
    received_at REAL    NOT NULL,
    sender      TEXT    NOT NULL,
    subject     TEXT    NOT NULL DEFAULT '',
    size        INTEGER NOT NULL,
    client      TEXT    NOT NULL DEFAULT '',
    helo        TEXT    NOT NULL DEFAULT ''
);

-- Bodies live apart so that scheduling queries never page them in.
CREATE TABLE IF NOT EXISTS bodies (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BLOB    NOT NULL
);

CREATE TABLE IF NOT EXISTS recipients (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rcpt            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued',
    attempts        INTEGER NOT NULL DEFAULT 0,
    since           REAL    NOT NULL,      -- start of the give-up clock
    next_attempt_at REAL,
    last_attempt_at REAL,
    lease_until     REAL,
    last_reply      TEXT    NOT NULL DEFAULT '',
    provider        TEXT,
    updated_at      REAL    NOT NULL
);

-- The scheduler's hot query: due mail in due order, never the whole queue.
CREATE INDEX IF NOT EXISTS recipients_due
    ON recipients(next_attempt_at) WHERE status IN ('queued', 'deferred');
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
CREATE INDEX IF NOT EXISTS recipients_sending ON recipients(id) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS recipients_status ON recipients(status, id);
CREATE INDEX IF NOT EXISTS recipients_terminal
    ON recipients(updated_at) WHERE status IN ('sent', 'failed', 'expired');

CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL,
    message_id   INTEGER NOT NULL,
    queue_id     TEXT    NOT NULL,
    rcpt         TEXT    NOT NULL,
    subject      TEXT    NOT NULL DEFAULT '',
    started_at   REAL    NOT NULL,
    finished_at  REAL,
    status       TEXT    NOT NULL,        -- IN PROGRESS, SUCCESS, FAIL, deferred
    provider     TEXT,
    code         INTEGER,
    reply        TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS attempts_message ON attempts(message_id);
CREATE INDEX IF NOT EXISTS attempts_started ON attempts(started_at);
CREATE INDEX IF NOT EXISTS attempts_status ON attempts(status, id);

-- Durable counters (e.g. a provider's daily usage), keyed by name and window.
CREATE TABLE IF NOT EXISTS counters (
    name   TEXT    NOT NULL,
    window TEXT    NOT NULL,
    value  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (name, window)
);

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
