-- Named queries, loaded by relay/store/sql/__init__.py. Each block starts with
-- "-- name: <name>" followed by a one-line description.

-- name: insert_message
-- A newly accepted message's envelope row.
INSERT INTO messages (queue_id, received_at, sender, subject, size, client, helo, stream)
VALUES (:queue_id, :received_at, :sender, :subject, :size, :client, :helo, :stream);

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
RETURNING id, rcpt, attempts, since, route_override, released_at;

-- name: message_envelope
-- Envelope fields the scheduler needs for a claimed message.
SELECT id, queue_id, sender, received_at, subject FROM messages WHERE id = :message_id;

-- name: insert_attempt
-- A delivery-log row, in progress until the outcome is recorded.
INSERT INTO attempts (recipient_id, message_id, queue_id, rcpt, subject, started_at, status)
VALUES (:recipient_id, :message_id, :queue_id, :rcpt, :subject, :now, 'in_progress');

-- name: finish_recipient
-- Record a recipient's outcome; guarded so only a leased row moves.
UPDATE recipients
SET status = :status, attempts = attempts + 1, next_attempt_at = :next_attempt_at,
    last_reply = :reply, provider = :provider, lease_until = NULL, updated_at = :now,
    route_override = NULL
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
WHERE status = 'in_progress' AND recipient_id IN (
    SELECT id FROM recipients WHERE status = 'sending' AND lease_until < :now
);

-- name: requeue_expired_leases
-- A lease that outlived any possible attempt is reclaimed.
UPDATE recipients
SET status = 'queued', next_attempt_at = :now, lease_until = NULL, updated_at = :now
WHERE status = 'sending' AND lease_until < :now;

-- name: close_inflight_attempts
-- Log rows left in progress by a crash: their outcome is unknown.
UPDATE attempts
SET status = 'deferred', finished_at = :now,
    reply = 'interrupted: the daemon stopped during this attempt; retrying'
WHERE status = 'in_progress';

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
DELETE FROM attempts WHERE started_at < :before AND status != 'in_progress';

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

-- name: bounce_insert
-- Record one bounce of one address; a bounce read before (same key) is ignored.
INSERT OR IGNORE INTO bounces
    (address, kind, status, diagnostic, source, queue_id, stream, received_at, raw, key)
VALUES (:address, :kind, :status, :diagnostic, :source, :queue_id, :stream, :now, :raw, :key);

-- name: bounce_recipient
-- The recipient a bounce answers: by its row id (VERP) or by address.
SELECT r.id, r.message_id, r.rcpt, m.queue_id, m.subject
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
-- Hard bounces of an address since a time (the threshold's window).
SELECT count(*) FROM bounces WHERE address = :address AND kind = 'hard' AND received_at >= :since;

-- name: bounce_soft_span
-- The first and last soft bounce of an address since a time, and how many.
SELECT min(received_at) AS first, max(received_at) AS last, count(*) AS n
FROM bounces WHERE address = :address AND kind = 'soft' AND received_at >= :since;

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

-- name: suppressed_everywhere
-- Whether an address has an entry for every stream (scope ''), in force now.
SELECT 1 FROM suppressions
WHERE address = :address AND scope = ''
  AND (expires_at IS NULL OR expires_at > :now);

-- name: suppression_delete
-- Remove an address's entry in one scope.
DELETE FROM suppressions WHERE address = :address AND scope = :scope;

-- name: suppression_delete_all_scopes
-- Remove every entry of an address.
DELETE FROM suppressions WHERE address = :address;

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

-- name: prune_dsn_sent
-- Drop DSN marks of recipients long gone.
DELETE FROM dsn_sent WHERE sent_at < :before;

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

-- name: provider_failures_since
-- Failed or deferred delivery-log rows per provider since :since (alerts).
SELECT provider, COUNT(*) AS n FROM attempts
WHERE started_at >= :since AND status IN ('FAIL', 'deferred') AND provider IS NOT NULL
GROUP BY provider;

-- name: selected_recipients
-- An operator's selection (relay.model.Selection), used as the CTE "selected"
-- by the actions below. NULL means "any"; :allowed lists the states the
-- action applies to (a JSON array), as :queue_ids and :statuses do.
SELECT r.id, r.message_id FROM recipients AS r JOIN messages AS m ON m.id = r.message_id
WHERE r.status IN (SELECT value FROM json_each(:allowed))
  AND (:queue_ids IS NULL OR m.queue_id IN (SELECT value FROM json_each(:queue_ids)))
  AND (:sender IS NULL OR m.sender = :sender COLLATE NOCASE)
  AND (:domain IS NULL OR r.rcpt LIKE '%@' || :domain ESCAPE '\')
  AND (:provider IS NULL OR r.provider = :provider)
  AND (:stream IS NULL OR m.stream = :stream)
  AND (:received_before IS NULL OR m.received_at <= :received_before)
  AND (:statuses IS NULL OR r.status IN (SELECT value FROM json_each(:statuses)))

-- name: count_selected
-- How many recipients (and messages) an action would affect: the confirmation.
SELECT count(*) AS recipients, count(DISTINCT message_id) AS messages FROM selected;

-- name: hold_selected
-- Put selected recipients on hold (`postsuper -h`): never claimed until released.
UPDATE recipients
SET status = 'held', held_at = :now, last_reply = :reply, updated_at = :now
WHERE id IN (SELECT id FROM selected) AND status IN ('queued', 'deferred')
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
WHERE id IN (SELECT id FROM selected) AND status = 'held'
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
WHERE id IN (SELECT id FROM selected)
  AND status IN ('queued', 'deferred', 'held', 'failed', 'expired')
RETURNING id;

-- name: hold_claimed
-- A claimed recipient that a hold.rules rule matches goes on hold instead.
UPDATE recipients
SET status = 'held', held_at = :now, last_reply = :reply, lease_until = NULL,
    updated_at = :now
WHERE id = :id AND status = 'sending'
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

-- name: pauses
-- Every pause that has not run out.
SELECT provider, reason, until, actor, at FROM provider_pauses
WHERE until IS NULL OR until > :now ORDER BY provider;

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

-- name: audit_page
-- One page of the audit log, newest first (keyset on id).
SELECT * FROM audit WHERE (:before_id IS NULL OR id < :before_id)
ORDER BY id DESC LIMIT :limit;
