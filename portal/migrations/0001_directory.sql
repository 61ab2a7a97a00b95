-- Supernodes, as they last renewed their entry.
CREATE TABLE supernodes (
    id        TEXT PRIMARY KEY,
    api       TEXT NOT NULL,
    rtmp      TEXT NOT NULL,
    last_seen BIGINT NOT NULL
);

-- Boxes holding each stream, as each supernode last counted its own.
CREATE TABLE viewers (
    supernode TEXT NOT NULL,
    stream    TEXT NOT NULL,
    count     BIGINT NOT NULL,
    PRIMARY KEY (supernode, stream)
);

-- Live streams, as their source boxes last listed them.
CREATE TABLE streams (
    id           TEXT PRIMARY KEY,
    title        TEXT NOT NULL,
    description  TEXT NOT NULL,
    source_id    TEXT NOT NULL,
    source_api   TEXT NOT NULL,
    source_rtmp  TEXT NOT NULL,
    started      BIGINT NOT NULL,
    updated      BIGINT NOT NULL,
    bitrate_kbps BIGINT NOT NULL,
    width        BIGINT NOT NULL,
    height       BIGINT NOT NULL
);

CREATE INDEX supernodes_last_seen ON supernodes (last_seen);
CREATE INDEX streams_updated ON streams (updated);
