-- Small state (relay/store/state.py): meta values, counters, OAuth grants,
-- admin session versions, the health probe.
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py.

-- name: meta_set
-- Set a daemon status value (last reload, listening addresses) for other processes.
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: meta_get
-- Read one daemon status value.
SELECT value FROM meta WHERE key = :key;

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

-- name: admin_session_version
-- The admin's session version: a session cookie issued under another one is void.
SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'admin_session_version';

-- name: admin_sessions_revoke
-- Start a new admin session version (logout, `sluice admin revoke-sessions`).
INSERT INTO meta (key, value) VALUES ('admin_session_version', '1')
ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1
RETURNING CAST(value AS INTEGER);

-- name: admin_session_key_offer
-- Offer a key for the admin's session cookies; the first one offered stays
-- (a shared store: every node of the fleet signs and checks with it).
INSERT INTO meta (key, value) VALUES ('admin.session_key', :key)
ON CONFLICT (key) DO NOTHING;

-- name: admin_session_key
-- The key the admin's session cookies are signed with, on a shared store.
SELECT value FROM meta WHERE key = 'admin.session_key';

-- name: health_probe_put
-- A throw-away row of :size bytes: whether the spool can grow by that much.
INSERT INTO meta (key, value) VALUES ('health.probe', zeroblob(:size))
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: health_probe_drop
-- ... removed in the same transaction (its pages go to the free list, for later use).
DELETE FROM meta WHERE key = 'health.probe';

-- name: meta_table_exists
-- Whether the spool has its meta table yet (a new, empty file has none: version 0).
SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta';
