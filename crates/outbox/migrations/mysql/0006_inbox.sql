-- MySQL mirror of the consumer inbox (see the PostgreSQL migration): ids as CHAR(36) text,
-- times as DATETIME(6) in UTC, names compared byte for byte.
CREATE TABLE IF NOT EXISTS outbox_inbox (
    id          CHAR(36)     CHARACTER SET ascii NOT NULL,
    consumer    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    received_at DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (consumer, id),
    KEY outbox_inbox_received_idx (received_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS outbox_inbox_position (
    consumer       VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_type VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id   VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    last_position  BIGINT       NOT NULL,
    updated_at     DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (consumer, aggregate_type, aggregate_id),
    KEY outbox_inbox_position_updated_idx (updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
