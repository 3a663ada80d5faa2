-- PostgreSQL twins of controls.sql's statements whose dialect differs (see ../__init__.py).

-- name: selected_recipients
-- An operator's selection; NULL means "any", JSON arrays as in controls.sql.
SELECT r.id, r.message_id FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.status IN (SELECT value FROM json_array_elements_text(:allowed::json))
  AND (:queue_ids::text IS NULL
       OR m.queue_id IN (SELECT value FROM json_array_elements_text(:queue_ids::json)))
  AND (:sender::text IS NULL OR lower(m.sender) = lower(:sender::text))
  AND (:domain::text IS NULL OR r.rcpt ILIKE '%@' || :domain::text ESCAPE '\')
  AND (:provider::text IS NULL OR r.provider = :provider::text)
  AND (:stream::text IS NULL OR lower(m.stream) = lower(:stream::text))
  AND (:received_before::float8 IS NULL OR m.received_at <= :received_before::float8)
  AND (:statuses::text IS NULL
       OR r.status IN (SELECT value FROM json_array_elements_text(:statuses::json)))

-- name: hold_selected
-- Put selected recipients on hold (`postsuper -h`): never claimed until released.
UPDATE recipients
SET status = 'held', held_at = :now, last_reply = :reply, updated_at = :now
WHERE id IN (SELECT value::bigint FROM json_array_elements_text(:ids::json))
  AND status IN ('queued', 'deferred')
RETURNING id, rcpt,
    (SELECT queue_id FROM messages WHERE messages.id = recipients.message_id) AS queue_id;

-- name: release_selected
-- Release held recipients, due now (see controls.sql).
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, updated_at = :now, last_reply = :reply,
    since = CASE WHEN :age_while_held::boolean THEN since
                 ELSE since + greatest(0, :now::float8 - coalesce(held_at, :now::float8)) END,
    released_at = :now, held_at = NULL
WHERE id IN (SELECT value::bigint FROM json_array_elements_text(:ids::json))
  AND status = 'held'
RETURNING id, rcpt,
    (SELECT queue_id FROM messages WHERE messages.id = recipients.message_id) AS queue_id;

-- name: reroute_selected
-- "Retry via provider X" (see controls.sql).
UPDATE recipients
SET route_override = :via, updated_at = :now,
    status = CASE WHEN status = 'held' THEN 'held' ELSE 'queued' END,
    next_attempt_at = CASE WHEN status = 'held' THEN next_attempt_at ELSE :now::float8 END,
    since = CASE WHEN status IN ('failed', 'expired') THEN :now::float8 ELSE since END
WHERE id IN (SELECT value::bigint FROM json_array_elements_text(:ids::json))
  AND status IN ('queued', 'deferred', 'held', 'failed', 'expired')
RETURNING id;

-- name: wake_paused
-- On resume: recipients waiting for a pause of :pattern's provider are due now.
UPDATE recipients SET next_attempt_at = :now, updated_at = :now
WHERE status IN ('queued', 'deferred') AND next_attempt_at > :now
  AND last_reply ILIKE :pattern ESCAPE '\'
RETURNING id;
