-- Sluice spool schema, as it stands after the last migration: for reading.
-- Spools are made and upgraded by migrations/NNNN_*.sql alone
-- (relay/store/migrations.py); tests/store/test_migrations.py checks that
-- they arrive at this. Times are UTC epoch seconds (REAL).
-- The attempts table *is* the delivery log: it keeps its own copy of the
-- queue ID, address and subject so that it outlives pruned or deleted mail.

CREATE TABLE IF NOT EXISTS messages (
    id          INTEGER PRIMARY KEY,
    queue_id    TEXT    NOT NULL UNIQUE,
    received_at REAL    NOT NULL,
    sender      TEXT    NOT NULL,
    subject     TEXT    NOT NULL DEFAULT '',
    size        INTEGER NOT NULL,
    client      TEXT    NOT NULL DEFAULT '',
    helo        TEXT    NOT NULL DEFAULT '',
    stream      TEXT    NOT NULL DEFAULT '', -- the X-Sluice-Stream header, for filters
    node        TEXT    NOT NULL DEFAULT ''  -- the node that accepted it (spool.node)
);

-- Bodies live apart so that scheduling queries never page them in.
-- crlf_only: 1 when the listener saw every line end in CRLF, so delivery
-- need not look for bare CR or LF again; 0 when it did, or does not know.
CREATE TABLE IF NOT EXISTS bodies (
    message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
    data       BLOB    NOT NULL,
    crlf_only  INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE IF NOT EXISTS recipients (
    id              INTEGER PRIMARY KEY,
    message_id      INTEGER NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    rcpt            TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'queued' CHECK (status IN
        ('queued', 'sending', 'deferred', 'sent', 'failed', 'expired', 'suppressed', 'held')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    since           REAL    NOT NULL,      -- start of the give-up clock
    next_attempt_at REAL,
    last_attempt_at REAL,
    lease_until     REAL,
    last_reply      TEXT    NOT NULL DEFAULT '',
    provider        TEXT,
    updated_at      REAL    NOT NULL,
    held_at         REAL,                  -- when it was put on hold (status 'held')
    released_at     REAL,                  -- last release from a hold: hold.rules spare it
    route_override  TEXT,                  -- provider for the next attempt only (reroute)
    original_rcpt   TEXT,                  -- the address the client gave, when a rule changed it
    rule            TEXT                   -- the address rule that made it: alias, redirect, archive
        CHECK (rule IS NULL OR rule IN ('alias', 'redirect', 'archive')),
    lease_node      TEXT                   -- the node holding the lease (status 'sending')
);

-- The scheduler's hot query: due mail in due order, never the whole queue.
CREATE INDEX IF NOT EXISTS recipients_due
    ON recipients(next_attempt_at) WHERE status IN ('queued', 'deferred');
CREATE INDEX IF NOT EXISTS recipients_message ON recipients(message_id);
CREATE INDEX IF NOT EXISTS recipients_sending ON recipients(id) WHERE status = 'sending';
CREATE INDEX IF NOT EXISTS recipients_status ON recipients(status, id);
-- Finished recipients, for pruning.
CREATE INDEX IF NOT EXISTS recipients_finished
    ON recipients(updated_at) WHERE status IN ('sent', 'failed', 'expired', 'suppressed');

CREATE TABLE IF NOT EXISTS attempts (
    id           INTEGER PRIMARY KEY,
    recipient_id INTEGER NOT NULL,
    message_id   INTEGER NOT NULL,
    queue_id     TEXT    NOT NULL,
    rcpt         TEXT    NOT NULL,
    subject      TEXT    NOT NULL DEFAULT '',
    started_at   REAL    NOT NULL,
    finished_at  REAL,
    status       TEXT    NOT NULL CHECK (status IN
        ('in_progress', 'success', 'fail', 'deferred', 'bounced', 'suppressed')),
    provider     TEXT,
    code         INTEGER,
    reply        TEXT    NOT NULL DEFAULT '',
    node         TEXT    NOT NULL DEFAULT ''  -- the node that made the attempt
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

-- Refresh tokens from a provider sign-in (OAuth 2.0 device grant, RFC 8628):
-- kept here, beside the mail and with the spool's file permissions, never in
-- the YAML. state: 'connected', or 'failed' once the provider refused the
-- token (revoked, expired): someone must sign in again.
CREATE TABLE IF NOT EXISTS oauth_grants (
    provider      TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'connected',
    error         TEXT NOT NULL DEFAULT '',
    updated_at    REAL NOT NULL
);

-- Bounces: a provider's permanent per-recipient refusal at SMTP time
-- (source 'smtp'), or a delivery status notification read from the bounce
-- mailbox (source 'dsn'). kind: 'hard' (5.x.x, Action: failed) or 'soft'
-- (4.x.x, Action: delayed). address is lower-cased.
CREATE TABLE IF NOT EXISTS bounces (
    id           INTEGER PRIMARY KEY,
    address      TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    status       TEXT    NOT NULL DEFAULT '',
    diagnostic   TEXT    NOT NULL DEFAULT '',
    source       TEXT    NOT NULL,
    queue_id     TEXT,
    stream       TEXT    NOT NULL DEFAULT '',
    received_at  REAL    NOT NULL,
    raw          BLOB,
    -- what makes one bounce one: its Message-ID (or digest) and the address
    key          TEXT    UNIQUE
);
CREATE INDEX IF NOT EXISTS bounces_address ON bounces(address, received_at);
CREATE INDEX IF NOT EXISTS bounces_queue_id ON bounces(queue_id);

-- Bounces that named no mail Sluice sent to the address they claim (no
-- token or queue ID, a token that does not verify, a queue ID whose message
-- was not delivered to that address): kept to be seen, the latest 1,000 only.
CREATE TABLE IF NOT EXISTS unmatched_bounces (
    id          INTEGER PRIMARY KEY,
    received_at REAL    NOT NULL,
    sender      TEXT    NOT NULL DEFAULT '',
    address     TEXT    NOT NULL,
    queue_id    TEXT,
    reason      TEXT    NOT NULL,
    -- what makes one bounce one, as in bounces.key
    key         TEXT    UNIQUE
);

-- Secrets the spool keeps for itself: 'verp' signs VERP return paths
-- (relay/verp.py). Made at first use by Suppressions.verp_key, never logged
-- or shown; the spool's file permissions guard it, as they do OAuth grants.
CREATE TABLE IF NOT EXISTS spool_keys (
    name       TEXT PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at REAL NOT NULL
);

-- Suppressed addresses: never sent to a provider. scope '' applies to every
-- stream; otherwise only to mail of that stream (X-Sluice-Stream, List-Id).
-- source: bounce, manual, import, api.
CREATE TABLE IF NOT EXISTS suppressions (
    address    TEXT NOT NULL,
    scope      TEXT NOT NULL DEFAULT '',
    source     TEXT NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    expires_at REAL,
    PRIMARY KEY (address, scope)
);
CREATE INDEX IF NOT EXISTS suppressions_created ON suppressions(created_at);

-- Webhook events waiting to be posted, and those posted (kept for the admin's
-- Webhooks page for notify.webhook_retention). One row per endpoint that
-- wants the event, written in the transaction that records the outcome it
-- reports; posted in id order per endpoint (relay/notify/webhooks.py).
CREATE TABLE IF NOT EXISTS webhook_outbox (
    id              INTEGER PRIMARY KEY,
    endpoint        TEXT    NOT NULL,      -- the endpoint's URL
    event_id        TEXT    NOT NULL,
    event           TEXT    NOT NULL,
    queue_id        TEXT    NOT NULL DEFAULT '',
    body            TEXT    NOT NULL,      -- the JSON posted, byte for byte
    created_at      REAL    NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    last_attempt_at REAL,
    delivered_at    REAL,
    last_status     INTEGER,               -- HTTP status of the last try (NULL: no answer)
    last_error      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS webhook_outbox_pending
    ON webhook_outbox(endpoint, id) WHERE delivered_at IS NULL;
CREATE INDEX IF NOT EXISTS webhook_outbox_created ON webhook_outbox(created_at);

-- DSNs sent, per recipient reported and kind (failed, delayed): at most one of
-- each kind per recipient, and the count per sender address per hour that
-- notify.dsn_per_hour limits.
CREATE TABLE IF NOT EXISTS dsn_sent (
    recipient_id INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    sender       TEXT    NOT NULL,
    dsn_queue_id TEXT    NOT NULL,         -- '' when the rate limit withheld it
    sent_at      REAL    NOT NULL,
    PRIMARY KEY (recipient_id, kind)
);
CREATE INDEX IF NOT EXISTS dsn_sent_sender ON dsn_sent(sender, sent_at);

-- Operator pauses of delivery (`sluice providers pause`): provider '*' = all.
-- until NULL: until resumed. A row whose until has passed is no longer a pause.
CREATE TABLE IF NOT EXISTS provider_pauses (
    provider TEXT PRIMARY KEY,
    reason   TEXT NOT NULL DEFAULT '',
    until    REAL,
    actor    TEXT NOT NULL,
    at       REAL NOT NULL
);

-- The audit log: every operator action (hold, release, reroute, pause, ...).
CREATE TABLE IF NOT EXISTS audit (
    id     INTEGER PRIMARY KEY,
    at     REAL    NOT NULL,
    actor  TEXT    NOT NULL,               -- admin user name, "api", "cli:$USER", "sluice"
    action TEXT    NOT NULL,
    target TEXT    NOT NULL DEFAULT '',    -- the selection or the provider
    count  INTEGER NOT NULL DEFAULT 0,     -- recipients affected
    detail TEXT    NOT NULL DEFAULT ''
);

-- The nodes sharing the store, each with its heartbeat (one on SQLite).
CREATE TABLE IF NOT EXISTS nodes (
    name         TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    heartbeat_at REAL    NOT NULL
);
