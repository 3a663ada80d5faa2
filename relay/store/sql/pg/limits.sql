-- PostgreSQL twins of limits.sql's statements whose dialect differs (see ../__init__.py).

-- name: limit_lock
-- Serialise the jobs on one limit across nodes: an advisory lock held to the commit
-- (class 27, the limit's key hashed; two-int keys never meet one-bigint ones).
SELECT pg_advisory_xact_lock(27, hashtext(:key));

-- name: counter_sum
-- The units of a counter over its windows from :window on ("window" is reserved).
SELECT COALESCE(SUM(value), 0) FROM counters WHERE name = :name AND "window" >= :window;
