-- MySQL 8.0.13+ / MariaDB 10.6+ (InnoDB) mirror of the outbox contract.
--
-- seq is the clustered primary key (AUTO_INCREMENT: rows are stored in delivery order), id a
-- UUID in text form (CHAR(36); UUID() when a plain-SQL writer leaves it out), JSON in JSON
-- columns (MariaDB: LONGTEXT checked by JSON_VALID), times as DATETIME(6) in UTC
-- (UTC_TIMESTAMP(6) by default: a writer that gives created_at itself gives it in UTC, as the
-- reference code's naive utcnow() does). Aggregate columns compare byte for byte (utf8mb4_bin),
-- like PostgreSQL's text: 'A1' and 'a1' are two aggregates.
CREATE TABLE IF NOT EXISTS outbox (
    seq             BIGINT       NOT NULL AUTO_INCREMENT,
    id              CHAR(36)     CHARACTER SET ascii NOT NULL DEFAULT (UUID()),
    aggregate_type  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    event_type      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload         JSON         NOT NULL,
    headers         JSON         NULL,
    created_at      DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    published_at    DATETIME(6)  NULL,
    retry_count     INT          NOT NULL DEFAULT 0,
    next_attempt_at DATETIME(6)  NULL,
    last_error      TEXT         CHARACTER SET utf8mb4 NULL,
    PRIMARY KEY (seq),
    UNIQUE KEY outbox_id_key (id),
    -- Pending rows are the NULL end of this index, in seq order: the claim walks them without
    -- touching published history, and cleanup walks published rows by age from the other end.
    KEY outbox_pending_idx (published_at, seq),
    -- Rows in backoff (a due time in the future): finds aggregates that must wait.
    KEY outbox_retrying_idx (next_attempt_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS outbox_dead_letter (
    id              CHAR(36)     CHARACTER SET ascii NOT NULL DEFAULT (UUID()),
    original_id     CHAR(36)     CHARACTER SET ascii NOT NULL,
    seq             BIGINT       NOT NULL,
    aggregate_type  VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    aggregate_id    VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    event_type      VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    payload         JSON         NOT NULL,
    headers         JSON         NULL,
    created_at      DATETIME(6)  NOT NULL,
    retry_count     INT          NOT NULL,
    error           TEXT         CHARACTER SET utf8mb4 NOT NULL,
    failed_at       DATETIME(6)  NOT NULL DEFAULT (UTC_TIMESTAMP(6)),
    PRIMARY KEY (id),
    KEY outbox_dead_letter_aggregate_idx (aggregate_type, aggregate_id, seq),
    KEY outbox_dead_letter_original_idx (original_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
