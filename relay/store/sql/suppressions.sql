-- Bounces and the suppression list (relay/store/suppressions.py).
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py.

-- name: bounce_insert
-- Record one bounce of one address; a bounce read before (same key) is ignored.
INSERT OR IGNORE INTO bounces
    (address, kind, status, diagnostic, source, queue_id, stream, received_at, raw, key)
VALUES (:address, :kind, :status, :diagnostic, :source, :queue_id, :stream, :now, :raw, :key);

-- name: bounce_recipient
-- The recipient a bounce answers: by its row id (VERP) or by address.
SELECT r.id, r.message_id, r.rcpt, m.queue_id, m.subject, m.stream
FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE m.queue_id = :queue_id
  AND (r.id = :recipient_id OR (:recipient_id IS NULL AND lower(r.rcpt) = :address))
LIMIT 1;

-- name: bounce_log
-- The delivery log's BOUNCED row: a report that came back after the message left.
INSERT INTO attempts (recipient_id, message_id, queue_id, rcpt, subject, started_at,
                      finished_at, status, code, reply)
VALUES (:recipient_id, :message_id, :queue_id, :rcpt, :subject, :now, :now, 'bounced',
        :code, :reply);

-- name: bounce_count_hard
-- Hard bounces of an address since a time (the threshold's window), of one
-- stream (:stream) or of every stream (:stream NULL).
SELECT count(*) FROM bounces
WHERE address = :address AND kind = 'hard' AND received_at >= :since
  AND (:stream IS NULL OR stream = :stream);

-- name: bounce_soft_span
-- The first and last soft bounce of an address since a time, and how many
-- (of one stream, or of every stream when :stream is NULL).
SELECT min(received_at) AS first, max(received_at) AS last, count(*) AS n
FROM bounces
WHERE address = :address AND kind = 'soft' AND received_at >= :since
  AND (:stream IS NULL OR stream = :stream);

-- name: bounces_of
-- Every bounce of one address, newest first (what made it suppressed).
SELECT id, address, kind, status, diagnostic, source, queue_id, stream, received_at
FROM bounces WHERE address = :address ORDER BY id DESC LIMIT :limit;

-- name: bounce_raw
-- The stored bounce message, to view it.
SELECT raw FROM bounces WHERE id = :id;

-- name: suppression_upsert
-- Add or replace a suppression entry.
INSERT INTO suppressions (address, scope, source, reason, created_at, expires_at)
VALUES (:address, :scope, :source, :reason, :now, :expires_at)
ON CONFLICT (address, scope) DO UPDATE SET source = excluded.source,
    reason = excluded.reason, created_at = excluded.created_at,
    expires_at = excluded.expires_at;

-- name: suppressed_in_scope
-- Whether an address has an entry in force now that covers :scope: one for
-- every stream (scope '') or one for that stream (:scope '' asks for the first).
SELECT 1 FROM suppressions
WHERE address = :address AND scope IN ('', :scope)
  AND (expires_at IS NULL OR expires_at > :now);

-- name: suppression_delete
-- Remove an address's entry in one scope.
DELETE FROM suppressions WHERE address = :address AND scope = :scope;

-- name: suppression_delete_all_scopes
-- Remove every entry of an address.
DELETE FROM suppressions WHERE address = :address;

-- name: suppressions_in_force
-- Every entry in force now for any of :addresses (a JSON array of lower-cased
-- addresses), whatever its stream: relay.model.suppressed_for picks by stream.
SELECT address, scope, source, reason, created_at, expires_at FROM suppressions
WHERE address IN (SELECT value FROM json_each(:addresses))
  AND (expires_at IS NULL OR expires_at > :now);

-- name: suppressions_of
-- Every entry of one address, in force or expired (the admin's detail view).
SELECT address, scope, source, reason, created_at, expires_at FROM suppressions
WHERE address = :address ORDER BY scope;

-- name: suppressions_count_by_source
-- Entries in force now, by source (the sluice_suppressions gauge).
SELECT source, count(*) AS n FROM suppressions
WHERE expires_at IS NULL OR expires_at > :now GROUP BY source;

-- name: suppression_scopes
-- The scopes in use ('' is global), for the admin's scope filter.
SELECT DISTINCT scope FROM suppressions ORDER BY scope LIMIT :limit;

-- name: suppressions_page
-- One page of entries in (address, scope) order; keyset on the primary key:
-- after (:after, :after_scope) when :after is given. The plain lower bound on
-- address lets the primary key seek to the page. :q is a LIKE pattern, and
-- :scope, :source exact filters (each NULL: any).
SELECT address, scope, source, reason, created_at, expires_at FROM suppressions
WHERE address >= coalesce(:after, '')
  AND (:after IS NULL OR (address, scope) > (:after, :after_scope))
  AND (:q IS NULL OR address LIKE :q ESCAPE '\')
  AND (:scope IS NULL OR scope = :scope)
  AND (:source IS NULL OR source = :source)
ORDER BY address, scope LIMIT :limit;

-- name: bounce_verp_recipient
-- The recipient row a verified VERP token names (its queue ID and row id).
SELECT r.id, r.rcpt FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE m.queue_id = :queue_id AND r.id = :recipient_id;

-- name: bounce_delivered_recipient
-- Whether the message with :queue_id was delivered through a provider to :address.
SELECT r.id FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE m.queue_id = :queue_id AND lower(r.rcpt) = :address AND r.status = 'sent'
LIMIT 1;

-- name: message_exists
-- Whether a queue ID names a message in the spool.
SELECT 1 FROM messages WHERE queue_id = :queue_id;

-- name: unmatched_insert
-- Keep a bounce that named no mail Sluice sent; one read before (same key) is ignored.
INSERT OR IGNORE INTO unmatched_bounces (received_at, sender, address, queue_id, reason, key)
VALUES (:now, :sender, :address, :queue_id, :reason, :key);

-- name: unmatched_prune
-- Keep only the latest :keep unmatched bounces.
DELETE FROM unmatched_bounces
WHERE id <= (SELECT max(id) FROM unmatched_bounces) - :keep;

-- name: unmatched_latest
-- The latest unmatched bounces, newest first.
SELECT id, received_at, sender, address, queue_id, reason FROM unmatched_bounces
ORDER BY id DESC LIMIT :limit;

-- name: unmatched_count
-- How many unmatched bounces are kept.
SELECT count(*) FROM unmatched_bounces;

-- name: spool_key_get
-- A secret the spool keeps for itself (spool_keys), by name.
SELECT secret FROM spool_keys WHERE name = :name;

-- name: spool_key_make
-- Make a secret unless another process made it first.
INSERT OR IGNORE INTO spool_keys (name, secret, created_at) VALUES (:name, :secret, :now);
