-- The outboxes (relay/store/outbox.py): webhook events and DSN marks.
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py.

-- name: outbox_insert
-- One webhook event for one endpoint, due now.
INSERT INTO webhook_outbox (endpoint, event_id, event, queue_id, body, created_at, next_attempt_at)
VALUES (:endpoint, :event_id, :event, :queue_id, :body, :created_at, :created_at);

-- name: outbox_next
-- An endpoint's oldest event not yet acknowledged (events go out in order).
SELECT * FROM webhook_outbox INDEXED BY webhook_outbox_pending
WHERE endpoint = :endpoint AND delivered_at IS NULL
ORDER BY id LIMIT 1;

-- name: outbox_delivered
-- The receiver acknowledged the event (2xx).
UPDATE webhook_outbox
SET delivered_at = :now, last_attempt_at = :now, attempts = attempts + 1,
    last_status = :status, last_error = ''
WHERE id = :id AND delivered_at IS NULL;

-- name: outbox_failed
-- A try failed (no answer, or not 2xx); try again at :next_attempt_at.
UPDATE webhook_outbox
SET last_attempt_at = :now, attempts = attempts + 1, next_attempt_at = :next_attempt_at,
    last_status = :status, last_error = :error
WHERE id = :id AND delivered_at IS NULL;

-- name: outbox_recent
-- The latest events of one endpoint, for the admin.
SELECT * FROM webhook_outbox WHERE endpoint = :endpoint ORDER BY id DESC LIMIT :limit;

-- name: outbox_counts
-- Per endpoint: events waiting, delivered, and waiting after a failed try.
SELECT endpoint,
       SUM(delivered_at IS NULL) AS pending,
       SUM(delivered_at IS NOT NULL) AS delivered,
       SUM(delivered_at IS NULL AND attempts > 0) AS failing
FROM webhook_outbox GROUP BY endpoint;

-- name: prune_outbox
-- Drop events older than notify.webhook_retention (delivered or not).
DELETE FROM webhook_outbox WHERE created_at < :before;

-- name: dsn_marked
-- Whether a DSN of this kind was already sent (or withheld) for a recipient.
SELECT 1 FROM dsn_sent WHERE recipient_id = :recipient_id AND kind = :kind;

-- name: dsn_sent_recently
-- DSNs sent to one sender address since :since (the loop guard's count).
SELECT COUNT(DISTINCT dsn_queue_id) FROM dsn_sent
WHERE sender = :sender AND sent_at >= :since AND dsn_queue_id != '';

-- name: dsn_mark
-- Note a DSN sent (or withheld: dsn_queue_id '') for a recipient.
INSERT OR IGNORE INTO dsn_sent (recipient_id, kind, sender, dsn_queue_id, sent_at)
VALUES (:recipient_id, :kind, :sender, :dsn_queue_id, :now);

-- name: prune_dsn_sent
-- Drop DSN marks of recipients long gone.
DELETE FROM dsn_sent WHERE sent_at < :before;
