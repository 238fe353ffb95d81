-- SQLite mirror of the consumer inbox (see the PostgreSQL migration): ids as hyphenated text,
-- timestamps as UTC text 'YYYY-MM-DDTHH:MM:SS.sssZ', which sorts and compares as time.
CREATE TABLE IF NOT EXISTS outbox_inbox (
    id          TEXT NOT NULL,
    consumer    TEXT NOT NULL,
    received_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_inbox_received_idx ON outbox_inbox (received_at);

CREATE TABLE IF NOT EXISTS outbox_inbox_position (
    consumer       TEXT    NOT NULL,
    aggregate_type TEXT    NOT NULL,
    aggregate_id   TEXT    NOT NULL,
    last_position  INTEGER NOT NULL,
    updated_at     TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (consumer, aggregate_type, aggregate_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS outbox_inbox_position_updated_idx ON outbox_inbox_position (updated_at);
