-- The error history (see the PostgreSQL migration): the last failed attempts of an event, a JSON
-- array written by the relay. MySQL 8 has no ADD COLUMN IF NOT EXISTS, and MySQL commits each
-- DDL statement by itself: each column is added only when missing, so this runs again safely.
SET @outbox_ddl = IF((SELECT COUNT(*) FROM information_schema.columns
                      WHERE table_schema = DATABASE() AND table_name = 'outbox'
                        AND column_name = 'error_history') = 0,
                     'ALTER TABLE outbox ADD COLUMN error_history JSON NULL', 'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
SET @outbox_ddl = IF((SELECT COUNT(*) FROM information_schema.columns
                      WHERE table_schema = DATABASE() AND table_name = 'outbox_dead_letter'
                        AND column_name = 'error_history') = 0,
                     'ALTER TABLE outbox_dead_letter ADD COLUMN error_history JSON NULL', 'DO 0');
PREPARE outbox_ddl FROM @outbox_ddl;
EXECUTE outbox_ddl;
DEALLOCATE PREPARE outbox_ddl;
