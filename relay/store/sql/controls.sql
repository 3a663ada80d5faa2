-- Operator controls (relay/store/controls.py): selections, hold/release/reroute,
-- pauses, hold expiry and the audit log.
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py.

-- name: selected_recipients
-- An operator's selection (relay.model.Selection): the recipients (and their
-- messages) the actions below then change by id, in the same transaction;
-- counted, it is the confirmation step. NULL means "any"; :allowed lists the
-- states the action applies to (a JSON array), as :queue_ids and :statuses do.
SELECT r.id, r.message_id FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.status IN (SELECT value FROM json_each(:allowed))
  AND (:queue_ids IS NULL OR m.queue_id IN (SELECT value FROM json_each(:queue_ids)))
  AND (:sender IS NULL OR m.sender = :sender COLLATE NOCASE)
  AND (:domain IS NULL OR r.rcpt LIKE '%@' || :domain ESCAPE '\')
  AND (:provider IS NULL OR r.provider = :provider)
  AND (:stream IS NULL OR m.stream = :stream COLLATE NOCASE)
  AND (:received_before IS NULL OR m.received_at <= :received_before)
  AND (:statuses IS NULL OR r.status IN (SELECT value FROM json_each(:statuses)))

-- name: hold_selected
-- Put selected recipients on hold (`postsuper -h`): never claimed until released.
UPDATE recipients
SET status = 'held', held_at = :now, last_reply = :reply, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('queued', 'deferred')
RETURNING id, rcpt,
    (SELECT queue_id FROM messages WHERE messages.id = recipients.message_id) AS queue_id;

-- name: release_selected
-- Release held recipients, due now. Unless held mail ages (hold.age_while_held),
-- the give-up clock moves forward by the time spent held.
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, updated_at = :now, last_reply = :reply,
    since = CASE WHEN :age_while_held THEN since
                 ELSE since + max(0, :now - coalesce(held_at, :now)) END,
    released_at = :now, held_at = NULL
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'held'
RETURNING id, rcpt,
    (SELECT queue_id FROM messages WHERE messages.id = recipients.message_id) AS queue_id;

-- name: reroute_selected
-- "Retry via provider X" (KumoMTA's rebind): the next attempt goes through
-- :via only. Due now; failed and expired recipients get a new life; held
-- ones stay held and take the provider when released.
UPDATE recipients
SET route_override = :via, updated_at = :now,
    status = CASE WHEN status = 'held' THEN 'held' ELSE 'queued' END,
    next_attempt_at = CASE WHEN status = 'held' THEN next_attempt_at ELSE :now END,
    since = CASE WHEN status IN ('failed', 'expired') THEN :now ELSE since END
WHERE id IN (SELECT value FROM json_each(:ids))
  AND status IN ('queued', 'deferred', 'held', 'failed', 'expired')
RETURNING id;

-- name: hold_claimed
-- A claimed recipient that a hold.rules rule matches goes on hold instead (guarded
-- by the node holding the lease, as finish_recipient).
UPDATE recipients
SET status = 'held', held_at = :now, last_reply = :reply, lease_until = NULL,
    lease_node = NULL, updated_at = :now
WHERE id = :id AND status = 'sending' AND lease_node = :node
RETURNING id;

-- name: delete_attempt
-- The delivery-log row of an attempt that never happened (held by a rule).
DELETE FROM attempts WHERE id = :id;

-- name: expire_held
-- Held longer than hold.expire_after: expired, with the reason.
UPDATE recipients
SET status = 'expired', last_reply = :reply, next_attempt_at = NULL, updated_at = :now
WHERE status = 'held' AND held_at <= :before
RETURNING id;

-- name: pause_set
-- Pause delivery through one provider ('*': all), replacing an earlier pause.
INSERT INTO provider_pauses (provider, reason, until, actor, at)
VALUES (:provider, :reason, :until, :actor, :now)
ON CONFLICT (provider) DO UPDATE SET reason = excluded.reason, until = excluded.until,
    actor = excluded.actor, at = excluded.at;

-- name: pause_delete
-- Resume a provider ('*': the pause of all; the providers' own pauses stay).
DELETE FROM provider_pauses WHERE provider = :provider RETURNING provider;

-- name: pauses_end_expired
-- Pauses whose duration ran out: gone (they resumed by themselves).
DELETE FROM provider_pauses WHERE until IS NOT NULL AND until <= :now
RETURNING provider, reason;

-- name: wake_paused
-- On resume: recipients waiting for a pause of :pattern's provider are due now.
UPDATE recipients SET next_attempt_at = :now, updated_at = :now
WHERE status IN ('queued', 'deferred') AND next_attempt_at > :now
  AND last_reply LIKE :pattern ESCAPE '\'
RETURNING id;

-- name: audit_insert
-- One operator action in the audit log.
INSERT INTO audit (at, actor, action, target, count, detail)
VALUES (:now, :actor, :action, :target, :count, :detail);
