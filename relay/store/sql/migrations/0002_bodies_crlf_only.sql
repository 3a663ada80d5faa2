-- Version 2: bodies remember whether every line ends in CRLF, so delivery
-- skips its own search. Older mail gets 0: not known, delivery looks again.
ALTER TABLE bodies ADD COLUMN crlf_only INTEGER NOT NULL DEFAULT 0;
