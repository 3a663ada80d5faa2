-- The PostgreSQL store's own statements for a fleet of nodes (relay/store/pg/turns.py,
-- relay/store/pg/wakeups.py): turns are session advisory locks, wake-ups LISTEN/NOTIFY.
-- No SQLite twin: a SQLite spool has one daemon, every turn is its own and nobody to wake.

-- name: turn_try
-- Take a turn if no other session holds it; true when this session has it now.
-- Session-level: it ends when the session does (a node killed, its host gone).
SELECT pg_try_advisory_lock(:key) AS granted

-- name: turn_give_back
SELECT pg_advisory_unlock(:key) AS released

-- name: turns_give_back_all
-- At close: every turn of this session given back before it ends, so that another
-- node can take them at once (the server ends a closed session's locks a moment
-- after the client has gone, not when its close returns).
SELECT pg_advisory_unlock_all()

-- name: session_alive
-- The turns' and the listener's connections ask this now and then: an answer
-- means the session, and every turn it holds, is still there.
SELECT 1 AS alive

-- name: keepalive
-- For this session's own socket: the server gives up on a host that vanished
-- after 10 s idle + 3 unanswered probes 5 s apart (or 20 s of unacknowledged
-- data), and so ends its turns; the default waits two hours.
SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3; SET tcp_user_timeout = 20000

-- name: listen
LISTEN sluice_wake; LISTEN sluice_outbox

-- name: notify
-- Inside the writer's transaction: heard by every listener once it commits, never if
-- it rolls back. The same payload twice in one transaction is sent once.
SELECT pg_notify(:channel, :sender)
