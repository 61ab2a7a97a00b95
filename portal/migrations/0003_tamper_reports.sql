-- Boxes' reports of a parent that sent video the stream's source did not seal: one row
-- per reporter, parent and stream, renewed by a repeated report. Kept for a week.
CREATE TABLE tamper_reports (
    reporter TEXT NOT NULL,
    parent   TEXT NOT NULL,
    stream   TEXT NOT NULL,
    what     TEXT NOT NULL,
    first_at BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    PRIMARY KEY (reporter, parent, stream)
);
CREATE INDEX tamper_reports_by_time ON tamper_reports (last_at);
