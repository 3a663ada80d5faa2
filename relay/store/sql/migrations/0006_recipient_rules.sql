-- Version 6: address rules (issue #26). A recipient that an alias, a redirect
-- or archive_bcc made keeps the address the client gave and the rule's name,
-- for the message page and `sluice queue show`. NULL for every other
-- recipient, and for all mail of earlier versions.
ALTER TABLE recipients ADD COLUMN original_rcpt TEXT;
ALTER TABLE recipients ADD COLUMN rule TEXT
    CHECK (rule IS NULL OR rule IN ('alias', 'redirect', 'archive'));
