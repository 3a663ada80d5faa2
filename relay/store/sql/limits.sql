-- Limits shared by every node of a fleet (relay/store/limits.py): a daily
-- limit reserved in the store, a rate's theoretical arrival time, the
-- circuit breaker's open state. Each job takes ``limit_lock`` first, then
-- reads and writes in the same transaction: on SQLite the writer's
-- BEGIN IMMEDIATE already makes it the only writer, on PostgreSQL an
-- advisory lock does (sql/pg/limits.sql), tried, never waited for.
-- Named blocks ("-- name: <name>", then a one-line description), loaded by
-- relay/store/sql/__init__.py.

-- name: limit_lock
-- Take the limit for this transaction, or learn it is taken: one row, 1 or 0
-- (SQLite: always 1, the write transaction already excludes every other writer).
SELECT 1 WHERE :key IS NOT NULL;

-- name: counter_sum
-- The units of a counter over its windows from :window on.
SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = :name AND window >= :window;

-- name: meta_range
-- The meta values whose keys lie in [:lo, :hi) (a family of keys: the fleet's blocks).
SELECT key, value FROM meta WHERE key >= :lo AND key < :hi;
