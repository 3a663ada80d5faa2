-- Version 4: status columns admit only the words Sluice knows
-- (relay.model.RecipientStatus, AttemptStatus; tests/store/test_sql.py ties
-- the lists to the enums). SQLite cannot add a CHECK to a table, so each
-- table is rebuilt the documented way (https://sqlite.org/lang_altertable.html,
-- "Making Other Kinds Of Table Schema Changes"): the runner turns foreign keys
-- off and opens the transaction (steps 1-2) and checks foreign keys before it
-- commits (steps 10-12); nothing else refers to these tables: no view, no
-- trigger (step 3, 9).

-- recipients (steps 4-8): a new table, the rows copied, the old one dropped,
-- the new one renamed, its indexes made again.
CREATE TABLE recipients_new (
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
    route_override  TEXT                   -- provider for the next attempt only (reroute)
);
INSERT INTO recipients_new (id, message_id, rcpt, status, attempts, since, next_attempt_at,
                            last_attempt_at, lease_until, last_reply, provider, updated_at,
                            held_at, released_at, route_override)
SELECT id, message_id, rcpt, status, attempts, since, next_attempt_at, last_attempt_at,
       lease_until, last_reply, provider, updated_at, held_at, released_at, route_override
FROM recipients;
DROP TABLE recipients;
ALTER TABLE recipients_new RENAME TO recipients;
CREATE INDEX recipients_due
    ON recipients(next_attempt_at) WHERE status IN ('queued', 'deferred');
CREATE INDEX recipients_message ON recipients(message_id);
CREATE INDEX recipients_sending ON recipients(id) WHERE status = 'sending';
CREATE INDEX recipients_status ON recipients(status, id);
CREATE INDEX recipients_finished
    ON recipients(updated_at) WHERE status IN ('sent', 'failed', 'expired', 'suppressed');

-- attempts, the delivery log (steps 4-8 again).
CREATE TABLE attempts_new (
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
    reply        TEXT    NOT NULL DEFAULT ''
);
INSERT INTO attempts_new (id, recipient_id, message_id, queue_id, rcpt, subject, started_at,
                          finished_at, status, provider, code, reply)
SELECT id, recipient_id, message_id, queue_id, rcpt, subject, started_at, finished_at, status,
       provider, code, reply
FROM attempts;
DROP TABLE attempts;
ALTER TABLE attempts_new RENAME TO attempts;
CREATE INDEX attempts_message ON attempts(message_id);
CREATE INDEX attempts_started ON attempts(started_at);
CREATE INDEX attempts_status ON attempts(status, id);
