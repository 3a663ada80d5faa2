-- PostgreSQL twins of queue.sql's statements whose dialect differs (see ../__init__.py).

-- name: insert_message
-- A newly accepted message's envelope row; its id comes back (no lastrowid here),
-- or nothing when its queue ID is taken.
INSERT INTO messages (queue_id, received_at, sender, subject, size, client, helo, stream, node)
VALUES (:queue_id, :received_at, :sender, :subject, :size, :client, :helo, :stream, :node)
ON CONFLICT (queue_id) DO NOTHING
RETURNING id;

-- name: insert_body_room
-- Not used on PostgreSQL (bodies are bound whole); kept so every name has a twin.
INSERT INTO bodies (message_id, data, crlf_only)
VALUES (:message_id, ''::bytea, :crlf_only);

-- name: insert_recipient
-- One recipient of a new message, due at once, or on hold from the start.
INSERT INTO recipients (message_id, rcpt, status, since, next_attempt_at, updated_at,
                        held_at, last_reply, original_rcpt, rule)
VALUES (:message_id, :rcpt, CASE WHEN :held::text = '' THEN 'queued' ELSE 'held' END,
        :now, :now, :now, CASE WHEN :held::text = '' THEN NULL ELSE :now::float8 END,
        :held, :original, :rule);

-- name: due_messages
-- Messages with due recipients, in due order; rows another node is claiming
-- right now are skipped, not waited for (SKIP LOCKED).
SELECT message_id FROM recipients
WHERE status IN ('queued', 'deferred') AND next_attempt_at <= :now
ORDER BY next_attempt_at
LIMIT :limit
FOR UPDATE SKIP LOCKED;

-- name: claim_recipients
-- Lease every due recipient of one message to this node; rows locked by another
-- node's claim are left to it.
UPDATE recipients
SET status = 'sending', lease_until = :lease_until, last_attempt_at = :now, updated_at = :now,
    lease_node = :node
WHERE id IN (
    SELECT id FROM recipients
    WHERE message_id = :message_id AND status IN ('queued', 'deferred')
      AND next_attempt_at <= :now
    FOR UPDATE SKIP LOCKED
)
RETURNING id, rcpt, attempts, since, route_override, released_at, rule;

-- name: insert_attempt
-- A delivery-log row, in progress until the outcome is recorded.
INSERT INTO attempts (recipient_id, message_id, queue_id, rcpt, subject, started_at, status,
                      node)
VALUES (:recipient_id, :message_id, :queue_id, :rcpt, :subject, :now, 'in_progress', :node)
RETURNING id;

-- name: close_expired_lease_attempts
-- Log rows of attempts whose lease ran out; :keep (a JSON array of recipient ids)
-- excepted; another node's only once that node stopped beating.
UPDATE attempts
SET status = 'deferred', finished_at = :now,
    reply = 'interrupted: the attempt outlived its lease (delivery.lease); retrying'
WHERE status = 'in_progress' AND recipient_id IN (
    SELECT id FROM recipients WHERE status = 'sending' AND lease_until < :now
      AND id NOT IN (SELECT value::bigint FROM json_array_elements_text(:keep::json))
      AND (:everyone OR lease_node = :node OR NOT EXISTS (
          SELECT 1 FROM nodes
          WHERE nodes.name = recipients.lease_node AND nodes.heartbeat_at >= :stale_before))
);

-- name: requeue_expired_leases
-- A lease that outlived any possible attempt is reclaimed, except those in :keep;
-- another node's only once that node stopped beating.
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, lease_until = NULL, lease_node = NULL,
    updated_at = :now
WHERE status = 'sending' AND lease_until < :now
  AND id NOT IN (SELECT value::bigint FROM json_array_elements_text(:keep::json))
  AND (:everyone OR lease_node = :node OR NOT EXISTS (
      SELECT 1 FROM nodes
      WHERE nodes.name = recipients.lease_node AND nodes.heartbeat_at >= :stale_before));

-- name: prune_finished_messages
-- Drop messages whose every recipient reached a final state long enough ago.
DELETE FROM messages WHERE id IN (
    SELECT r.message_id FROM recipients AS r
    WHERE r.status IN ('sent', 'failed', 'expired', 'suppressed') AND r.updated_at < :before
    AND NOT EXISTS (
        SELECT 1 FROM recipients AS o
        WHERE o.message_id = r.message_id
          AND (o.status NOT IN ('sent', 'failed', 'expired', 'suppressed')
               OR o.updated_at >= :before)
    )
    LIMIT :limit
);
