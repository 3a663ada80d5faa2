-- Read-only views (relay/store/views.py): a message, queue and log pages, counts.
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py.

-- name: message_by_queue_id
-- One message's envelope row.
SELECT * FROM messages WHERE queue_id = :queue_id;

-- name: message_recipients
-- Every recipient of one message, as queue entries.
SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at, r.last_attempt_at,
       r.next_attempt_at, r.attempts, r.status, r.last_reply, r.provider, m.size,
       r.original_rcpt, r.rule, m.node
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.message_id = :message_id ORDER BY r.id;

-- name: message_attempts
-- Every delivery-log row of one message, oldest first.
SELECT * FROM attempts WHERE message_id = :message_id ORDER BY id;

-- name: counts_by_status
-- Recipients per state.
SELECT status, count(*) AS n FROM recipients GROUP BY status;

-- name: oldest_pending
-- When the longest-waiting unsent recipient entered the queue (NULL if none).
-- recipients_status (status, id) serves the filter; the rows scanned are the
-- pending ones only.
SELECT min(since) FROM recipients WHERE status IN ('queued', 'deferred', 'sending');

-- name: waiting_via
-- Recipients still waiting whose last attempt went through :provider (what
-- removing that provider from the config affects).
SELECT count(*) FROM recipients
WHERE provider = :provider AND status IN ('queued', 'deferred', 'sending', 'held');

-- name: provider_failures_since
-- Failed or deferred delivery-log rows per provider since :since (alerts).
SELECT provider, COUNT(*) AS n FROM attempts
WHERE started_at >= :since AND status IN ('fail', 'deferred') AND provider IS NOT NULL
GROUP BY provider;

-- name: attempt_buckets
-- Delivery-log rows since :since by status and whole clock hour counted from
-- :start (an hour boundary); rows between :since and :start fall in hour -1.
-- (+1 / -1 because CAST truncates toward zero, not down.)
SELECT CAST((started_at - :start) / 3600 + 1 AS INTEGER) - 1 AS hour, status,
       count(*) AS n, sum(started_at >= :hour_ago) AS last_hour
FROM attempts WHERE started_at >= :since GROUP BY hour, status;

-- name: pauses
-- Every pause that has not run out.
SELECT provider, reason, until, actor, at FROM provider_pauses
WHERE until IS NULL OR until > :now ORDER BY provider;

-- name: audit_page
-- One page of the audit log, newest first (keyset on id).
SELECT * FROM audit WHERE (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC LIMIT :limit;

-- name: queue_page
-- One page of queue entries, newest first; keyset on id (:before_id NULL: the
-- first page). The bound stays a plain range on the rowid, so a deep page
-- costs what the first does. :q is a LIKE pattern (NULL: no search), :exact
-- a queue ID.
SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at, r.last_attempt_at,
       r.next_attempt_at, r.attempts, r.status, r.last_reply, r.provider, m.size, m.node
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.id <= coalesce(:before_id - 1, 9223372036854775807)
  AND (:q IS NULL OR r.rcpt LIKE :q ESCAPE '\' OR m.subject LIKE :q ESCAPE '\'
       OR m.sender LIKE :q ESCAPE '\' OR m.queue_id = :exact)
ORDER BY r.id DESC LIMIT :limit;

-- name: queue_page_by_status
-- queue_page of the recipients in :statuses (a JSON array) only: its own
-- statement so that recipients_status (status, id) serves the filter.
SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at, r.last_attempt_at,
       r.next_attempt_at, r.attempts, r.status, r.last_reply, r.provider, m.size, m.node
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.status IN (SELECT value FROM json_each(:statuses))
  AND r.id <= coalesce(:before_id - 1, 9223372036854775807)
  AND (:q IS NULL OR r.rcpt LIKE :q ESCAPE '\' OR m.subject LIKE :q ESCAPE '\'
       OR m.sender LIKE :q ESCAPE '\' OR m.queue_id = :exact)
ORDER BY r.id DESC LIMIT :limit;

-- name: log_page
-- One page of the delivery log, newest first; keyset on id as queue_page.
-- :since and :until bound started_at (NULL: open); :q and :exact as above.
SELECT * FROM attempts
WHERE id <= coalesce(:before_id - 1, 9223372036854775807)
  AND (:since IS NULL OR started_at >= :since)
  AND (:until IS NULL OR started_at < :until)
  AND (:q IS NULL OR rcpt LIKE :q ESCAPE '\' OR subject LIKE :q ESCAPE '\'
       OR queue_id = :exact)
ORDER BY id DESC LIMIT :limit;

-- name: log_page_by_status
-- log_page of the rows in :statuses (a JSON array) only (attempts_status serves it).
SELECT * FROM attempts
WHERE status IN (SELECT value FROM json_each(:statuses))
  AND id <= coalesce(:before_id - 1, 9223372036854775807)
  AND (:since IS NULL OR started_at >= :since)
  AND (:until IS NULL OR started_at < :until)
  AND (:q IS NULL OR rcpt LIKE :q ESCAPE '\' OR subject LIKE :q ESCAPE '\'
       OR queue_id = :exact)
ORDER BY id DESC LIMIT :limit;

-- name: queue_marks_counts
-- How many recipients each message of a queue page (:queue_ids, a JSON array) has.
SELECT m.queue_id, count(*) AS n
FROM messages AS m JOIN recipients AS r ON r.message_id = m.id
WHERE m.queue_id IN (SELECT value FROM json_each(:queue_ids))
GROUP BY m.queue_id;

-- name: queue_marks_bounced
-- The BOUNCED delivery-log rows (a report after delivery) of a queue page's
-- messages, oldest first; attempts_message serves the join.
SELECT a.recipient_id, a.code, a.reply
FROM messages AS m JOIN attempts AS a ON a.message_id = m.id
WHERE m.queue_id IN (SELECT value FROM json_each(:queue_ids)) AND a.status = 'bounced'
ORDER BY a.id;
