-- Version 7: nodes (issue #27). The same schema on SQLite and PostgreSQL,
-- where several nodes may share one store: which node accepted a message,
-- which holds a recipient's lease, which made an attempt; and each node's
-- heartbeat. On SQLite there is one node, and these only name it.
ALTER TABLE messages ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE recipients ADD COLUMN lease_node TEXT;
ALTER TABLE attempts ADD COLUMN node TEXT NOT NULL DEFAULT '';
CREATE TABLE IF NOT EXISTS nodes (
    name         TEXT PRIMARY KEY,
    pid          INTEGER NOT NULL,
    started_at   REAL    NOT NULL,
    heartbeat_at REAL    NOT NULL
);
