-- PostgreSQL twins of limits.sql's statements whose dialect differs (see ../__init__.py).

-- name: limit_lock
-- Take the limit's advisory lock to the commit, or learn another node holds it:
-- tried, never waited for, since a group commit holding other locks while it
-- waits would deadlock with another node's (class 27, the limit's key hashed;
-- two-int keys never meet one-bigint ones).
SELECT CASE WHEN pg_try_advisory_xact_lock(27, hashtext(:key)) THEN 1 ELSE 0 END;

-- name: counter_sum
-- The units of a counter over its windows from :window on ("window" is reserved).
SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = :name AND "window" >= :window;
