-- Owners manage their boxes from the portal. An owner is known by a token it keeps
-- (only its SHA-256 is stored); it claims a box with the pairing code the box shows.
CREATE TABLE owners (
    id         TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);
CREATE TABLE owned_boxes (
    node       TEXT PRIMARY KEY,
    owner      TEXT NOT NULL REFERENCES owners (id),
    claimed_at BIGINT NOT NULL
);
CREATE INDEX owned_boxes_by_owner ON owned_boxes (owner);
