-- PostgreSQL twins of outbox.sql's statements whose dialect differs (see ../__init__.py).

-- name: outbox_next
-- An endpoint's oldest event not yet acknowledged (events go out in order).
SELECT * FROM webhook_outbox
WHERE endpoint = :endpoint AND delivered_at IS NULL
ORDER BY id LIMIT 1;

-- name: outbox_counts
-- Per endpoint: events waiting, delivered, and waiting after a failed try.
SELECT endpoint,
       count(*) FILTER (WHERE delivered_at IS NULL) AS pending,
       count(*) FILTER (WHERE delivered_at IS NOT NULL) AS delivered,
       count(*) FILTER (WHERE delivered_at IS NULL AND attempts > 0) AS failing
FROM webhook_outbox GROUP BY endpoint;

-- name: dsn_mark
-- Note a DSN sent (or withheld: dsn_queue_id '') for a recipient.
INSERT INTO dsn_sent (recipient_id, kind, sender, dsn_queue_id, sent_at)
VALUES (:recipient_id, :kind, :sender, :dsn_queue_id, :now)
ON CONFLICT DO NOTHING;
