-- The nodes of a fleet (relay/store/nodes.py): who holds which name, and who still beats.
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py. The same text runs on SQLite and PostgreSQL.

-- name: node_join
-- Take the name :name for this process: a new row, or one whose holder left or
-- went stale (its beat before :stale_before; a clean stop leaves 0), or the very
-- row the caller watched go quiet (:seen). No row returned: a live holder has it.
INSERT INTO nodes (name, pid, started_at, heartbeat_at)
VALUES (:name, :pid, :now, :now)
ON CONFLICT (name) DO UPDATE
SET pid = excluded.pid, started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at
WHERE nodes.heartbeat_at < :stale_before OR nodes.heartbeat_at = :seen
RETURNING name;

-- name: node_row
-- One node's row (who holds the name, since when, its last beat).
SELECT name, pid, started_at, heartbeat_at FROM nodes WHERE name = :name;

-- name: node_beat
-- This process is alive; guarded so that a process whose name was taken over
-- (its heartbeat stopped for spool.node_timeout) learns it: no row returned.
UPDATE nodes SET heartbeat_at = :now
WHERE name = :name AND pid = :pid AND started_at = :started_at
RETURNING name;

-- name: node_leave
-- A clean stop gives the name back at once (a beat at 0: the next start need not wait).
UPDATE nodes SET heartbeat_at = 0
WHERE name = :name AND pid = :pid AND started_at = :started_at;

-- name: list_nodes
-- Every node that ever joined, by name.
SELECT name, pid, started_at, heartbeat_at FROM nodes ORDER BY name;
