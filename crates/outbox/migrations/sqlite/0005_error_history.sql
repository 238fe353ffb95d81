-- The error history (see the PostgreSQL migration): a JSON array as text.
ALTER TABLE outbox ADD COLUMN error_history TEXT CHECK (error_history IS NULL OR json_valid(error_history));
ALTER TABLE outbox_dead_letter ADD COLUMN error_history TEXT;
