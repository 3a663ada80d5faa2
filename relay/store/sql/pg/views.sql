-- PostgreSQL twins of views.sql's statements whose dialect differs (see ../__init__.py).
-- SQLite's LIKE ignores ASCII case; ILIKE is PostgreSQL's.

-- name: attempt_buckets
-- Delivery-log rows since :since by status and whole clock hour counted from :start.
SELECT CAST(floor((started_at - :start::float8) / 3600) AS INTEGER) AS hour, status,
       count(*) AS n, count(*) FILTER (WHERE started_at >= :hour_ago) AS last_hour
FROM attempts WHERE started_at >= :since GROUP BY 1, status;

-- name: audit_page
-- One page of the audit log, newest first (keyset on id).
SELECT * FROM audit WHERE (:before_id::bigint IS NULL OR id < :before_id::bigint)
ORDER BY id DESC LIMIT :limit;

-- name: queue_page
-- One page of queue entries, newest first; keyset on id.
SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at, r.last_attempt_at,
       r.next_attempt_at, r.attempts, r.status, r.last_reply, r.provider, m.size, m.node
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.id <= coalesce(:before_id::bigint - 1, 9223372036854775807)
  AND (:q::text IS NULL OR r.rcpt ILIKE :q::text ESCAPE '\'
       OR m.subject ILIKE :q::text ESCAPE '\'
       OR m.sender ILIKE :q::text ESCAPE '\' OR m.queue_id = :exact::text)
ORDER BY r.id DESC LIMIT :limit;

-- name: queue_page_by_status
-- queue_page of the recipients in :statuses (a JSON array) only.
SELECT r.id, m.queue_id, r.rcpt, m.sender, m.subject, m.received_at, r.last_attempt_at,
       r.next_attempt_at, r.attempts, r.status, r.last_reply, r.provider, m.size, m.node
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.status IN (SELECT value FROM json_array_elements_text(:statuses::json))
  AND r.id <= coalesce(:before_id::bigint - 1, 9223372036854775807)
  AND (:q::text IS NULL OR r.rcpt ILIKE :q::text ESCAPE '\'
       OR m.subject ILIKE :q::text ESCAPE '\'
       OR m.sender ILIKE :q::text ESCAPE '\' OR m.queue_id = :exact::text)
ORDER BY r.id DESC LIMIT :limit;

-- name: log_page
-- One page of the delivery log, newest first; keyset on id.
SELECT * FROM attempts
WHERE id <= coalesce(:before_id::bigint - 1, 9223372036854775807)
  AND (:since::float8 IS NULL OR started_at >= :since::float8)
  AND (:until::float8 IS NULL OR started_at < :until::float8)
  AND (:q::text IS NULL OR rcpt ILIKE :q::text ESCAPE '\' OR subject ILIKE :q::text ESCAPE '\'
       OR queue_id = :exact::text)
ORDER BY id DESC LIMIT :limit;

-- name: log_page_by_status
-- log_page of the rows in :statuses (a JSON array) only.
SELECT * FROM attempts
WHERE status IN (SELECT value FROM json_array_elements_text(:statuses::json))
  AND id <= coalesce(:before_id::bigint - 1, 9223372036854775807)
  AND (:since::float8 IS NULL OR started_at >= :since::float8)
  AND (:until::float8 IS NULL OR started_at < :until::float8)
  AND (:q::text IS NULL OR rcpt ILIKE :q::text ESCAPE '\' OR subject ILIKE :q::text ESCAPE '\'
       OR queue_id = :exact::text)
ORDER BY id DESC LIMIT :limit;

-- name: queue_marks_counts
-- How many recipients each message of a queue page (:queue_ids, a JSON array) has.
SELECT m.queue_id, count(*) AS n
FROM messages AS m JOIN recipients AS r ON r.message_id = m.id
WHERE m.queue_id IN (SELECT value FROM json_array_elements_text(:queue_ids::json))
GROUP BY m.queue_id;

-- name: queue_marks_bounced
-- The BOUNCED delivery-log rows of a queue page's messages, oldest first.
SELECT a.recipient_id, a.code, a.reply
FROM messages AS m JOIN attempts AS a ON a.message_id = m.id
WHERE m.queue_id IN (SELECT value FROM json_array_elements_text(:queue_ids::json))
  AND a.status = 'bounced'
ORDER BY a.id;
