-- Version 5: forged bounces (issue #23). A bounce counts only when it is about
-- mail Sluice sent; the rest are kept apart, never counted.

-- Secrets the spool keeps for itself: 'verp' signs VERP return paths
-- (relay/verp.py). Made at first use by Suppressions.verp_key, never logged
-- or shown; the spool's file permissions guard it, as they do OAuth grants.
CREATE TABLE IF NOT EXISTS spool_keys (
    name       TEXT PRIMARY KEY,
    secret     BLOB NOT NULL,
    created_at REAL NOT NULL
);

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
