-- The outbox table: the public contract (see CONTRACT.md).
CREATE TABLE IF NOT EXISTS outbox (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    seq             bigint      GENERATED ALWAYS AS IDENTITY,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    headers         jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    retry_count     integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_error      text
);

-- Adopt a table created by the reference code (id, aggregate_type, aggregate_id, event_type,
-- payload, created_at, published_at, retry_count, last_error): add what the relay needs.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS seq bigint GENERATED ALWAYS AS IDENTITY;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS headers jsonb;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS published_at timestamptz;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS retry_count integer NOT NULL DEFAULT 0;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz;
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS last_error text;

CREATE UNIQUE INDEX IF NOT EXISTS outbox_seq_key ON outbox (seq);
-- The claim walks pending rows in seq order through this index, so it costs the same whether
-- the table holds a thousand or a billion published rows.
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON outbox (seq) WHERE published_at IS NULL;
-- Per-aggregate view of pending rows: the claim checks it takes a prefix of each aggregate.
CREATE INDEX IF NOT EXISTS outbox_pending_aggregate_idx
    ON outbox (aggregate_type, aggregate_id, seq) WHERE published_at IS NULL;
-- Rows that failed at least once: finds aggregates in backoff without scanning the backlog.
CREATE INDEX IF NOT EXISTS outbox_retrying_idx
    ON outbox (aggregate_type, aggregate_id, seq)
    WHERE published_at IS NULL AND next_attempt_at IS NOT NULL;
-- Cleanup deletes published rows by age.
CREATE INDEX IF NOT EXISTS outbox_published_idx ON outbox (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS outbox_dead_letter (
    id              uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    original_id     uuid        NOT NULL,
    seq             bigint      NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    headers         jsonb,
    created_at      timestamptz NOT NULL,
    retry_count     integer     NOT NULL,
    error           text        NOT NULL,
    failed_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS outbox_dead_letter_aggregate_idx
    ON outbox_dead_letter (aggregate_type, aggregate_id, seq);
CREATE INDEX IF NOT EXISTS outbox_dead_letter_original_idx ON outbox_dead_letter (original_id);

-- Wake relays the moment any writer commits an event (plain SQL included). Statement-level, and
-- NOTIFY folds identical notifications of one transaction, so a bulk insert costs one signal.
CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox', '');
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS outbox_notify ON outbox;
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
