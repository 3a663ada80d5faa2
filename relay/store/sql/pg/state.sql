-- PostgreSQL twins of state.sql's statements whose dialect differs (see ../__init__.py).
-- "window" is a reserved word in PostgreSQL.

-- name: counter_add
-- Add to a durable counter and return the new value (one statement: atomic across nodes).
INSERT INTO counters (name, "window", value) VALUES (:name, :window, :delta)
ON CONFLICT (name, "window") DO UPDATE SET value = counters.value + excluded.value
RETURNING value;

-- name: counter_get
-- Read a durable counter.
SELECT value FROM counters WHERE name = :name AND "window" = :window;

-- name: counter_since
-- The windows of a counter from :window on.
SELECT "window", value FROM counters WHERE name = :name AND "window" >= :window;

-- name: counter_prune
-- Forget the windows of a counter before :window.
DELETE FROM counters WHERE name = :name AND "window" < :window;

-- name: admin_sessions_revoke
-- Start a new admin session version.
INSERT INTO meta (key, value) VALUES ('admin_session_version', '1')
ON CONFLICT (key) DO UPDATE SET value = (CAST(meta.value AS INTEGER) + 1)::text
RETURNING CAST(value AS INTEGER);

-- name: health_probe_put
-- A throw-away row of :size bytes: whether the store can take that much.
INSERT INTO meta (key, value) VALUES ('health.probe', repeat(' ', :size::integer))
ON CONFLICT (key) DO UPDATE SET value = excluded.value;

-- name: meta_table_exists
-- Whether the store has its meta table yet.
SELECT count(*) FROM information_schema.tables
WHERE table_schema = current_schema() AND table_name = 'meta';
