-- The consumer inbox (`outbox::inbox`): one row per event a consumer has processed, inserted in
-- the consumer's own transaction, so the event's effects and this row commit together or not
-- at all. `consumer` names the consumer: several share one database.
CREATE TABLE IF NOT EXISTS outbox_inbox (
    id          uuid        NOT NULL,
    consumer    text        NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, id)
);
-- Retention (`outbox cleanup --inbox --older-than …`) walks this index.
CREATE INDEX IF NOT EXISTS outbox_inbox_received_idx ON outbox_inbox (received_at);

-- Ordering help (`outbox::inbox::advance`): the highest position (the event's `seq`, or a
-- timestamp) each consumer has applied per aggregate.
CREATE TABLE IF NOT EXISTS outbox_inbox_position (
    consumer       text        NOT NULL,
    aggregate_type text        NOT NULL,
    aggregate_id   text        NOT NULL,
    last_position  bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, aggregate_type, aggregate_id)
);
CREATE INDEX IF NOT EXISTS outbox_inbox_position_updated_idx ON outbox_inbox_position (updated_at);
