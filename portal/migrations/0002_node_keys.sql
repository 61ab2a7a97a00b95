-- Public keys of the boxes that registered as supernodes or listed a stream. A node
-- id is derived from its key, so a row never changes its key; it records when the
-- portal first and last heard from the box.
CREATE TABLE node_keys (
    id         TEXT PRIMARY KEY,
    key        TEXT NOT NULL,
    first_seen BIGINT NOT NULL,
    last_seen  BIGINT NOT NULL
);
