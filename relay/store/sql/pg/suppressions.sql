-- PostgreSQL twins of suppressions.sql's statements whose dialect differs (see ../__init__.py).

-- name: bounce_insert
-- Record one bounce of one address; a bounce read before (same key) is ignored.
INSERT INTO bounces
    (address, kind, status, diagnostic, source, queue_id, stream, received_at, raw, key)
VALUES (:address, :kind, :status, :diagnostic, :source, :queue_id, :stream, :now, :raw, :key)
ON CONFLICT (key) DO NOTHING
RETURNING id;

-- name: bounce_recipient
-- The recipient a bounce answers: by its row id (VERP) or by address.
SELECT r.id, r.message_id, r.rcpt, m.queue_id, m.subject, m.stream
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE m.queue_id = :queue_id
  AND (r.id = :recipient_id::bigint
       OR (:recipient_id::bigint IS NULL AND lower(r.rcpt) = :address::text))
LIMIT 1;

-- name: bounce_count_hard
-- Hard bounces of an address since a time, of one stream or of every stream.
SELECT count(*) FROM bounces
WHERE address = :address AND kind = 'hard' AND received_at >= :since
  AND (:stream::text IS NULL OR stream = :stream::text);

-- name: bounce_soft_span
-- The first and last soft bounce of an address since a time, and how many.
SELECT min(received_at) AS first, max(received_at) AS last, count(*) AS n
FROM bounces
WHERE address = :address AND kind = 'soft' AND received_at >= :since
  AND (:stream::text IS NULL OR stream = :stream::text);

-- name: suppressions_in_force
-- Every entry in force now for any of :addresses (a JSON array).
SELECT address, scope, source, reason, created_at, expires_at FROM suppressions
WHERE address IN (SELECT value FROM json_array_elements_text(:addresses::json))
  AND (expires_at IS NULL OR expires_at > :now);

-- name: suppressions_page
-- One page of entries in (address, scope) order; keyset on the primary key.
SELECT address, scope, source, reason, created_at, expires_at FROM suppressions
WHERE address >= coalesce(:after::text, '')
  AND (:after::text IS NULL OR (address, scope) > (:after::text, :after_scope::text))
  AND (:q::text IS NULL OR address ILIKE :q::text ESCAPE '\')
  AND (:scope::text IS NULL OR scope = :scope::text)
  AND (:source::text IS NULL OR source = :source::text)
ORDER BY address, scope LIMIT :limit;

-- name: unmatched_insert
-- Keep a bounce that named no mail Sluice sent; one read before (same key) is ignored.
INSERT INTO unmatched_bounces (received_at, sender, address, queue_id, reason, key)
VALUES (:now, :sender, :address, :queue_id, :reason, :key)
ON CONFLICT (key) DO NOTHING;

-- name: spool_key_make
-- Make a secret unless another process made it first.
INSERT INTO spool_keys (name, secret, created_at) VALUES (:name, :secret, :now)
ON CONFLICT (name) DO NOTHING;
