-- Named queries, loaded by relay/store/sql/__init__.py. Each block starts with
-- "-- name: <name>" followed by a one-line description.

-- name: insert_message
-- A newly accepted message's envelope row.
INSERT INTO messages (queue_id, received_at, sender, subject, size, client, helo)
VALUES (:queue_id, :received_at, :sender, :subject, :size, :client, :helo);

-- name: insert_body
-- The stored bytes of a message.
INSERT INTO bodies (message_id, data, crlf_only) VALUES (:message_id, :data, :crlf_only);

-- name: insert_recipient
-- One recipient of a new message, due at once.
INSERT INTO recipients (message_id, rcpt, status, since, next_attempt_at, updated_at)
VALUES (:message_id, :rcpt, 'queued', :now, :now, :now);

-- name: due_messages
-- Messages with due recipients, in due order. INDEXED BY: without it SQLite
-- picks recipients_status and sorts every queued row on each claim (14 ms
-- with 100k queued, against 0.02 ms on the partial index).
SELECT message_id FROM recipients INDEXED BY recipients_due
WHERE status IN ('queued', 'deferred') AND next_attempt_at <= :now
ORDER BY next_attempt_at
LIMIT :limit;

-- name: claim_recipients
-- Lease every due recipient of one message to this attempt.
UPDATE recipients
SET status = 'sending', lease_until = :lease_until, last_attempt_at = :now, updated_at = :now
WHERE message_id = :message_id AND status IN ('queued', 'deferred') AND next_attempt_at <= :now
RETURNING id, rcpt, attempts, since;

-- name: message_envelope
-- Envelope fields the scheduler needs for a claimed message.
SELECT id, queue_id, sender, received_at, subject FROM messages WHERE id = :message_id;

-- name: insert_attempt
-- A delivery-log row, IN PROGRESS until the outcome is recorded.
INSERT INTO attempts (recipient_id, message_id, queue_id, rcpt, subject, started_at, status)
VALUES (:recipient_id, :message_id, :queue_id, :rcpt, :subject, :now, 'IN PROGRESS');

-- name: finish_recipient
-- Record a recipient's outcome; guarded so only a leased row moves.
UPDATE recipients
SET status = :status, attempts = attempts + 1, next_attempt_at = :next_attempt_at,
    last_reply = :reply, provider = :provider, lease_until = NULL, updated_at = :now
WHERE id = :id AND status = 'sending'
RETURNING id;

-- name: finish_attempt
-- Close a delivery-log row with the outcome.
UPDATE attempts
SET status = :status, finished_at = :now, provider = :provider, code = :code, reply = :reply
WHERE id = :id;

-- name: release_recipient
-- Give a leased recipient back without counting an attempt (shutdown, no provider).
UPDATE recipients
SET status = :status, next_attempt_at = :next_attempt_at, last_reply = :reply,
    lease_until = NULL, updated_at = :now
WHERE id = :id AND status = 'sending'
RETURNING id;

-- name: requeue_inflight
-- At start-up: whatever a crash left 'sending' goes back to the queue.
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, lease_until = NULL, updated_at = :now
WHERE status = 'sending';

-- name: close_expired_lease_attempts
-- Log rows of attempts whose lease ran out: their outcome is unknown.
UPDATE attempts
SET status = 'deferred', finished_at = :now,
    reply = 'interrupted: the attempt outlived its lease (delivery.lease); retrying'
WHERE status = 'IN PROGRESS' AND recipient_id IN (
    SELECT id FROM recipients WHERE status = 'sending' AND lease_until < :now
);

-- name: requeue_expired_leases
-- A lease that outlived any possible attempt is reclaimed.
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, lease_until = NULL, updated_at = :now
WHERE status = 'sending' AND lease_until < :now;

-- name: close_inflight_attempts
-- Log rows left IN PROGRESS by a crash: their outcome is unknown.
UPDATE attempts
SET status = 'deferred', finished_at = :now,
    reply = 'interrupted: the daemon stopped during this attempt; retrying'
WHERE status = 'IN PROGRESS';

-- name: retry_message
-- Make every unsent recipient of a message due now; failed ones get a new life.
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, updated_at = :now,
    since = CASE WHEN status IN ('failed', 'expired') THEN :now ELSE since END
WHERE message_id = (SELECT id FROM messages WHERE queue_id = :queue_id)
  AND status IN ('queued', 'deferred', 'failed', 'expired')
RETURNING id;

-- name: delete_message
-- Remove a message, its body and its recipients (the log keeps its rows).
DELETE FROM messages WHERE queue_id = :queue_id RETURNING id;

-- name: prune_attempts
-- Drop delivery-log rows older than the retention.
DELETE FROM attempts WHERE started_at < :before AND status != 'IN PROGRESS';

-- name: prune_finished_messages
-- Drop messages whose every recipient reached a final state long enough ago.
DELETE FROM messages WHERE id IN (
    SELECT r.message_id FROM recipients AS r
    WHERE r.status IN ('sent', 'failed', 'expired') AND r.updated_at < :before
    AND NOT EXISTS (
        SELECT 1 FROM recipients AS o
        WHERE o.message_id = r.message_id
          AND (o.status NOT IN ('sent', 'failed', 'expired') OR o.updated_at >= :before)
    )
    LIMIT :limit
);

-- name: counter_add
-- Add to a durable counter and return the new value.
INSERT INTO counters (name, window, value) VALUES (:name, :window, :delta)
ON CONFLICT (name, window) DO UPDATE SET value = value + :delta
RETURNING value;

-- name: counter_get
-- Read a durable counter.
SELECT value FROM counters WHERE name = :name AND window = :window;

-- name: counter_since
-- The windows of a counter from :window on (rolling limits: the slots of the last 24 h).
SELECT window, value FROM counters WHERE name = :name AND window >= :window;

-- name: counter_prune
-- Forget the windows of a counter before :window (slots that left a rolling limit).
DELETE FROM counters WHERE name = :name AND window < :window;

-- name: counts_by_status
-- Recipients per state.
SELECT status, count(*) AS n FROM recipients GROUP BY status;

-- name: message_by_queue_id
-- One message's envelope row.
SELECT * FROM messages WHERE queue_id = :queue_id;

-- name: message_recipients
-- Every recipient of one message, as queue entries.
SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at, r.last_attempt_at,
       r.next_attempt_at, r.attempts, r.status, r.last_reply, r.provider, m.size
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.message_id = :message_id ORDER BY r.id;

-- name: message_attempts
-- Every delivery-log row of one message, oldest first.
SELECT * FROM attempts WHERE message_id = :message_id ORDER BY id;

-- name: body
-- The stored bytes of a message.
SELECT data, crlf_only FROM bodies WHERE message_id = :message_id;

-- name: meta_set
-- Set a daemon status value (last reload, listening addresses) for other processes.
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: meta_get
-- Read one daemon status value.
SELECT value FROM meta WHERE key = :key;

-- name: oauth_grant_get
-- A provider's stored sign-in, if any.
SELECT provider, refresh_token, state, error, updated_at FROM oauth_grants
WHERE provider = :provider;

-- name: oauth_grant_set
-- Store (or replace, e.g. a rotated) refresh token: the provider is connected.
INSERT INTO oauth_grants (provider, refresh_token, state, error, updated_at)
VALUES (:provider, :refresh_token, 'connected', '', :now)
ON CONFLICT (provider) DO UPDATE SET refresh_token = excluded.refresh_token,
    state = 'connected', error = '', updated_at = excluded.updated_at;

-- name: oauth_grant_failed
-- The provider refused the stored token: keep it for the record, mark it failed.
UPDATE oauth_grants SET state = 'failed', error = :error, updated_at = :now
WHERE provider = :provider;

-- name: admin_session_version
-- The admin's session version: a session cookie issued under another one is void.
SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'admin_session_version';

-- name: admin_sessions_revoke
-- Start a new admin session version (logout, `sluice admin revoke-sessions`).
INSERT INTO meta (key, value) VALUES ('admin_session_version', '1')
ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
RETURNING CAST(value AS INTEGER);

-- name: oldest_pending
-- When the longest-waiting unsent recipient entered the queue (NULL if none).
-- recipients_status (status, id) serves the filter; the rows scanned are the
-- pending ones only.
SELECT min(since) FROM recipients WHERE status IN ('queued', 'deferred', 'sending');

-- name: attempt_buckets
-- Delivery-log rows since :since by status and whole clock hour counted from
-- :start (an hour boundary); rows between :since and :start fall in hour -1.
-- (+1 / -1 because CAST truncates toward zero, not down.)
SELECT CAST((started_at - :start) / 3600 + 1 AS INTEGER) - 1 AS hour, status,
       count(*) AS n, sum(started_at >= :hour_ago) AS last_hour
FROM attempts WHERE started_at >= :since GROUP BY hour, status;

-- name: health_probe_put
-- A throw-away row of :size bytes: whether the spool can grow by that much.
INSERT INTO meta (key, value) VALUES ('health.probe', zeroblob(:size))
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: health_probe_drop
-- ... removed in the same transaction (its pages go to the free list, for later use).
DELETE FROM meta WHERE key = 'health.probe';
