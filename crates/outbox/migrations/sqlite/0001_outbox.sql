-- SQLite mirror of the outbox contract. seq is the rowid (AUTOINCREMENT: never reused), id a
-- UUID in text form (a random v4 when a plain-SQL writer leaves it out), JSON kept as text,
-- timestamps as UTC text 'YYYY-MM-DDTHH:MM:SS.sssZ', which sorts and compares as time.
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-' ||
        lower(hex(randomblob(6))))
        CHECK (length(id) = 36 AND id NOT GLOB '*[^0-9a-fA-F-]*' AND substr(id, 9, 1) = '-'
               AND substr(id, 14, 1) = '-' AND substr(id, 19, 1) = '-' AND substr(id, 24, 1) = '-'),
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL CHECK (json_valid(payload)),
    headers         TEXT    CHECK (headers IS NULL OR json_valid(headers)),
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    published_at    TEXT,
    retry_count     INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (seq) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS outbox_retrying_idx
    ON outbox (aggregate_type, aggregate_id, seq)
    WHERE published_at IS NULL AND next_attempt_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS outbox_dead_letter (
    id              TEXT    PRIMARY KEY DEFAULT (
        lower(hex(randomblob(4))) || '-' || lower(hex(randomblob(2))) || '-4' ||
        substr(lower(hex(randomblob(2))), 2) || '-' ||
        substr('89ab', 1 + (abs(random()) % 4), 1) || substr(lower(hex(randomblob(2))), 2) || '-' ||
        lower(hex(randomblob(6)))),
    original_id     TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    headers         TEXT,
    created_at      TEXT    NOT NULL,
    retry_count     INTEGER NOT NULL,
    error           TEXT    NOT NULL,
    failed_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS outbox_dead_letter_aggregate_idx
    ON outbox_dead_letter (aggregate_type, aggregate_id, seq);
CREATE INDEX IF NOT EXISTS outbox_dead_letter_original_idx ON outbox_dead_letter (original_id);

-- SQLite has no SKIP LOCKED: one relay at a time holds this lease, the others stand by.
CREATE TABLE IF NOT EXISTS outbox_relay_lease (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT    NOT NULL,
    expires_at TEXT    NOT NULL
);
